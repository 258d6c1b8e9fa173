"""Faster R-CNN: modeling/models/maskrcnn.py's model without a mask head.

The FPN layout of the paper's Faster R-CNN (Lin et al. 2017, Sec. 4.1 and
4.2): RPN and anchors on levels 2..6, ROI Align on 2..5. The losses are
those of modeling/losses/maskrcnn.py with include_mask=False.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.mask_head import MaskHead
from modeling.heads.rpn import RPNHead
from modeling.losses import maskrcnn as losses_lib
from modeling.models.maskrcnn import MaskRCNNModel
from modeling.ops.anchors import Anchors
from modeling.ops.target_assigner import RpnAnchorLabeler
from tests.modeling.layer_harness import assert_checkpoint_covers

SIZE = 64
NUM_CLASSES = 4
LEVELS = (2, 6)
SMALL = dict(rpn_pre_nms_top_k=100, rpn_post_nms_top_k=32,
             test_rpn_pre_nms_top_k=100, test_rpn_post_nms_top_k=32,
             num_sampled_rois=16, num_mask_samples=4, max_detections=6,
             roi_min_level=2, roi_max_level=5, anchor_size=2.0)
TRAINING_KEYS = {"rpn_scores", "rpn_boxes", "rois", "roi_classes",
                 "class_logits", "box_deltas", "box_targets"}
DETECTION_KEYS = {"detection_boxes", "detection_scores", "detection_classes",
                  "num_detections"}


def fake_backbone(channels=8):
  """images -> dict str(level) 2..6 of pooled features; cheap."""
  images = keras.Input((SIZE, SIZE, 3), name="images")
  x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(
      images)
  outputs = {str(l): keras.layers.AveragePooling2D(2**l)(x)
             for l in range(LEVELS[0], LEVELS[1] + 1)}
  return keras.Model(images, outputs, name="fake_backbone")


def heads():
  return (RPNHead(*LEVELS, 3, num_filters=8),
          FastRCNNHead(NUM_CLASSES, num_convs=0, num_fcs=2, fc_dims=16))


def make_model(**kwargs):
  rpn_head, fast_rcnn_head = heads()
  return MaskRCNNModel(fake_backbone(), None, rpn_head, fast_rcnn_head, None,
                       **dict(SMALL, **kwargs))


def batch():
  """Features (with masks, which Faster R-CNN must ignore) and RPN labels."""
  boxes = np.zeros([2, 2, 4], np.float32)
  classes = np.zeros([2, 2], np.int32)
  boxes[0] = [[4, 4, 30, 40], [34, 20, 60, 50]]
  classes[0] = [1, 3]
  boxes[1, 0] = [10, 8, 50, 44]
  classes[1, 0] = 2
  anchors = Anchors(*LEVELS, 1, (0.5, 1.0, 2.0), SMALL["anchor_size"],
                    (SIZE, SIZE))
  labeler = RpnAnchorLabeler(batch_size_per_image=32)
  targets = [labeler.multilevel_targets(anchors, boxes[i], classes[i] > 0,
                                        seed=[i, 5]) for i in range(2)]
  labels = {key: {l: tf.stack([t[name][l] for t in targets])
                  for l in anchors.levels}
            for key, name in (("rpn_score_targets", "score_targets"),
                              ("rpn_box_targets", "box_targets"))}
  features = {"images": tf.random.stateless_normal([2, SIZE, SIZE, 3],
                                                   [3, 1]),
              "gt_boxes": tf.constant(boxes),
              "gt_classes": tf.constant(classes),
              "gt_masks": tf.ones([2, 2, 8, 8])}
  return features, labels


def test_no_mask_outputs_in_training_or_inference():
  keras.utils.set_random_seed(0)
  model = make_model(score_threshold=0.0)
  assert model.name == "faster_rcnn" and model.mask_size is None
  features, _ = batch()
  outputs = model(features, training=True)
  assert set(outputs) == TRAINING_KEYS
  assert sorted(outputs["rpn_scores"], key=int) == ["2", "3", "4", "5", "6"]
  assert outputs["rpn_scores"]["2"].shape == (2, 16, 16, 3)
  assert outputs["class_logits"].shape == (2, 16, NUM_CLASSES)

  detections = model(features["images"])
  assert set(detections) == DETECTION_KEYS
  assert detections["detection_boxes"].shape == (2, 6, 4)
  assert np.all(detections["num_detections"].numpy() > 0)


def test_same_detections_as_the_mask_rcnn_with_its_weights():
  """All but the mask branch is Mask R-CNN's: same weights, same boxes."""
  rpn_head, fast_rcnn_head = heads()
  backbone = fake_backbone()
  settings = dict(SMALL, score_threshold=0.0)
  mask_rcnn = MaskRCNNModel(backbone, None, rpn_head, fast_rcnn_head,
                            MaskHead(NUM_CLASSES, num_convs=1, num_filters=8),
                            **settings)
  faster_rcnn = MaskRCNNModel(backbone, None, rpn_head, fast_rcnn_head, None,
                              **settings)
  assert faster_rcnn.count_params() < mask_rcnn.count_params()
  images = batch()[0]["images"]
  with_masks = mask_rcnn(images)
  boxes_only = faster_rcnn(images)
  assert set(with_masks) == DETECTION_KEYS | {"detection_masks"}
  for key in DETECTION_KEYS:
    np.testing.assert_array_equal(boxes_only[key], with_masks[key], key)


def test_roi_align_reads_p2_to_p5_under_an_rpn_on_p2_to_p6():
  """A box that eq. 1 puts on level 6 is read from P5 (roi_max_level=5)."""
  model = make_model()
  # Maps covering 1024 x 1024 pixels, level l filled with the value l.
  features = {str(l): tf.fill([1, 1024 // 2**l, 1024 // 2**l, 8], float(l))
              for l in range(2, 7)}
  # sqrt(area) = 960 pixels: floor(4 + log2(960 / 224)) = 6.
  big = tf.constant([[[0.0, 0.0, 960.0, 960.0]]])
  small = tf.constant([[[0.0, 0.0, 16.0, 16.0]]])  # Level 2.
  # pylint: disable=protected-access
  np.testing.assert_allclose(model._roi_align(features, big, 7), 5.0)
  np.testing.assert_allclose(model._roi_align(features, small, 7), 2.0)
  on_p6 = make_model(roi_max_level=6)._roi_align(features, big, 7)
  # pylint: enable=protected-access
  np.testing.assert_allclose(on_p6, 6.0)


def test_loss_has_no_mask_term_and_trains_every_variable():
  keras.utils.set_random_seed(1)
  model = make_model()
  features, labels = batch()
  del features["gt_masks"]  # Not needed without a mask head.
  with tf.GradientTape() as tape:
    outputs = model(features, training=True)
    losses = losses_lib.maskrcnn_losses(
        outputs, labels, global_batch_size=2, rpn_batch_size_per_image=32,
        mask_weight=7.0, include_mask=False)
  assert set(losses) == {"total_loss", *losses_lib.BOX_LOSS_NAMES}
  assert "mask_loss" not in losses
  parts = sum(float(losses[k]) for k in losses_lib.BOX_LOSS_NAMES)
  np.testing.assert_allclose(float(losses["total_loss"]), parts, rtol=1e-6)
  assert all(np.isfinite(float(v)) for v in losses.values()), losses
  grads = tape.gradient(losses["total_loss"], model.trainable_variables)
  untrained = [v.path for v, g in zip(model.trainable_variables, grads)
               if g is None]
  assert not untrained


def test_losses_say_which_model_the_outputs_belong_to():
  # The keys are checked before any value is read.
  boxes_only = dict.fromkeys(TRAINING_KEYS)
  with pytest.raises(ValueError, match=r"lack \['mask_logits', "
                     r"'mask_classes', 'mask_targets'\]"):
    losses_lib.maskrcnn_losses(boxes_only, {}, 2)
  with_masks = dict(boxes_only, mask_logits=None, mask_classes=None,
                    mask_targets=None)
  with pytest.raises(ValueError, match=r"outputs hold \['mask_logits', "
                     r"'mask_classes', 'mask_targets'\]: the model has a "
                     "mask head"):
    losses_lib.maskrcnn_losses(with_masks, {}, 2, include_mask=False)
  with pytest.raises(ValueError, match=r"lack \['box_targets'\]"):
    losses_lib.maskrcnn_losses(
        {k: None for k in TRAINING_KEYS - {"box_targets"}}, {}, 2,
        include_mask=False)


def test_config_round_trip_and_checkpoint():
  model = make_model()
  config = model.get_config()
  assert config["mask_head"] is None
  assert (config["roi_min_level"], config["roi_max_level"]) == (2, 5)
  clone = MaskRCNNModel.from_config(config)
  assert clone.mask_head is None and clone.name == "faster_rcnn"
  assert clone.count_params() == model.count_params()
  assert_checkpoint_covers(make_model(), make_model)


def test_a_mask_head_of_the_wrong_type_is_named():
  rpn_head, fast_rcnn_head = heads()
  with pytest.raises(ValueError, match="mask_head must be a MaskHead or None"):
    MaskRCNNModel(fake_backbone(), None, rpn_head, fast_rcnn_head,
                  fast_rcnn_head, **SMALL)
