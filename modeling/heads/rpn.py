"""Region Proposal Network head of Mask R-CNN (Faster R-CNN §3.1).

Ren et al., "Faster R-CNN" (2015), in the SpineNet/Model Garden form with
batch norm: a stack of 3x3 convs whose weights every level shares, each
followed by a batch norm of its own per level (as in the RetinaNet head:
feature statistics differ from level to level), then two 1x1 prediction
convs, one objectness logit and four box deltas per anchor.

Configurations: SpineNet-49/96/143 1 conv x 256; SpineNet-190 7 convs x 384;
Eff-SpineNet D0/D1/D2 3 separable convs x 64/88/112.

Choices written down here as the project rule:
- Initialisation as in the RetinaNet head: the 3x3 convs N(0, 0.01), the
  prediction convs N(0, 1e-5), zero biases, so every proposal starts at
  objectness 0.5 and zero deltas.
- use_separable_conv makes the 3x3 convs SeparableConv2D; the 1x1 prediction
  convs stay plain Conv2D (a 1x1 depthwise conv would only rescale channels).
- The convs keep their bias before the batch norm, as the peer (Model Garden)
  does, so parameter counts compare one to one.
- The prediction convs compute in the layer's compute dtype and their outputs
  are cast to float32: objectness logits and the RPN losses stay float32.
"""

import keras
import tensorflow as tf

from modeling.heads import arguments
from modeling.heads.tower import ConvTower
from modeling.heads.registry import register_head
from modeling.layers import activations
from modeling.layers.tracking import tracked_list
from modeling.levels import require_levels


@register_head("rpn")
@keras.saving.register_keras_serializable(package="spinenet")
class RPNHead(keras.layers.Layer):
  """Objectness and box predictions for every anchor of every level.

  Input: dict str(level) -> [batch, H_l, W_l, C] for (at least) levels
  min_level..max_level, same C at every level. Output: a tuple (scores,
  boxes) of dicts str(level) -> float32 [batch, H_l, W_l, A] objectness
  logits and [batch, H_l, W_l, 4 * A] box deltas (Faster R-CNN encoding),
  for levels min_level..max_level. Channels are anchor major: channels
  4a..4a+3 of `boxes` are the deltas of anchor a, in the anchor order of
  modeling.ops.anchors.

  Args:
    min_level, max_level: levels to predict on.
    num_anchors_per_location: A (public SpineNet Mask R-CNN configs: 1 scale
      x 3 aspect ratios = 3).
    num_convs: 3x3 conv layers shared by the levels before the predictions.
    num_filters: width of those convs.
    use_separable_conv: SeparableConv2D (depthwise + pointwise) for the 3x3
      convs.
    activation: "relu", "swish" or "hard_swish", after each batch norm.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  """

  def __init__(self, min_level, max_level, num_anchors_per_location,
               num_convs=1, num_filters=256, use_separable_conv=False,
               activation="relu", use_sync_bn=False, norm_momentum=0.99,
               norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    if not 1 <= min_level <= max_level:
      raise ValueError(f"RPNHead: impossible level range min_level="
                       f"{min_level}, max_level={max_level}.")
    arguments.check_integers("RPNHead", (
        ("num_anchors_per_location", num_anchors_per_location, 1),
        ("num_convs", num_convs, 0),
        ("num_filters", num_filters, 1)))
    self.min_level = int(min_level)
    self.max_level = int(max_level)
    self.num_anchors_per_location = int(num_anchors_per_location)
    self.num_convs = int(num_convs)
    self.num_filters = int(num_filters)
    self.use_separable_conv = bool(use_separable_conv)
    self.activation = activations.check_activation(activation)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon

    # Convs shared by the levels, one batch norm per (level, conv), level
    # major (modeling/heads/tower.py).
    self._tower = ConvTower(
        self.num_convs, self.num_filters, "conv", "norm",
        use_separable_conv=self.use_separable_conv, stddev=0.01,
        depthwise_stddev=0.01, levels=self.levels,
        activation=self.activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    self.convs = tracked_list(self, "conv", self._tower.layers)
    self.norms = tracked_list(self, "norm", self._tower.norms)
    anchors = self.num_anchors_per_location
    self.score_predict = self._conv1x1(anchors, "score_predict")
    self.box_predict = self._conv1x1(4 * anchors, "box_predict")

  @property
  def levels(self):
    """str levels min_level..max_level."""
    return [str(l) for l in range(self.min_level, self.max_level + 1)]

  def _conv1x1(self, filters, name):
    return keras.layers.Conv2D(
        filters, 1, kernel_initializer=keras.initializers.RandomNormal(
            stddev=1e-5),
        bias_initializer="zeros", name=name)

  def _check_inputs(self, shapes):
    if not isinstance(shapes, dict):
      raise ValueError(f"{self.name}: expected a dict str(level) -> features, "
                       f"got {type(shapes).__name__}.")
    require_levels(shapes, self.levels, f"{self.name}: the RPN predicts on",
                   "the features have", ".")
    for level in self.levels:
      if len(tuple(shapes[level])) != 4:
        raise ValueError(f"{self.name}: level {level} features must be "
                         "[batch, height, width, channels], got shape "
                         f"{tuple(shapes[level])}.")
    widths = {tuple(shapes[l])[-1] for l in self.levels}
    if len(widths) != 1 or None in widths:
      raise ValueError(f"{self.name}: the convs are shared across levels, so "
                       "every level needs the same, known width; got "
                       f"{ {l: tuple(shapes[l])[-1] for l in self.levels} }.")
    return widths.pop()

  def build(self, input_shape):
    channels = self._check_inputs(input_shape)
    shape = self._tower.build((None, None, None, channels))
    self.score_predict.build(shape)
    self.box_predict.build(shape)

  def call(self, features, training=None):
    self._check_inputs({k: v.shape for k, v in features.items()})
    scores, boxes = {}, {}
    for level in self.levels:
      x = self._tower(features[level], training=training, level=level)
      scores[level] = tf.cast(self.score_predict(x), tf.float32)
      boxes[level] = tf.cast(self.box_predict(x), tf.float32)
    return scores, boxes

  def compute_output_shape(self, input_shape):
    self._check_inputs(input_shape)
    anchors = self.num_anchors_per_location
    score_shapes, box_shapes = {}, {}
    for level in self.levels:
      shape = tuple(input_shape[level])
      score_shapes[level] = shape[:-1] + (anchors,)
      box_shapes[level] = shape[:-1] + (4 * anchors,)
    return score_shapes, box_shapes

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
        num_anchors_per_location=self.num_anchors_per_location,
        num_convs=self.num_convs, num_filters=self.num_filters,
        use_separable_conv=self.use_separable_conv,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon)
    return config
