"""Fine-tuning: a segmenter's backbone restored from a RetinaNet checkpoint."""

import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from modeling.backbones.spinenet import spinenet
from modeling.decoders.identity import identity
from modeling.heads.retinanet import RetinaNetHead
from modeling.heads.segmentation import SegmentationHead
from modeling.models.classifier import build_classifier
from modeling.models.retinanet import build_retinanet
from modeling.models.segmentation import build_segmenter
from official.core import checkpointing
from official.core import distribute
from official.core import optimization
from official.core import schedules
from official.core import trainer as trainer_lib
from official.tasks import segmentation
from tests.dataloaders import helpers
from tests.official import toy_task

TINY = dict(filter_size_scale=0.125, resample_alpha=0.25,
            endpoints_num_filters=16)


def tiny_backbone(input_shape=(128, 128, 3), **kwargs):
  return spinenet(input_shape, "49", **dict(TINY, **kwargs))


def make_segmenter(with_decoder=False, **backbone_kwargs):
  backbone = tiny_backbone(**backbone_kwargs)
  decoder = None
  if with_decoder:  # What SegmentationTask builds for SpineNet.
    decoder = identity(backbone.output_specs, min_level=3, max_level=7)
  head = SegmentationHead(num_classes=3, num_convs=1, num_filters=8,
                          name="segmentation_head")
  return build_segmenter(backbone, decoder, head)


def small_backbone(input_shape=(128, 128, 3), **unused_norm_options):
  """A cheap backbone (conv, BN, pooling to levels 3..7) for trainer runs."""
  images = keras.Input(input_shape, name="images")
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(images)
  x = keras.layers.BatchNormalization(name="bn")(x)
  outputs = {str(l): keras.layers.AveragePooling2D(2**(l - 1),
                                                   name=f"pool_{l}")(x)
             for l in range(3, 8)}
  model = keras.Model(images, outputs, name="small_backbone")
  model.output_specs = {k: tuple(v.shape) for k, v in outputs.items()}
  return model


def save_detector(model_dir, backbone):
  """Saves a RetinaNet on `backbone` with random weights, as the trainer does.

  Returns:
    (backbone weights by variable path, number of head variables).
  """
  decoder = identity(backbone.output_specs, min_level=3, max_level=7)
  head = RetinaNetHead(num_classes=4, num_anchors_per_location=9,
                       num_convs=1, num_filters=8)
  model = build_retinanet(backbone, decoder, head)
  rng = np.random.default_rng(0)
  for variable in model.variables:  # Nothing equals a fresh init by chance.
    variable.assign(rng.normal(size=variable.shape).astype("float32"))
  optimizer = optimization.build_optimizer(0.1)
  optimizer.build(model.trainable_variables)
  step = tf.Variable(1000, dtype=tf.int64)
  checkpointing.Checkpointer(model_dir, model, step, optimizer).save()
  return {v.path: v.numpy() for v in backbone.variables}, len(head.variables)


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory):
  """A SpineNet RetinaNet's model_dir, its backbone weights, head size."""
  model_dir = str(tmp_path_factory.mktemp("retinanet"))
  return (model_dir,) + save_detector(model_dir, tiny_backbone())


def test_restores_the_backbone_exactly_and_reports_the_rest(
    detector_checkpoint):
  model_dir, detector_weights, num_detector_head = detector_checkpoint
  model = make_segmenter(with_decoder=True)
  backbone = model.layers[1]
  head = model.get_layer("segmentation_head")
  head_before = [v.numpy() for v in head.variables]
  path = checkpointing.resolve_checkpoint(model_dir)
  assert path.endswith("ckpt-1000")

  report = checkpointing.restore_modules(path, model, ["backbone", "decoder"])

  for variable in backbone.variables:
    np.testing.assert_array_equal(variable.numpy(),
                                  detector_weights[variable.path])
  for before, variable in zip(head_before, head.variables):
    np.testing.assert_array_equal(before, variable.numpy())
  assert report["checkpoint"] == path
  # The identity decoder has no variables: nothing to restore there.
  assert report["modules"] == {"backbone": "model/_operations/1",
                               "decoder": None}
  assert len(report["restored"]) == len(backbone.variables)
  assert report["not_restored"] == sorted(v.path for v in head.variables)
  assert "segmentation_head/classifier/kernel" in report["not_restored"]
  assert report["num_checkpoint_unused"] == num_detector_head


def test_a_backbone_of_another_config_fails_naming_variables(
    detector_checkpoint):
  model_dir, _, _ = detector_checkpoint
  model = make_segmenter(endpoints_num_filters=24)
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    checkpointing.restore_modules(checkpointing.resolve_checkpoint(model_dir),
                                  model, ["backbone"])
  message = str(e.value)
  assert "does not fit the model's backbone ('spinenet49'" in message
  assert "endpoint_3/conv/kernel: expected [1, 1, 64, 24], found [1, 1, 64, " \
         "16]" in message
  assert "endpoint_6/bn/gamma: expected [24], found [16]" in message
  assert "... and 5 more." in message  # 25 listed as 20 + 5.
  assert "same config as the model that wrote the checkpoint" in message


def test_missing_checkpoints_and_modules_are_explained(tmp_path,
                                                       detector_checkpoint):
  with pytest.raises(checkpointing.NoCheckpointError,
                     match="holds no checkpoint"):
    checkpointing.resolve_checkpoint(str(tmp_path))
  with pytest.raises(checkpointing.NoCheckpointError,
                     match=r"no .*ckpt-5.index"):
    checkpointing.resolve_checkpoint(str(tmp_path / "ckpt-5"))
  path = checkpointing.resolve_checkpoint(detector_checkpoint[0])
  with pytest.raises(ValueError, match=r"has no decoder to restore \(it has "
                     r"\['all', 'backbone'\]\)"):
    checkpointing.restore_modules(path, make_segmenter(), ["decoder"])
  with pytest.raises(ValueError, match="init_checkpoint_modules=.*'head'.*: "
                     "expected one or more of backbone, decoder, all"):
    trainer_lib.Trainer(toy_task.ToyTask(), str(tmp_path),
                        distribute.get_strategy("one_device"), train_epochs=1,
                        train_batch_size=1, init_checkpoint_modules="head")


def write_segmentation_records(path, num, size=128):
  rng = np.random.default_rng(3)
  with tf.io.TFRecordWriter(path) as writer:
    for index in range(num):
      label = rng.integers(0, 3, size=(size, size)).astype(np.uint8)
      image = rng.integers(0, 255, size=(size, size, 3)).astype(np.uint8)
      feature = {
          "image/encoded": helpers.encode_image(image, "png"),
          "image/segmentation/class/encoded": helpers.encode_image(label,
                                                                  "png"),
          "image/source_id": str(index).encode()}
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
          for k, v in feature.items()})).SerializeToString())


def test_trainer_initialises_a_fresh_run_only(tmp_path, monkeypatch):
  """The real SegmentationTask through the Trainer: lr 0 keeps the weights."""
  detector_dir = str(tmp_path / "detector")
  detector_weights, _ = save_detector(detector_dir, small_backbone())
  records = str(tmp_path / "seg.tfrecord")
  write_segmentation_records(records, 4)
  data = lambda: dict(train_pattern=records, eval_pattern=records,
                      num_train=4, num_eval=4, num_classes=3)

  def make_trainer():
    task = segmentation.SegmentationTask(
        backbone=small_backbone, data=data, num_classes=3, image_size=128,
        head_num_convs=1, head_num_filters=8, aug_scale_min=1.0,
        aug_scale_max=1.0)
    return trainer_lib.Trainer(
        task, str(tmp_path / "run"), distribute.get_strategy("one_device"),
        train_epochs=1, train_batch_size=2, steps_per_loop=2,
        learning_rate_fn=functools.partial(
            schedules.learning_rate_schedule, base_learning_rate=0.0,
            decay="constant"),
        init_checkpoint=detector_dir)

  messages = []
  info = logging.info
  monkeypatch.setattr(logging, "info", lambda message, *args: (
      messages.append(message % args), info(message, *args)))
  try:
    fresh = make_trainer()
    fresh.train()
    backbone = fresh.model.layers[1]
    for variable in backbone.trainable_variables:
      np.testing.assert_array_equal(variable.numpy(),
                                    detector_weights[variable.path])
    with open(tmp_path / "run" / "init_checkpoint.json") as f:
      report = json.load(f)
    assert report == fresh.init_report
    head = fresh.model.get_layer("segmentation_head")
    assert report["not_restored"] == sorted(v.path for v in head.variables)
    logged = [m for m in messages if "variables were NOT restored" in m]
    assert logged and "segmentation_head/classifier/kernel" in logged[0]

    # A rerun resumes from the run's own checkpoint and never initialises.
    messages.clear()
    resumed = make_trainer()
    resumed.train()
    assert resumed.init_report is None
    assert any("is not applied: the run resumes from its own checkpoint" in m
               for m in messages)
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_frozen_backbone_is_not_trained(tmp_path):
  """Trainer.frozen_modules='backbone': the backbone's weights and batch-norm
  statistics stay as initialised while the head trains (Model Garden's
  freeze_backbone; Auto-FPN Sec. 4.1 searches on a frozen backbone)."""
  records = str(tmp_path / "seg.tfrecord")
  write_segmentation_records(records, 4)
  data = lambda: dict(train_pattern=records, eval_pattern=records,
                      num_train=4, num_eval=4, num_classes=3)

  def make_trainer(model_dir, frozen):
    task = segmentation.SegmentationTask(
        backbone=small_backbone, data=data, num_classes=3, image_size=128,
        head_num_convs=1, head_num_filters=8, aug_scale_min=1.0,
        aug_scale_max=1.0)
    return trainer_lib.Trainer(
        task, str(tmp_path / model_dir),
        distribute.get_strategy("one_device"), train_epochs=1,
        train_batch_size=2, steps_per_loop=2,
        learning_rate_fn=functools.partial(
            schedules.learning_rate_schedule, base_learning_rate=0.1,
            decay="constant"), frozen_modules=frozen)

  try:
    trainer = make_trainer("run", "backbone")
    trainer.build()
    backbone = checkpointing.model_modules(trainer.model)["backbone"]
    before = {v.path: v.numpy() for v in backbone.variables}
    head = trainer.model.get_layer("segmentation_head")
    head_before = {v.path: v.numpy() for v in head.trainable_variables}
    assert not backbone.trainable_variables
    trainer.train()
    for variable in backbone.variables:  # BN moving statistics included.
      np.testing.assert_array_equal(variable.numpy(), before[variable.path])
    assert any(not np.array_equal(v.numpy(), head_before[v.path])
               for v in head.trainable_variables)
    with pytest.raises(ValueError, match="frozen_modules='all'"):
      make_trainer("all", "all")
    # A classifier has no decoder to freeze.
    classifier = build_classifier(small_backbone(), 3)
    with pytest.raises(ValueError, match="has only"):
      make_trainer("decoder", "decoder")._freeze(classifier)  # pylint: disable=protected-access
  finally:
    keras.mixed_precision.set_global_policy("float32")
