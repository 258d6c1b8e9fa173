"""Semantic segmentation head over P3..P7 (Eff-SpineNet paper, Sec. 4.3).

Every level min_level..max_level is nearest-neighbour upsampled to the size of
the min_level map and the maps are averaged: one feature map P at output
stride 2^min_level (8 for P3). P goes through `num_convs` conv + batch norm +
activation layers (separable convs in the Eff-SpineNet models: 3 layers of
64 / 88 / 112 for D0 / D1 / D2, the widths of the detection subnets) and a
1x1 pixel classifier. The model (modeling/models/segmentation.py) upsamples
the logits to the input size.

Choices written down here as the project rule (the paper is silent):
- The 3x3 convs have no bias (batch norm follows) and He initialisation, as
  the backbone's convs; the classifier is a 1x1 conv with bias, initialised
  N(0, 0.01), as the classification head's dense layer.
- The classifier computes in the layer's compute dtype and its output is cast
  to float32, so logits and losses are float32 under mixed precision.
"""

import keras
import tensorflow as tf

from modeling.heads import arguments
from modeling.heads.tower import ConvTower
from modeling.heads.registry import register_head
from modeling.layers import activations
from modeling.layers.resampling import nearest_resize
from modeling.layers.tracking import tracked_list
from modeling.levels import require_levels


def average_levels(features, levels):
  """Nearest-upsamples the maps of `levels` to the first one's size; averages.

  Args:
    features: dict str(level) -> [batch, H_l, W_l, C], same C at every level.
    levels: str levels, the finest first.
  Returns:
    [batch, H_first, W_first, C], the mean of the upsampled maps.
  """
  first = features[levels[0]]
  height, width = first.shape[1], first.shape[2]
  maps = []
  for level in levels:
    x = features[level]
    if height is None or width is None:  # Dynamic sizes (e.g. export).
      size = tf.shape(first)[1:3]
      x = tf.cast(tf.image.resize(x, size, method="nearest"), first.dtype)
    else:
      x = nearest_resize(x, height, width)
    maps.append(x)
  if len(maps) == 1:
    return maps[0]
  return tf.add_n(maps) / tf.cast(len(maps), maps[0].dtype)


@register_head("segmentation")
@keras.saving.register_keras_serializable(package="spinenet")
class SegmentationHead(keras.layers.Layer):
  """Per-pixel class logits at output stride 2^min_level.

  Input: dict str(level) -> [batch, H_l, W_l, C] for (at least) levels
  min_level..max_level, same C at every level. Output: float32 [batch,
  H_min, W_min, num_classes] logits, H_min x W_min the size of the min_level
  map (input size / 8 for min_level 3).

  Args:
    num_classes: classes of the pixel classifier (PASCAL VOC: 21, background
      included).
    min_level, max_level: levels averaged (P3..P7 in the paper).
    num_convs: 3x3 conv layers before the classifier (0: none).
    num_filters: width of those convs.
    use_separable_conv: SeparableConv2D (depthwise 3x3 + pointwise 1x1)
      instead of Conv2D for those convs.
    activation: "relu", "swish" or "hard_swish", after each batch norm.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  """

  def __init__(self, num_classes, min_level=3, max_level=7, num_convs=3,
               num_filters=64, use_separable_conv=True, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               **kwargs):
    super().__init__(**kwargs)
    if not 1 <= min_level <= max_level:
      raise ValueError(f"SegmentationHead: impossible level range min_level="
                       f"{min_level}, max_level={max_level}.")
    arguments.check_integers("SegmentationHead", (
        ("num_classes", num_classes, 2),
        ("num_convs", num_convs, 0),
        ("num_filters", num_filters, 1)))
    self.num_classes = int(num_classes)
    self.min_level = int(min_level)
    self.max_level = int(max_level)
    self.num_convs = int(num_convs)
    self.num_filters = int(num_filters)
    self.use_separable_conv = bool(use_separable_conv)
    self.activation = activations.check_activation(activation)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon

    # One batch norm per conv: the levels are averaged before the convs.
    self._tower = ConvTower(
        self.num_convs, self.num_filters, "conv", "norm",
        use_separable_conv=self.use_separable_conv, use_bias=False,
        activation=self.activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    self.convs = tracked_list(self, "conv", self._tower.layers)
    self.norms = tracked_list(self, "norm", self._tower.norms)
    self.classifier = keras.layers.Conv2D(
        self.num_classes, 1, padding="same",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer="zeros", name="classifier")

  @property
  def levels(self):
    """str levels min_level..max_level."""
    return [str(l) for l in range(self.min_level, self.max_level + 1)]

  def _check_inputs(self, shapes):
    """Checks the level dict; returns the shared width C."""
    if not isinstance(shapes, dict):
      raise ValueError(f"{self.name}: expected a dict str(level) -> features, "
                       f"got {type(shapes).__name__}.")
    require_levels(shapes, self.levels, f"{self.name}: the head averages",
                   "the features have", ".")
    widths = {tuple(shapes[l])[-1] for l in self.levels}
    if len(widths) != 1:
      raise ValueError(f"{self.name}: levels {self.min_level}.."
                       f"{self.max_level} are averaged, so they need one "
                       f"width; got widths {sorted(widths)}.")
    return widths.pop()

  def build(self, input_shape):
    channels = self._check_inputs(input_shape)
    self.classifier.build(self._tower.build((None, None, None, channels)))

  def call(self, features, training=None):
    self._check_inputs({k: v.shape for k, v in features.items()})
    x = self._tower(average_levels(features, self.levels), training=training)
    return tf.cast(self.classifier(x), tf.float32)

  def compute_output_shape(self, input_shape):
    self._check_inputs(input_shape)
    shape = tuple(input_shape[str(self.min_level)])
    return shape[:-1] + (self.num_classes,)

  def compute_output_spec(self, features, training=None):
    shape = self.compute_output_shape(
        {k: tuple(v.shape) for k, v in features.items()})
    return keras.KerasTensor(shape, dtype="float32")

  def get_config(self):
    config = super().get_config()
    config.update(
        num_classes=self.num_classes, min_level=self.min_level,
        max_level=self.max_level, num_convs=self.num_convs,
        num_filters=self.num_filters,
        use_separable_conv=self.use_separable_conv,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon)
    return config
