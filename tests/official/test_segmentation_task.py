"""SegmentationTask: eval outputs, the VOC schedule.

The loss is tested in tests/modeling/test_losses.py.
"""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from official import registry  # pylint: disable=unused-import  (gin names)
from official.core import distribute
from official.core import trainer as trainer_lib
from official.tasks import segmentation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_eval_outputs_feed_the_miou_evaluator():
  task = segmentation.SegmentationTask(
      backbone=None, data=lambda: dict(num_train=1, num_eval=1, num_classes=3,
                                       class_names=["bg", "a", "b"]),
      num_classes=3)
  labels = np.array([[[0, 1], [2, 255]], [[0, 0], [0, 0]]])
  logits = tf.one_hot([[[0, 1], [1, 0]], [[2, 2], [2, 2]]], 3)
  outputs = task.eval_outputs(logits, {"label": labels,
                                       "valid": np.array([True, False])})
  assert outputs["confusion_matrix"].shape == (2, 3, 3)
  evaluator = task.build_evaluator()
  evaluator.update({k: np.asarray(v) for k, v in outputs.items()})
  result = evaluator.result()
  # Image 0: bg and a right, b predicted as a; image 1 is padding.
  assert result["IoU/bg"] == 1.0 and result["IoU/a"] == 0.5
  assert result["IoU/b"] == 0.0 and result["mIoU"] == pytest.approx(0.5)


def test_dataset_with_other_classes_is_an_error():
  task = segmentation.SegmentationTask(
      backbone=None, num_classes=21,
      data=lambda: dict(num_train=1, num_eval=1, num_classes=4))
  with pytest.raises(ValueError, match="4 classes but SegmentationTask."
                     "num_classes = 21"):
    task.prepare_data()


def parse(*params):
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "configs/experiments/segmentation/"
                    "eff_spinenet_d0_voc.gin")],
      ["pascal_records.train_pattern = 'unused'",
       "pascal_records.eval_pattern = 'unused'", *params],
      skip_unknown=False)


def test_voc_experiment_has_the_papers_schedule(tmp_path):
  parse("Trainer.init_checkpoint = '/detector/run'")
  trainer = trainer_lib.Trainer(registry.experiment(), str(tmp_path),
                                distribute.get_strategy("one_device"))
  assert trainer.steps_per_epoch == 42  # ceil(10582 / 256).
  assert trainer.total_steps == 10000
  assert trainer.init_checkpoint == "/detector/run"
  assert trainer.init_checkpoint_modules == ("backbone",)
  schedule = trainer.learning_rate_fn(
      steps_per_epoch=trainer.steps_per_epoch,
      total_epochs=trainer.train_epochs,
      global_batch_size=trainer.train_batch_size)
  assert (schedule.total_steps, schedule.warmup_steps) == (10000, 500)
  assert schedule.decay == "cosine"
  assert schedule.base_learning_rate == pytest.approx(0.05)
  task = trainer.task
  assert (task.image_size, task.head_num_convs, task.head_num_filters) == (
      512, 3, 64)
  gin.clear_config()


def test_voc_experiment_requires_the_detection_checkpoint(tmp_path):
  parse()
  with pytest.raises(ValueError, match="fine-tunes from a checkpoint: pass "
                     "--gin_param=\"Trainer.init_checkpoint='MODEL_DIR_OR_"
                     "CHECKPOINT'\" \\(a run of configs/experiments/"
                     "retinanet/eff_spinenet_d0_coco.gin\\)"):
    trainer_lib.Trainer(registry.experiment(), str(tmp_path),
                        distribute.get_strategy("one_device"))
  gin.clear_config()
