"""RetinaNet head: class and box subnets shared across levels (RetinaNet §4.1).

Lin et al., "Focal Loss for Dense Object Detection" (2017), with the
SpineNet/Model Garden variant of batch norm: the conv weights of each subnet
are shared by every level, but each level has its own batch norm after each
conv (feature statistics differ from level to level).

Choices written down here as the project rule:
- With use_separable_conv the prediction convs are separable too (depthwise
  3x3 initialised N(0, 0.01), pointwise N(0, 1e-5)), as in the mobile and
  efficient SpineNet models.
- The prediction convs compute in the layer's compute dtype (bfloat16 under
  mixed_bfloat16: they are about a fifth of the detector's multiply-adds) and
  their outputs are cast to float32, so logits and losses are float32.
"""

import math

import keras
import tensorflow as tf

from modeling.heads import arguments
from modeling.heads.tower import ConvTower, conv3x3
from modeling.heads.registry import register_head
from modeling.layers import activations
from modeling.layers.tracking import tracked_list
from modeling.levels import require_levels

_PRIOR_PROBABILITY = 0.01


def class_prior_bias(prior=_PRIOR_PROBABILITY):
  """-log((1 - prior) / prior): the bias giving every class score `prior`."""
  return -math.log((1.0 - prior) / prior)


@register_head("retinanet")
@keras.saving.register_keras_serializable(package="spinenet")
class RetinaNetHead(keras.layers.Layer):
  """Dense class and box predictions for every anchor of every level.

  Input: dict str(level) -> [batch, H_l, W_l, C] for (at least) levels
  min_level..max_level, same C at every level. Output: a tuple
  (cls_outputs, box_outputs) of dicts str(level) -> float32
  [batch, H_l, W_l, A * num_classes] logits and [batch, H_l, W_l, A * 4]
  box deltas (Faster R-CNN encoding), for levels min_level..max_level; the
  channels are anchor major (channel a * num_classes + c is class c of
  anchor a, in the anchor order of modeling.ops.anchors).

  Args:
    min_level, max_level: levels to predict on.
    num_classes: logit columns per anchor, background column 0 included
      (COCO: 91).
    num_anchors_per_location: A (RetinaNet: 3 scales x 3 ratios = 9).
    num_convs: 3x3 conv layers in each subnet before the prediction conv.
    num_filters: width of those convs.
    use_separable_conv: SeparableConv2D (depthwise + pointwise) for every conv.
    activation: "relu", "swish" or "hard_swish", after each batch norm.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  """

  def __init__(self, min_level=3, max_level=7, num_classes=91,
               num_anchors_per_location=9, num_convs=4, num_filters=256,
               use_separable_conv=False, activation="relu", use_sync_bn=False,
               norm_momentum=0.99, norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    if not 1 <= min_level <= max_level:
      raise ValueError(f"RetinaNetHead: impossible level range min_level="
                       f"{min_level}, max_level={max_level}.")
    arguments.check_integers("RetinaNetHead", (
        ("num_classes", num_classes, 2),
        ("num_anchors_per_location", num_anchors_per_location, 1),
        ("num_convs", num_convs, 0),
        ("num_filters", num_filters, 1)))
    self.min_level = int(min_level)
    self.max_level = int(max_level)
    self.num_classes = int(num_classes)
    self.num_anchors_per_location = int(num_anchors_per_location)
    self.num_convs = int(num_convs)
    self.num_filters = int(num_filters)
    self.use_separable_conv = bool(use_separable_conv)
    self.activation = activations.check_activation(activation)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon

    # The subnets' towers: convs shared by the levels, one batch norm per
    # (level, conv), level major (modeling/heads/tower.py).
    self._cls_tower, self._box_tower = (
        ConvTower(self.num_convs, self.num_filters, f"{subnet}_conv",
                  f"{subnet}_norm", use_separable_conv=self.use_separable_conv,
                  stddev=0.01, levels=self.levels, activation=self.activation,
                  use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
                  norm_epsilon=norm_epsilon)
        for subnet in ("cls", "box"))
    # Tracked in this order (both towers' convs, then their norms): the
    # order of the head's weights, and so of optimizer slots, stays that of
    # checkpoints written before the tower existed.
    self.cls_convs = tracked_list(self, "cls_conv", self._cls_tower.layers)
    self.box_convs = tracked_list(self, "box_conv", self._box_tower.layers)
    self.cls_norms = tracked_list(self, "cls_norm", self._cls_tower.norms)
    self.box_norms = tracked_list(self, "box_norm", self._box_tower.norms)
    anchors = self.num_anchors_per_location
    self.cls_predict = self._predict_conv(
        anchors * self.num_classes, "cls_predict", bias=class_prior_bias())
    self.box_predict = self._predict_conv(anchors * 4, "box_predict",
                                          bias=0.0)

  @property
  def levels(self):
    """str levels min_level..max_level."""
    return [str(l) for l in range(self.min_level, self.max_level + 1)]

  def _predict_conv(self, filters, name, bias):
    return conv3x3(filters, name, self.use_separable_conv, stddev=1e-5,
                   bias=bias)

  def _check_inputs(self, shapes):
    if not isinstance(shapes, dict):
      raise ValueError(f"{self.name}: expected a dict str(level) -> features, "
                       f"got {type(shapes).__name__}.")
    require_levels(shapes, self.levels, f"{self.name}: the head predicts on",
                   "the features have", ".")
    widths = {tuple(shapes[l])[-1] for l in self.levels}
    if len(widths) != 1:
      raise ValueError(f"{self.name}: the subnets are shared across levels, so "
                       "every level needs the same width; got "
                       f"{sorted(widths)}.")
    return widths.pop()

  def build(self, input_shape):
    width = self._check_inputs(input_shape)
    shape = self._cls_tower.build((None, None, None, width))
    self._box_tower.build((None, None, None, width))
    self.cls_predict.build(shape)
    self.box_predict.build(shape)

  def call(self, features, training=None):
    self._check_inputs({k: v.shape for k, v in features.items()})
    cls_outputs, box_outputs = {}, {}
    for level in self.levels:
      x = features[level]
      cls = self._cls_tower(x, training=training, level=level)
      box = self._box_tower(x, training=training, level=level)
      cls_outputs[level] = tf.cast(self.cls_predict(cls), tf.float32)
      box_outputs[level] = tf.cast(self.box_predict(box), tf.float32)
    return cls_outputs, box_outputs

  def compute_output_shape(self, input_shape):
    self._check_inputs(input_shape)
    anchors = self.num_anchors_per_location
    cls_shapes, box_shapes = {}, {}
    for level in self.levels:
      shape = tuple(input_shape[level])
      cls_shapes[level] = shape[:-1] + (anchors * self.num_classes,)
      box_shapes[level] = shape[:-1] + (anchors * 4,)
    return cls_shapes, box_shapes

  def compute_output_spec(self, features, training=None):
    shapes = self.compute_output_shape(
        {k: tuple(v.shape) for k, v in features.items()})
    return tuple(
        {k: keras.KerasTensor(s, dtype="float32") for k, s in d.items()}
        for d in shapes)

  def get_config(self):
    config = super().get_config()
    config.update(
        min_level=self.min_level, max_level=self.max_level,
        num_classes=self.num_classes,
        num_anchors_per_location=self.num_anchors_per_location,
        num_convs=self.num_convs, num_filters=self.num_filters,
        use_separable_conv=self.use_separable_conv,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon)
    return config
