"""FasterRCNNTask (official/tasks/maskrcnn.py): Mask R-CNN without masks.

Training and evaluation through the real entry point are covered by
configs/smoke/faster_rcnn.gin in tests/test_smoke.py. Here: registration,
records with and without instance masks on the FPN layout of
configs/experiments/faster_rcnn/resnet50_fpn_coco.gin (RPN on P2..P6, ROI
Align on P2..P5), serving, refused mask settings, and restoring the
backbone alone (fine-tuning from ImageNet).
"""

import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.losses import maskrcnn as maskrcnn_losses
from official import registry
from official.core import checkpointing
from official.tasks import maskrcnn as maskrcnn_task
from tests.dataloaders import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
OUTPUT_KEYS = {"num_detections", "detection_boxes", "detection_scores",
               "detection_classes"}


def parse(config, params=()):
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings([os.path.join(REPO, config)],
                                        list(params), skip_unknown=False)
  return registry.experiment()


@pytest.fixture(name="task")
def fixture_task():
  yield parse("configs/smoke/faster_rcnn.gin",
              ["FasterRCNNTask.max_detections = 5"])
  gin.clear_config()


def test_registered_under_its_own_name_without_a_mask_branch(task):
  assert registry.TASKS["FasterRCNNTask"] is type(task)
  assert isinstance(task, maskrcnn_task.MaskRCNNTask)
  assert not task.include_mask and maskrcnn_task.MaskRCNNTask.include_mask
  model = task.build_model()
  assert model.mask_head is None and model.name == "faster_rcnn"
  # Box AP needs no instances JSON (Mask R-CNN's check_data refuses this).
  task.check_data(dict(annotation_file=None))
  task._data = dict(annotation_file=None)  # pylint: disable=protected-access
  assert not task.build_evaluator().include_mask


def test_mask_settings_are_refused_not_ignored():
  with pytest.raises(ValueError, match=r"FasterRCNNTask has no mask branch.*"
                     r"'num_mask_samples': 16"):
    parse("configs/smoke/faster_rcnn.gin",
          ["FasterRCNNTask.num_mask_samples = 16"])
  # A MaskRCNNTask binding reaches FasterRCNNTask (gin binds the inherited
  # constructor under both names), so it is refused too.
  with pytest.raises(ValueError, match=r"'mask_num_convs': 2"):
    parse("configs/smoke/faster_rcnn.gin", ["MaskRCNNTask.mask_num_convs = 2"])
  gin.clear_config()


def test_serving_outputs_are_boxes_in_the_original_image(task):
  model = task.build_model()
  image = tf.cast(tf.random.stateless_uniform([96, 64, 3], [1, 2], 0, 255),
                  tf.uint8)
  model_input, image_info = task.serving_preprocess(image)
  outputs = task.serving_outputs(model, model_input[None], image_info[None])
  assert set(outputs) == OUTPUT_KEYS
  boxes = outputs["detection_boxes"].numpy()
  assert boxes.shape == (1, 5, 4)
  assert np.all(boxes[0, :, 2] <= 96.0 + 1e-3)
  assert np.all(boxes[0, :, 3] <= 64.0 + 1e-3)
  with pytest.raises(NotImplementedError,
                     match="FasterRCNNTask has no TFLite export"):
    task.serving_outputs(model, model_input[None], for_tflite=True)


def _write_records(path, with_masks, first_id):
  """Three detection records (one without objects), masks optional.

  Source ids first_id, first_id + 1, first_id + 2.
  """
  rng = np.random.default_rng(0)
  with tf.io.TFRecordWriter(path) as writer:
    for index, num in enumerate((2, 0, 1)):
      height, width = 60, 80
      boxes = [(0.1 + 0.4 * k, 0.1, 0.45 + 0.4 * k, 0.6) for k in range(num)]
      feature = {
          "image/encoded": [helpers.encode_image(
              helpers.random_image(rng, height, width), "png")],
          "image/source_id": [str(first_id + index).encode()],
          "image/object/bbox/ymin": [b[0] for b in boxes],
          "image/object/bbox/xmin": [b[1] for b in boxes],
          "image/object/bbox/ymax": [b[2] for b in boxes],
          "image/object/bbox/xmax": [b[3] for b in boxes],
          "image/object/class/label": [1 + 2 * k for k in range(num)],
      }
      if with_masks:
        mask = np.zeros((height, width), np.uint8)
        mask[10:20, 10:40] = 255
        feature["image/object/mask"] = [helpers.encode_image(mask, "png")
                                        for _ in range(num)]

      def to_feature(key, values):
        if "bbox" in key:  # By key: an image without objects has no values.
          return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        if key.endswith("label"):
          return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

      writer.write(tf.train.Example(features=tf.train.Features(feature={
          k: to_feature(k, v) for k, v in feature.items()}))
                   .SerializeToString())
  return path


def test_records_with_and_without_masks_on_p2_to_p6(tmp_path):
  """The COCO config's layout: RPN and anchors on P2..P6, ROI Align P2..P5."""
  task = parse("configs/experiments/faster_rcnn/resnet50_fpn_coco.gin", [
      "FasterRCNNTask.image_size = 64", "fpn.num_filters = 16",
      "FasterRCNNTask.rpn_num_filters = 16",
      "FasterRCNNTask.frcnn_fc_dims = 32",
      "FasterRCNNTask.rpn_post_nms_top_k = 64",
      "FasterRCNNTask.test_rpn_post_nms_top_k = 64",
      "FasterRCNNTask.num_sampled_rois = 32",
      "FasterRCNNTask.max_detections = 10"])
  keras.utils.set_random_seed(0)
  model = task.build_model()
  assert model.mask_head is None
  levels = ["2", "3", "4", "5", "6"]
  # Both kinds of records in one dataset (comma-separated patterns).
  pattern = ",".join([_write_records(str(tmp_path / "boxes"), False, 1),
                      _write_records(str(tmp_path / "masks"), True, 4)])
  # pylint: disable-next=protected-access
  task._data = dict(train_pattern=pattern, eval_pattern=pattern,
                    num_train=6, num_eval=6, annotation_file=None)
  features, labels = next(iter(task.build_inputs(training=True,
                                                 global_batch_size=2)))
  assert set(features) == {"images", "image_shape", "gt_boxes", "gt_classes"}
  assert "gt_masks" not in labels
  assert sorted(labels["rpn_score_targets"], key=int) == levels
  outputs = model(features, training=True)
  assert sorted(outputs["rpn_scores"], key=int) == levels
  losses = task.compute_losses(outputs, labels, global_batch_size=2)
  assert set(losses) == {"total_loss", *maskrcnn_losses.BOX_LOSS_NAMES}
  assert all(np.isfinite(float(v)) for v in losses.values()), losses

  # Evaluation reads every record in order, with and without masks: box AP.
  evaluator = task.build_evaluator()
  evaluator.reset()
  source_ids = []
  for features, labels in task.build_inputs(training=False,
                                            global_batch_size=2):
    outputs = task.eval_outputs(model(features, training=False), labels)
    assert "detection_masks" not in outputs
    evaluator.update({k: v.numpy() for k, v in outputs.items()})
    source_ids += outputs["source_id"].numpy().tolist()
  assert sorted(source_ids) == [1, 2, 3, 4, 5, 6]
  metrics = evaluator.result()
  assert "AP" in metrics and not any(k.startswith("mask") for k in metrics)
  gin.clear_config()


def test_backbone_restores_alone_for_fine_tuning(task, tmp_path):
  """Trainer.init_checkpoint_modules='backbone' finds it (SP-NAS Sec. 4.1)."""
  keras.utils.set_random_seed(1)
  trained = task.build_model()
  path = checkpointing.Checkpointer(
      str(tmp_path), trained, tf.Variable(3, dtype=tf.int64)).save()
  keras.utils.set_random_seed(2)
  fresh = task.build_model()
  assert set(checkpointing.model_modules(fresh)) == {"all", "backbone",
                                                     "decoder"}
  report = checkpointing.restore_modules(path, fresh, ("backbone",))
  assert len(report["restored"]) == len(fresh.backbone.variables)
  for a, b in zip(trained.backbone.variables, fresh.backbone.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), a.path)
  kernel = lambda m: m.rpn_head.trainable_variables[0].numpy()
  assert not np.array_equal(kernel(trained), kernel(fresh))  # Not restored.


# The box head as a gin-bound builder (MaskRCNNTask.box_head): Auto-FPN's
# discrete Auto-head of configs/smoke/auto_fpn.gin.
AUTO_FPN_SMOKE = "configs/smoke/auto_fpn.gin"
# A Fast R-CNN head setting beside it (the smoke Fast R-CNN file's).
FRCNN_SETTINGS = ["FasterRCNNTask.frcnn_num_convs = 1",
                  "FasterRCNNTask.frcnn_fc_dims = 32"]


def test_an_auto_head_is_the_box_head_and_serves():
  # pylint: disable-next=g-import-not-at-top
  from modeling.heads.auto_head import AutoHead
  task = parse(AUTO_FPN_SMOKE, ["FasterRCNNTask.max_detections = 5"])
  keras.utils.set_random_seed(0)
  model = task.build_model()
  head = model.fast_rcnn_head
  assert isinstance(head, AutoHead) and not head.search
  assert head.name == maskrcnn_task.BOX_HEAD_NAME and head.use_batch_norm
  assert head.num_classes == model.num_classes == 8
  # Checkpoint paths of the shared predictor are those of FastRCNNHead.
  paths = {v.path for v in head.weights}
  assert {"fast_rcnn_head/class_predict/kernel",
          "fast_rcnn_head/box_predict/kernel"} <= paths
  # Global average pooling of the last 16-wide cell (Sec. 4.1), 8 classes.
  assert tuple(head.class_predict.kernel.shape) == (16, 8)
  assert tuple(head.box_predict.kernel.shape) == (16, 32)
  image = tf.cast(tf.random.stateless_uniform([96, 64, 3], [1, 2], 0, 255),
                  tf.uint8)
  model_input, image_info = task.serving_preprocess(image)
  outputs = task.serving_outputs(model, model_input[None], image_info[None])
  assert set(outputs) == OUTPUT_KEYS
  assert outputs["detection_boxes"].shape == (1, 5, 4)
  # The config round trip (evaluation and export rebuild from it).
  clone = type(model).from_config(model.get_config())
  assert isinstance(clone.fast_rcnn_head, AutoHead)
  assert clone.fast_rcnn_head.genotype == head.genotype
  gin.clear_config()


def test_fast_rcnn_settings_beside_another_box_head_are_refused():
  # With @auto_head the frcnn_* settings would be ignored, so they are an
  # error naming them.
  with pytest.raises(ValueError, match=r"box_head = @auto_head replaces the "
                     r"Fast R-CNN head.*'frcnn_num_convs': 1, 'frcnn_fc_dims'"
                     r": 32"):
    parse(AUTO_FPN_SMOKE, FRCNN_SETTINGS)
  with pytest.raises(ValueError, match="has no separable convs"):
    parse(AUTO_FPN_SMOKE, ["FasterRCNNTask.head_use_separable_conv = True"])
  # The task passes num_classes and the norm options itself.
  with pytest.raises(ValueError, match="num_classes"):
    parse(AUTO_FPN_SMOKE, ["auto_head.num_classes = 3"])
  gin.clear_config()


def test_the_model_refuses_a_box_head_that_is_not_one():
  # pylint: disable-next=g-import-not-at-top
  from modeling.heads.mask_head import MaskHead
  from modeling.models.maskrcnn import MaskRCNNModel
  model = parse("configs/smoke/faster_rcnn.gin").build_model()
  with pytest.raises(ValueError, match=r"fast_rcnn_head must be a BoxHead "
                     r"\(modeling/heads/fast_rcnn.py: FastRCNNHead, AutoHead\)"
                     r", got MaskHead"):
    MaskRCNNModel(model.backbone, model.decoder, model.rpn_head,
                  MaskHead(8, num_convs=0, num_filters=8), None)
  gin.clear_config()
