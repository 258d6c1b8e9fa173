"""Tests for the Mask R-CNN heads: RPN, Fast R-CNN box head and mask head."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.mask_head import MaskHead
from modeling.heads.rpn import RPNHead
from modeling.ops.anchors import flatten_levels
from tests.modeling.layer_harness import assert_checkpoint_covers, check_layer

COCO_CLASSES = 91


def num_params(layer, trainable_only=False):
  weights = layer.trainable_weights if trainable_only else layer.weights
  return sum(int(np.prod(w.shape)) for w in weights)


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


# ----------------------------------------------------------- harness adapters


@keras.saving.register_keras_serializable(package="spinenet_tests")
class FlatRPNHead(keras.layers.Layer):
  """Harness adapter: one tensor [B, anchors, 1 + 4], not two dicts."""

  def __init__(self, head_kwargs, **kwargs):
    super().__init__(**kwargs)
    self.head_kwargs = dict(head_kwargs)
    self.head = RPNHead(**head_kwargs, name="head")

  def build(self, input_shape):
    self.head.build(input_shape)

  def call(self, features, training=None):
    scores, boxes = self.head(features, training=training)
    return tf.concat([flatten_levels(scores, 1), flatten_levels(boxes, 4)],
                     axis=-1)

  def compute_output_shape(self, input_shape):
    scores, _ = self.head.compute_output_shape(input_shape)
    first = next(iter(scores.values()))
    return (first[0], sum(s[1] * s[2] * s[3] for s in scores.values()), 5)

  def get_config(self):
    return dict(super().get_config(), head_kwargs=self.head_kwargs)


@keras.saving.register_keras_serializable(package="spinenet_tests")
class FlatFastRCNNHead(keras.layers.Layer):
  """Harness adapter: [B, N, num_classes + box columns], not a tuple."""

  def __init__(self, head_kwargs, **kwargs):
    super().__init__(**kwargs)
    self.head_kwargs = dict(head_kwargs)
    self.head = FastRCNNHead(**head_kwargs, name="head")

  def build(self, input_shape):
    self.head.build(input_shape)

  def call(self, roi_features, training=None):
    return tf.concat(self.head(roi_features, training=training), axis=-1)

  def compute_output_shape(self, input_shape):
    classes, boxes = self.head.compute_output_shape(input_shape)
    return classes[:-1] + (classes[-1] + boxes[-1],)

  def get_config(self):
    return dict(super().get_config(), head_kwargs=self.head_kwargs)


@keras.saving.register_keras_serializable(package="spinenet_tests")
class ArgmaxClassMaskHead(keras.layers.Layer):
  """Harness adapter for the class-specific path: [rois, class scores] ->
  the mask of each ROI's argmax class (the harness feeds float inputs only)."""

  def __init__(self, head_kwargs, **kwargs):
    super().__init__(**kwargs)
    self.head_kwargs = dict(head_kwargs)
    self.head = MaskHead(**head_kwargs, name="head")

  def build(self, input_shape):
    self.head.build(input_shape[0])

  def call(self, inputs, training=None):
    roi_features, scores = inputs
    classes = tf.argmax(scores, axis=-1, output_type=tf.int32)
    return self.head(roi_features, classes, training=training)

  def compute_output_shape(self, input_shape):
    return self.head.compute_output_shape(input_shape[0], input_shape[1][:-1])

  def get_config(self):
    return dict(super().get_config(), head_kwargs=self.head_kwargs)


# ------------------------------------------------------------------------ RPN

RPN = dict(min_level=3, max_level=4, num_anchors_per_location=3, num_convs=2,
           num_filters=8)
FEATURES = {"3": (2, 8, 8, 16), "4": (2, 4, 4, 16)}


@pytest.mark.parametrize("separable", [False, True])
def test_rpn_harness(separable):
  kwargs = dict(RPN, use_separable_conv=separable)
  check_layer(lambda: FlatRPNHead(kwargs), FEATURES, (2, (64 + 16) * 3, 5))


def test_rpn_shapes_float32_and_initial_outputs():
  head = RPNHead(**RPN)
  features = {k: tf.random.normal(s) for k, s in FEATURES.items()}
  features["5"] = tf.random.normal((2, 2, 2, 16))  # extra levels are unused
  scores, boxes = head(features)
  assert {k: tuple(v.shape) for k, v in scores.items()} == {
      "3": (2, 8, 8, 3), "4": (2, 4, 4, 3)}
  assert {k: tuple(v.shape) for k, v in boxes.items()} == {
      "3": (2, 8, 8, 12), "4": (2, 4, 4, 12)}
  # N(0, 1e-5) prediction kernels, zero biases: objectness ~0.5, deltas ~0.
  for tensor in list(scores.values()) + list(boxes.values()):
    assert tensor.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(tensor))) < 1e-2


def test_rpn_missing_levels_error_names_present_and_expected():
  head = RPNHead(min_level=3, max_level=5, num_anchors_per_location=3)
  features = {"3": tf.zeros((1, 8, 8, 4)), "5": tf.zeros((1, 2, 2, 4))}
  with pytest.raises(ValueError, match=r"levels 3..5 but the features have "
                     r"levels \[3, 5\] \(missing \['4'\]\)"):
    head(features)
  with pytest.raises(ValueError, match="same, known width"):
    RPNHead(**RPN)({"3": tf.zeros((1, 8, 8, 4)), "4": tf.zeros((1, 4, 4, 8))})
  with pytest.raises(ValueError, match="impossible level range"):
    RPNHead(min_level=5, max_level=3, num_anchors_per_location=3)


def test_rpn_spinenet49_parameters():
  # Public SpineNet-49 Mask R-CNN: levels 3..7, 1 conv x 256 on 256-channel
  # features, 1 scale x 3 aspect ratios = 3 anchors per location.
  head = RPNHead(min_level=3, max_level=7, num_anchors_per_location=3,
                 num_convs=1, num_filters=256)
  head.build({str(l): (None, None, None, 256) for l in range(3, 8)})
  conv = 3 * 3 * 256 * 256 + 256          # shared by the 5 levels
  norms = 5 * 4 * 256                     # per level: gamma, beta, mean, var
  scores = 256 * 3 + 3
  boxes = 256 * 4 * 3 + 4 * 3
  assert num_params(head) == conv + norms + scores + boxes == 599_055
  assert num_params(head, trainable_only=True) == (
      conv + 5 * 2 * 256 + scores + boxes)
  assert len([w for w in head.weights if "conv" in w.path]) == 2


def test_rpn_eff_spinenet_d0_separable_parameters():
  # Eff-SpineNet D0: 3 separable convs x 64 on 64-channel features.
  head = RPNHead(min_level=3, max_level=7, num_anchors_per_location=3,
                 num_convs=3, num_filters=64, use_separable_conv=True)
  head.build({str(l): (None, None, None, 64) for l in range(3, 8)})
  separable = 3 * 3 * 64 + 64 * 64 + 64   # depthwise, pointwise, bias
  expected = (3 * separable + 5 * 3 * 4 * 64 + (64 * 3 + 3) +
              (64 * 12 + 12))
  assert num_params(head) == expected


def test_rpn_float32_outputs_under_mixed_bfloat16(bfloat16_policy):
  head = RPNHead(**RPN)
  scores, boxes = head({k: tf.random.normal(s) for k, s in FEATURES.items()},
                       training=True)
  assert head.convs[0].compute_dtype == "bfloat16"
  for tensor in list(scores.values()) + list(boxes.values()):
    assert tensor.dtype == tf.float32
  inputs = {k: keras.Input(batch_shape=s, dtype="bfloat16")
            for k, s in FEATURES.items()}
  symbolic_scores, symbolic_boxes = RPNHead(**RPN)(inputs)
  assert symbolic_scores["3"].dtype == symbolic_boxes["4"].dtype == "float32"


def test_rpn_checkpoint_restores_every_weight():
  def make():
    head = RPNHead(**RPN)
    head.build(FEATURES)
    return head
  assert_checkpoint_covers(make(), make_clone=make)


# ------------------------------------------------------------------ Fast R-CNN

FAST = dict(num_classes=5, num_convs=2, num_filters=8, num_fcs=2, fc_dims=16)
ROIS = (2, 3, 7, 7, 16)


@pytest.mark.parametrize("separable,agnostic", [(False, False), (True, False),
                                                (False, True)])
def test_fast_rcnn_harness(separable, agnostic):
  kwargs = dict(FAST, use_separable_conv=separable,
                class_agnostic_boxes=agnostic)
  check_layer(lambda: FlatFastRCNNHead(kwargs), ROIS,
              (2, 3, 5 + (4 if agnostic else 20)))


def test_fast_rcnn_shapes_and_dtype():
  classes, boxes = FastRCNNHead(**FAST)(tf.random.normal(ROIS))
  assert tuple(classes.shape) == (2, 3, 5)
  assert tuple(boxes.shape) == (2, 3, 20)
  assert classes.dtype == boxes.dtype == tf.float32
  _, agnostic = FastRCNNHead(**FAST, class_agnostic_boxes=True)(
      tf.random.normal(ROIS))
  assert tuple(agnostic.shape) == (2, 3, 4)
  # No convs, no FCs: the predictions read the flattened ROI features.
  classes, _ = FastRCNNHead(num_classes=5, num_convs=0, num_fcs=0)(
      tf.random.normal(ROIS))
  assert tuple(classes.shape) == (2, 3, 5)


def test_fast_rcnn_rois_are_independent_at_inference():
  # The head runs on each ROI alone: permuting ROIs permutes the outputs.
  head = FastRCNNHead(**FAST)
  rois = tf.random.normal(ROIS)
  classes, boxes = head(rois, training=False)
  order = [2, 0, 1]
  permuted_classes, permuted_boxes = head(tf.gather(rois, order, axis=1),
                                          training=False)
  np.testing.assert_allclose(permuted_classes, tf.gather(classes, order,
                                                         axis=1), atol=1e-5)
  np.testing.assert_allclose(permuted_boxes, tf.gather(boxes, order, axis=1),
                             atol=1e-5)


def test_fast_rcnn_spinenet49_parameters_and_init():
  # SpineNet-49 Mask R-CNN: 4 convs x 256 on 7x7x256 ROI features, then one
  # FC of 1024 on the 7 * 7 * 256 = 12544 flattened values; COCO 91 classes.
  head = FastRCNNHead(num_classes=COCO_CLASSES, num_convs=4, num_filters=256,
                      num_fcs=1, fc_dims=1024)
  head.build((None, None, 7, 7, 256))
  convs = 4 * (3 * 3 * 256 * 256 + 256)
  conv_norms = 4 * 4 * 256
  fc = 7 * 7 * 256 * 1024 + 1024
  fc_norm = 4 * 1024
  classes = 1024 * 91 + 91
  boxes = 1024 * 4 * 91 + 4 * 91
  assert num_params(head) == (convs + conv_norms + fc + fc_norm + classes +
                              boxes) == 15_680_967
  assert num_params(head, trainable_only=True) == (
      convs + 4 * 2 * 256 + fc + 2 * 1024 + classes + boxes)
  # Detectron initialisation of the prediction layers.
  assert 0.009 < float(tf.math.reduce_std(head.class_predict.kernel)) < 0.011
  assert 0.0009 < float(tf.math.reduce_std(head.box_predict.kernel)) < 0.0011
  assert not np.any(head.class_predict.bias.numpy())
  assert not np.any(head.box_predict.bias.numpy())


def test_fast_rcnn_eff_spinenet_d0_separable_parameters():
  # Eff-SpineNet D0: 3 separable convs x 64 on 7x7x64 ROIs + one FC of 256.
  head = FastRCNNHead(num_classes=COCO_CLASSES, num_convs=3, num_filters=64,
                      num_fcs=1, fc_dims=256, use_separable_conv=True)
  head.build((None, None, 7, 7, 64))
  separable = 3 * 3 * 64 + 64 * 64 + 64
  expected = (3 * separable + 3 * 4 * 64 + (7 * 7 * 64 * 256 + 256) +
              4 * 256 + (256 * 91 + 91) + (256 * 364 + 364))
  assert num_params(head) == expected


def test_fast_rcnn_errors():
  with pytest.raises(ValueError, match=r"\[batch, num_rois, height, width, "
                     r"channels\], got shape \(2, 7, 7, 16\)"):
    FastRCNNHead(**FAST)(tf.zeros((2, 7, 7, 16)))
  with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
    FastRCNNHead(num_classes=1)
  with pytest.raises(ValueError, match="must be static"):
    FastRCNNHead(**FAST)(keras.Input((3, None, None, 16)))


def test_fast_rcnn_float32_outputs_under_mixed_bfloat16(bfloat16_policy):
  head = FastRCNNHead(**FAST)
  classes, boxes = head(tf.random.normal(ROIS), training=True)
  assert head.fcs[0].compute_dtype == "bfloat16"
  assert classes.dtype == boxes.dtype == tf.float32
  symbolic = FastRCNNHead(**FAST)(keras.Input(batch_shape=ROIS,
                                              dtype="bfloat16"))
  assert [t.dtype for t in symbolic] == ["float32", "float32"]


def test_fast_rcnn_checkpoint_restores_every_weight():
  def make():
    head = FastRCNNHead(**FAST)
    head.build(ROIS)
    return head
  assert_checkpoint_covers(make(), make_clone=make)


# ----------------------------------------------------------------- mask head

MASK = dict(num_classes=4, num_convs=2, num_filters=8)
MASK_ROIS = (2, 3, 14, 14, 16)


@pytest.mark.parametrize("separable", [False, True])
def test_mask_head_harness_all_classes(separable):
  check_layer(lambda: MaskHead(**MASK, use_separable_conv=separable),
              MASK_ROIS, (2, 3, 28, 28, 4))


def test_mask_head_harness_class_specific():
  check_layer(lambda: ArgmaxClassMaskHead(MASK), [MASK_ROIS, (2, 3, 4)],
              (2, 3, 28, 28))


def test_mask_head_selects_the_channel_of_each_roi_class():
  head = MaskHead(**MASK)
  rois = tf.random.normal(MASK_ROIS)
  head(rois)
  # Offset channel c by 100 * c so a wrong channel cannot pass unnoticed.
  head.mask_predict.bias.assign(100.0 * np.arange(4, dtype="float32"))
  every = head(rois, training=False).numpy()
  classes = np.array([[3, 0, 2], [1, 1, 3]], dtype="int32")
  selected = head(rois, tf.constant(classes), training=False).numpy()
  assert selected.shape == (2, 3, 28, 28)
  for b in range(2):
    for n in range(3):
      np.testing.assert_array_equal(selected[b, n], every[b, n, :, :,
                                                          classes[b, n]])
      assert abs(selected[b, n].mean() - 100.0 * classes[b, n]) < 10.0
  # int64 classes are accepted too.
  np.testing.assert_array_equal(
      head(rois, tf.constant(classes, tf.int64), training=False), selected)


def test_mask_head_class_agnostic_and_upsample_factor():
  head = MaskHead(**MASK, class_agnostic=True, upsample_factor=4)
  rois = tf.random.normal((1, 2, 7, 7, 16))
  every = head(rois)
  assert tuple(every.shape) == (1, 2, 28, 28, 1)
  one = head(rois, tf.constant([[3, 1]]))
  np.testing.assert_array_equal(one, every[..., 0])
  assert head.mask_predict.kernel.shape == (1, 1, 8, 1)


def test_mask_head_spinenet49_parameters():
  # 4 convs x 256 on 14x14x256 ROIs, 2x2 stride-2 transposed conv x 256,
  # 1x1 conv to 91 class masks of 28x28.
  head = MaskHead(num_classes=COCO_CLASSES, num_convs=4, num_filters=256)
  head.build((None, None, 14, 14, 256))
  convs = 4 * (3 * 3 * 256 * 256 + 256)
  conv_norms = 4 * 4 * 256
  upsample = 2 * 2 * 256 * 256 + 256
  upsample_norm = 4 * 256
  masks = 256 * 91 + 91
  assert num_params(head) == (convs + conv_norms + upsample + upsample_norm +
                              masks) == 2_651_227
  assert num_params(head, trainable_only=True) == (
      convs + 4 * 2 * 256 + upsample + 2 * 256 + masks)
  assert 0.0009 < float(tf.math.reduce_std(head.mask_predict.kernel)) < 0.0011


def test_mask_head_eff_spinenet_d0_separable_parameters():
  head = MaskHead(num_classes=COCO_CLASSES, num_convs=3, num_filters=64,
                  use_separable_conv=True)
  head.build((None, None, 14, 14, 64))
  separable = 3 * 3 * 64 + 64 * 64 + 64
  expected = (3 * separable + 3 * 4 * 64 + (2 * 2 * 64 * 64 + 64) + 4 * 64 +
              (64 * 91 + 91))
  assert num_params(head) == expected


def test_mask_head_class_errors():
  head = MaskHead(**MASK)
  rois = tf.random.normal(MASK_ROIS)
  with pytest.raises(ValueError, match="classes must be an integer tensor"):
    head(rois, tf.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"classes must be \[batch, num_rois\] "
                     r"= \(2, 3\) like the ROI features, got shape \(2, 4\)"):
    head(rois, tf.zeros((2, 4), tf.int32))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="classes must be < num_classes = 4"):
    head(rois, tf.constant([[0, 1, 2], [3, 4, 0]]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
    head(rois, tf.constant([[0, 1, 2], [3, -1, 0]]))


def test_mask_head_in_functional_model_with_int_classes(bfloat16_policy):
  rois = keras.Input(batch_shape=MASK_ROIS)
  classes = keras.Input(batch_shape=(2, 3), dtype="int32")
  masks = MaskHead(**MASK)(rois, classes)
  assert tuple(masks.shape) == (2, 3, 28, 28) and masks.dtype == "float32"
  model = keras.Model([rois, classes], masks)
  out = model([np.random.normal(size=MASK_ROIS).astype("float32"),
               np.array([[0, 1, 2], [3, 2, 1]], "int32")], training=True)
  assert out.dtype == tf.float32
  assert np.all(np.isfinite(out.numpy()))


def test_mask_head_checkpoint_restores_every_weight():
  def make():
    head = MaskHead(**MASK)
    head.build(MASK_ROIS)
    return head
  assert_checkpoint_covers(make(), make_clone=make)
