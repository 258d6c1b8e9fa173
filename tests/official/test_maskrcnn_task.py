"""MaskRCNNTask (official/tasks/maskrcnn.py): model, serving, data checks.

Training and evaluation through the real entry point are covered by
configs/smoke/maskrcnn.gin in tests/test_smoke.py.
"""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from official import registry
from official.tasks import maskrcnn as maskrcnn_task
from official.tasks import retinanet as retinanet_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(name="task")
def fixture_task():
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, "configs/smoke/maskrcnn.gin")],
        ["MaskRCNNTask.max_detections = 5"], skip_unknown=False)
  yield registry.experiment()
  gin.clear_config()


def test_serving_maps_boxes_to_the_original_image(task):
  model = task.build_model()
  image = tf.cast(tf.random.stateless_uniform([96, 64, 3], [1, 2], 0, 255),
                  tf.uint8)
  model_input, image_info = task.serving_preprocess(image)
  assert model_input.shape == (128, 128, 3)
  outputs = task.serving_outputs(model, model_input[None], image_info[None])
  assert outputs["detection_masks"].shape == (1, 5, 28, 28)
  boxes = outputs["detection_boxes"].numpy()
  num = int(outputs["num_detections"][0])
  # The model input holds the image scaled by 128 / 96; detections are
  # clipped to that part and mapped back inside the 96 x 64 original.
  assert np.all(boxes[0, :, 2] <= 96.0 + 1e-3)
  assert np.all(boxes[0, :, 3] <= 64.0 + 1e-3)
  np.testing.assert_array_equal(boxes[0, num:], 0.0)
  scaled, scale = image_info[1], image_info[2]   # (128, 85), (128/96, 85/64)
  in_input = model({"images": model_input[None], "image_shape": scaled[None]})
  np.testing.assert_allclose(
      in_input["detection_boxes"][0, :num] / tf.tile(scale, [2]),
      boxes[0, :num], rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(in_input["detection_masks"],
                                outputs["detection_masks"])


def test_tflite_export_is_refused_with_a_reason(task):
  with pytest.raises(NotImplementedError, match="no TFLite export"):
    task.serving_outputs(None, tf.zeros([1, 128, 128, 3]), for_tflite=True)


def test_dataset_without_annotation_file_fails_before_training(task):
  task.data_fn = lambda: dict(train_pattern="x", eval_pattern="y",
                              num_train=1, num_eval=1, annotation_file=None)
  with pytest.raises(ValueError, match="annotation_file"):
    task.prepare_data()


def test_valid_image_shape():
  info = tf.constant([[[480.0, 640.0], [96.0, 128.0], [0.2, 0.2],
                       [0.0, 0.0]],
                      [[100.0, 100.0], [200.0, 200.0], [2.0, 2.0],
                       [30.0, 90.0]]])
  np.testing.assert_allclose(
      maskrcnn_task.valid_image_shape(info, 128), [[96.0, 128.0],
                                                   [128.0, 110.0]])


def test_mask_records_are_remade_when_boxes_only_records_exist(
    tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(retinanet_task.synthetic_coco, "make_synthetic_coco",
                      lambda *args, **kwargs: calls.append("make"))
  monkeypatch.setattr(retinanet_task.subprocess, "run",
                      lambda command, check: calls.append(command))
  records = tmp_path / "tfrecords"
  records.mkdir()
  (records / "DONE").write_text("500 100 0\n")  # Written without masks.
  retinanet_task.synthetic_coco_records(data_dir=str(tmp_path))
  assert not calls  # RetinaNet reuses them.
  maskrcnn_task.synthetic_coco_mask_records(data_dir=str(tmp_path))
  assert calls[0] == "make"
  assert all("--include_masks" in c for c in calls[1:]) and len(calls) == 3
  assert "masks" in (records / "DONE").read_text().split()
  calls.clear()
  maskrcnn_task.synthetic_coco_mask_records(data_dir=str(tmp_path))
  assert not calls  # Reused now.
