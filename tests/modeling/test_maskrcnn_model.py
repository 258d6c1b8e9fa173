"""Tests of the Mask R-CNN assembly (modeling/models/maskrcnn.py) and losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.decoders.identity import identity
from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.mask_head import MaskHead
from modeling.heads.rpn import RPNHead
from modeling.losses import maskrcnn as losses_lib
from modeling.models.maskrcnn import MaskRCNNModel
from modeling.ops import box_ops
from modeling.ops.anchors import Anchors
from modeling.ops.mask_ops import paste_mask_numpy
from modeling.ops.target_assigner import RpnAnchorLabeler
from tests.modeling.layer_harness import assert_checkpoint_covers

SIZE = 128
NUM_CLASSES = 4
# Small second stage: the tests check wiring, not capacity.
SMALL = dict(rpn_pre_nms_top_k=200, rpn_post_nms_top_k=64,
             test_rpn_pre_nms_top_k=200, test_rpn_post_nms_top_k=64,
             num_sampled_rois=32, num_mask_samples=8, max_detections=10)


def fake_backbone(levels=(3, 4, 5, 6, 7), channels=8):
  """images -> dict str(level) of pooled features; cheap and deterministic."""
  images = keras.Input((SIZE, SIZE, 3), name="images")
  x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(
      images)
  outputs = {str(l): keras.layers.AveragePooling2D(2**l)(x) for l in levels}
  return keras.Model(images, outputs, name="fake_backbone")


def make_model(backbone=None, decoder=None, rpn_levels=(3, 7), **kwargs):
  backbone = backbone or fake_backbone()
  return MaskRCNNModel(
      backbone, decoder, RPNHead(*rpn_levels, 3, num_filters=8),
      FastRCNNHead(NUM_CLASSES, num_convs=1, num_filters=8, fc_dims=16),
      MaskHead(NUM_CLASSES, num_convs=1, num_filters=8),
      **dict(SMALL, **kwargs))


def disk_masks(size):
  """float32 [size, size]: a centred disk, 1 inside."""
  centre = (np.arange(size) + 0.5) / size - 0.5
  return (centre[:, None] ** 2 + centre[None, :] ** 2 < 0.16).astype(
      np.float32)


def batch(num_images=2):
  """A synthetic batch: features for the model, labels for the losses."""
  boxes = np.zeros([num_images, 3, 4], np.float32)
  classes = np.zeros([num_images, 3], np.int32)
  boxes[0, :2] = [[16, 16, 64, 72], [70, 40, 120, 100]]
  classes[0, :2] = [1, 3]
  boxes[1, :1] = [[30, 20, 100, 90]]
  classes[1, :1] = [2]
  masks = np.broadcast_to(disk_masks(16), [num_images, 3, 16, 16]).copy()
  anchors = Anchors(3, 7, 1, (0.5, 1.0, 2.0), 3.0, (SIZE, SIZE))
  labeler = RpnAnchorLabeler(batch_size_per_image=64)
  targets = [labeler.multilevel_targets(anchors, boxes[i], classes[i] > 0,
                                        seed=[i, 1])
             for i in range(num_images)]
  labels = {
      "rpn_score_targets": {l: tf.stack([t["score_targets"][l]
                                         for t in targets])
                            for l in anchors.levels},
      "rpn_box_targets": {l: tf.stack([t["box_targets"][l] for t in targets])
                          for l in anchors.levels},
  }
  images = tf.random.stateless_normal([num_images, SIZE, SIZE, 3], [0, 1])
  features = {"images": images, "gt_boxes": tf.constant(boxes),
              "gt_classes": tf.constant(classes),
              "gt_masks": tf.constant(masks)}
  return features, labels


def test_training_outputs():
  keras.utils.set_random_seed(0)
  model = make_model()
  features, _ = batch()
  outputs = model(features, training=True)
  rois, mask_rows = SMALL["num_sampled_rois"], SMALL["num_mask_samples"]
  assert outputs["class_logits"].shape == (2, rois, NUM_CLASSES)
  assert outputs["box_deltas"].shape == (2, rois, 4 * NUM_CLASSES)
  assert outputs["box_targets"].shape == (2, rois, 4)
  assert outputs["roi_classes"].shape == (2, rois)
  assert outputs["mask_logits"].shape == (2, mask_rows, 28, 28)
  assert outputs["mask_targets"].shape == (2, mask_rows, 28, 28)
  assert outputs["rpn_scores"]["3"].shape == (2, 16, 16, 3)
  assert outputs["rpn_boxes"]["7"].shape == (2, 1, 1, 12)
  # Ground truths are mixed into the candidates, so every object has a
  # foreground ROI, and the foregrounds come first.
  classes = outputs["roi_classes"].numpy()
  assert set(classes[0][classes[0] > 0]) == {1, 3}
  assert set(classes[1][classes[1] > 0]) == {2}
  first_background = np.argmax(classes[1] <= 0)
  assert np.all(classes[1][:first_background] > 0)
  np.testing.assert_array_equal(outputs["mask_classes"],
                                classes[:, :mask_rows])
  # A ROI equal to its ground-truth box has a zero box target, and its mask
  # target is the ground-truth crop (a disk) resampled to 28 x 28.
  for i in range(2):
    for row in np.flatnonzero(classes[i][:mask_rows] > 0):
      roi = outputs["rois"][i, row].numpy()
      if np.any(np.all(np.isclose(roi, features["gt_boxes"][i]), axis=1)):
        np.testing.assert_allclose(outputs["box_targets"][i, row], 0.0,
                                   atol=1e-5)
        expected = paste_mask_numpy(disk_masks(16), (0, 0, 28, 28), 28, 28)
        np.testing.assert_array_equal(outputs["mask_targets"][i, row],
                                      expected >= 0.5)


def test_inference_outputs_and_masks():
  model = make_model(score_threshold=0.0)
  images = tf.random.stateless_normal([2, SIZE, SIZE, 3], [0, 2])
  image_shape = tf.constant([[SIZE, SIZE], [96.0, 64.0]])
  outputs = model({"images": images, "image_shape": image_shape})
  d = SMALL["max_detections"]
  assert outputs["detection_boxes"].shape == (2, d, 4)
  assert outputs["detection_scores"].shape == (2, d)
  assert outputs["detection_classes"].dtype == tf.int32
  assert outputs["detection_masks"].shape == (2, d, 28, 28)
  num = outputs["num_detections"].numpy()
  assert np.all(num > 0)
  masks = outputs["detection_masks"].numpy()
  classes = outputs["detection_classes"].numpy()
  boxes = outputs["detection_boxes"].numpy()
  for i in range(2):
    assert np.all((classes[i, :num[i]] >= 1) &
                  (classes[i, :num[i]] < NUM_CLASSES))
    assert np.all((masks[i, :num[i]] > 0.0) & (masks[i, :num[i]] < 1.0))
    np.testing.assert_array_equal(masks[i, num[i]:], 0.0)
    np.testing.assert_array_equal(classes[i, num[i]:], 0)
  # Detections stay inside each image's valid region.
  assert boxes[1, :, 2].max() <= 96.0 and boxes[1, :, 3].max() <= 64.0
  # A plain image tensor is the inference input too (serving, profiling).
  plain = model(images)
  np.testing.assert_allclose(plain["detection_scores"][0],
                             outputs["detection_scores"][0], rtol=1e-5)


def test_mask_is_that_of_the_detected_class():
  model = make_model(score_threshold=0.0)
  images = tf.random.stateless_normal([1, SIZE, SIZE, 3], [0, 3])
  outputs = model(images)
  boxes = outputs["detection_boxes"]
  features = model._features(images, False)  # pylint: disable=protected-access
  rois = model._roi_align(features, boxes, 14)  # pylint: disable=protected-access
  all_classes = tf.sigmoid(model.mask_head(rois))  # [1, D, 28, 28, C]
  picked = tf.gather(all_classes, outputs["detection_classes"], axis=4,
                     batch_dims=2)
  num = int(outputs["num_detections"][0])
  np.testing.assert_allclose(outputs["detection_masks"][0, :num],
                             picked[0, :num], rtol=1e-5, atol=1e-6)


def test_decode_detections_uses_class_specific_deltas():
  model = make_model(score_threshold=0.05)
  rois = tf.constant([[[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 0.0, 0.0]]])
  logits = tf.constant([[[0.0, 0.0, 8.0, 0.0], [0.0, 9.0, 0.0, 0.0]]])
  deltas = np.zeros([1, 2, 4 * NUM_CLASSES], np.float32)
  target = [12.0, 14.0, 40.0, 60.0]
  deltas[0, 0, 8:12] = box_ops.encode_boxes(target, rois[0, 0],
                                            (10.0, 10.0, 5.0, 5.0))
  out = model.decode_detections(logits, tf.constant(deltas), rois,
                                tf.constant([SIZE, SIZE], tf.float32))
  # The padded (zero-area) proposal never becomes a detection, whatever
  # its logits.
  assert int(out["num_detections"][0]) == 1
  assert int(out["detection_classes"][0, 0]) == 2
  np.testing.assert_allclose(out["detection_boxes"][0, 0], target, rtol=1e-4)


@pytest.mark.parametrize("use_decoder", [False, True])
def test_level_mismatch_names_both_ranges(use_decoder):
  backbone = fake_backbone()
  decoder = identity({k: tuple(v.shape) for k, v in backbone.output.items()},
                     3, 7) if use_decoder else None
  source = "decoder" if use_decoder else "backbone"
  with pytest.raises(ValueError, match=(
      f"the RPN head expects levels 2..6 but the {source} outputs levels "
      "3..7")):
    make_model(backbone, decoder, rpn_levels=(2, 6))
  with pytest.raises(ValueError, match=(
      rf"ROI Align \(roi_min_level..roi_max_level\) reads levels 2..5 but "
      f"the {source} outputs levels 3..7")):
    make_model(backbone, decoder, roi_min_level=2, roi_max_level=5)


def test_training_without_ground_truth_is_an_error():
  model = make_model()
  with pytest.raises(ValueError, match="training needs gt_boxes"):
    model(tf.zeros([1, SIZE, SIZE, 3]), training=True)
  with pytest.raises(ValueError, match="may hold"):
    model({"images": tf.zeros([1, SIZE, SIZE, 3]), "boxes": None})


def test_float32_outputs_under_mixed_precision():
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = make_model()
    features, _ = batch()
    outputs = model(features, training=True)
    for name in ("class_logits", "box_deltas", "box_targets", "mask_logits",
                 "mask_targets"):
      assert outputs[name].dtype == tf.float32, name
    assert outputs["rpn_scores"]["3"].dtype == tf.float32
    detections = model(features["images"])
    for name in ("detection_boxes", "detection_scores", "detection_masks"):
      assert detections[name].dtype == tf.float32, name
  finally:
    keras.mixed_precision.set_global_policy(previous)


def test_checkpoint_round_trip_and_config():
  assert_checkpoint_covers(make_model(), make_model)
  model = make_model()
  clone = MaskRCNNModel.from_config(model.get_config())
  assert clone.count_params() == model.count_params()
  assert clone.get_config()["num_sampled_rois"] == SMALL["num_sampled_rois"]


def test_losses_are_finite_and_decrease():
  keras.utils.set_random_seed(1)
  model = make_model()
  features, labels = batch()
  optimizer = keras.optimizers.Adam(0.01)
  history = []
  for _ in range(8):
    with tf.GradientTape() as tape:
      outputs = model(features, training=True)
      losses = losses_lib.maskrcnn_losses(outputs, labels,
                                          global_batch_size=2,
                                          rpn_batch_size_per_image=64)
    variables = model.trainable_variables
    grads = tape.gradient(losses["total_loss"], variables)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, variables))
    history.append({k: float(v) for k, v in losses.items()})
  for step in history:
    assert all(np.isfinite(v) for v in step.values()), step
    assert set(step) == {"total_loss", *losses_lib.LOSS_NAMES}
  for name in ("rpn_score_loss", "frcnn_class_loss", "mask_loss"):
    assert history[-1][name] < history[0][name], (name, history)
  assert history[-1]["total_loss"] < 0.8 * history[0]["total_loss"], history


# ------------------------------------------------------------------ losses


def test_losses_sum_over_replicas_equals_global_batch(mirrored_strategy):
  strategy = mirrored_strategy
  keras.utils.set_random_seed(2)
  model = make_model()
  features, labels = batch()
  outputs = model(features, training=True)
  outputs = {k: v for k, v in outputs.items() if k != "rois"}
  full = losses_lib.maskrcnn_losses(outputs, labels, global_batch_size=2,
                                    rpn_batch_size_per_image=64)
  split = lambda tree, i: tf.nest.map_structure(lambda t: t[i:i + 1], tree)
  values = strategy.experimental_distribute_values_from_function(
      lambda context: split((outputs, labels),
                            context.replica_id_in_sync_group))

  @tf.function
  def run():
    def step(inputs):
      return losses_lib.maskrcnn_losses(*inputs, global_batch_size=2,
                                        rpn_batch_size_per_image=64)
    result = strategy.run(step, args=(values,))
    return {k: strategy.reduce("SUM", v, axis=None)
            for k, v in result.items()}

  summed = run()
  for key in full:
    np.testing.assert_allclose(summed[key], full[key], rtol=1e-5,
                               err_msg=key)


def test_losses_name_what_is_missing():
  with pytest.raises(ValueError, match="outputs lack .*mask_targets"):
    losses_lib.maskrcnn_losses({"rpn_scores": {}}, {}, 2)
