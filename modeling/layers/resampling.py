"""Cross-scale resampling of a parent block's features to a target block.

SpineNet (Du et al. 2020, Sec. 3.2): a 1x1 conv reduces the parent to
alpha * C channels (C: the parent's inner width, i.e. output / 4 for
bottleneck parents), BN and activation; going down, a 3x3 stride-2 conv + BN +
activation, then 3x3 stride-2 max-pooling for every further level; going up,
nearest-neighbour upsampling; finally a 1x1 conv to the target block's input
width and BN without activation.

Going up by an integer factor, the final 1x1 conv + BN runs before the
upsampling rather than after it (project_then_upsample): the same function,
at 1 / factor^2 of that conv's multiply-adds.
"""

import keras
import tensorflow as tf

from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.mbconv import DepthwiseConvBNAct
from modeling.layers.tracking import tracked_list


def level_size(image_size, level):
  """Spatial side of a level-`level` feature map with 'same' padding: ceil(size / 2^level)."""
  return -(-int(image_size) // (2 ** level))


def nearest_resize(inputs, target_height, target_width):
  """Nearest-neighbour upsampling of [batch, h, w, c] to the target size.

  Integer factors use repeat (exact, cheap, XLA friendly); other factors (a
  size not divisible by 2^level, e.g. 224 px classification) use
  tf.image.resize with the nearest method.
  """
  height, width = inputs.shape[1], inputs.shape[2]
  if (height, width) == (target_height, target_width):
    return inputs
  if target_height % height == 0 and target_width % width == 0:
    x = tf.repeat(inputs, target_height // height, axis=1)
    return tf.repeat(x, target_width // width, axis=2)
  resized = tf.image.resize(inputs, [target_height, target_width],
                            method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
  return tf.cast(resized, inputs.dtype)


def integer_upsampling(input_shape, target_size):
  """Whether [b, h, w, c] -> target_size is nearest upsampling by integer factors."""
  height, width = input_shape[1], input_shape[2]
  if height is None or width is None:
    return False
  return ((height, width) != tuple(target_size) and
          target_size[0] % height == 0 and target_size[1] % width == 0)


def project_then_upsample(project, inputs, target_size, training=None):
  """project(nearest_resize(inputs)) computed as nearest_resize(project(inputs)).

  `project` is a 1x1 conv + batch norm (ConvBNAct, no activation). Nearest
  upsampling by integer factors copies every input pixel exactly
  factor_h * factor_w times, so the per-pixel 1x1 conv and the per-channel
  batch norm commute with it: at inference the batch norm is an affine map
  per channel, and in training its batch mean and (biased) variance over the
  copies equal those over the originals, so outputs, moving statistics and
  gradients are the network's, to float rounding
  (tests/modeling/test_resampling_order.py). The conv then costs 1 /
  (factor_h * factor_w) of its multiply-adds. Model Garden and the papers'
  FLOPs counts project after upsampling (SpineNet Sec. 3.2 orders the steps
  that way; the order does not change the function).

  Args:
    project: callable(x, training) -> [b, h, w, c_out], per pixel.
    inputs: [b, h, w, c_in] with static h, w dividing target_size.
    target_size: (height, width) of the output.
    training: passed to `project`.
  Returns:
    [b, target_height, target_width, c_out].
  """
  return nearest_resize(project(inputs, training=training), *target_size)


@keras.saving.register_keras_serializable(package="spinenet")
class NearestUpsampling(keras.layers.Layer):
  """Nearest-neighbour upsampling to a fixed (height, width)."""

  def __init__(self, target_size, **kwargs):
    super().__init__(**kwargs)
    self.target_size = tuple(int(s) for s in target_size)

  def call(self, inputs):
    return nearest_resize(inputs, *self.target_size)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],) + self.target_size + (input_shape[-1],)

  def get_config(self):
    config = super().get_config()
    config.update(target_size=self.target_size)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class SpineNetResample(keras.layers.Layer):
  """Resamples [batch, H_in, W_in, C_in] to [batch, H_t, W_t, target_filters].

  Args:
    input_level: level of the parent (feature stride 2^input_level).
    target_level: level of the target block.
    target_size: (height, width) of the target block's feature map.
    reduced_filters: width after the first 1x1 conv (int(alpha * parent inner width)).
    target_filters: output width (the target block's input width).
    activation, use_sync_bn, norm_momentum, norm_epsilon: as ConvBNAct.
  """

  def __init__(self, input_level, target_level, target_size, reduced_filters,
               target_filters, activation="relu", use_sync_bn=False,
               norm_momentum=0.99, norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    if reduced_filters < 1:
      raise ValueError(f"{self.name}: reduced_filters must be >= 1, got "
                       f"{reduced_filters} (resample alpha too small?)")
    self.input_level = input_level
    self.target_level = target_level
    self.target_size = tuple(int(s) for s in target_size)
    self.reduced_filters = reduced_filters
    self.target_filters = target_filters
    self.activation = activation
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    bn_args = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
                   norm_epsilon=norm_epsilon)
    self.reduce = ConvBNAct(reduced_filters, 1, 1, activation, name="reduce",
                            **bn_args)
    self.downsample = None
    if target_level > input_level:
      self.downsample = ConvBNAct(reduced_filters, 3, 2, activation,
                                  name="downsample", **bn_args)
    self.num_max_pools = max(0, target_level - input_level - 1)
    self.project = ConvBNAct(target_filters, 1, 1, None, name="project",
                             **bn_args)

  def build(self, input_shape):
    self.reduce.build(input_shape)
    shape = self.reduce.compute_output_shape(input_shape)
    if self.downsample is not None:
      self.downsample.build(shape)
    self.project.build((input_shape[0],) + self.target_size +
                       (self.reduced_filters,))

  def call(self, inputs, training=None):
    x = self.reduce(inputs, training=training)
    if self.downsample is not None:
      x = self.downsample(x, training=training)
      for _ in range(self.num_max_pools):
        x = tf.nn.max_pool2d(x, ksize=3, strides=2, padding="SAME")
    elif self.target_level < self.input_level:
      if integer_upsampling(x.shape, self.target_size):
        return project_then_upsample(self.project, x, self.target_size,
                                     training)
      x = nearest_resize(x, *self.target_size)
    return self.project(x, training=training)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],) + self.target_size + (self.target_filters,)

  def get_config(self):
    config = super().get_config()
    config.update(
        input_level=self.input_level, target_level=self.target_level,
        target_size=self.target_size, reduced_filters=self.reduced_filters,
        target_filters=self.target_filters, activation=self.activation,
        use_sync_bn=self.use_sync_bn, norm_momentum=self.norm_momentum,
        norm_epsilon=self.norm_epsilon)
    return config


DOWNSAMPLE_MODES = ("strided_conv", "space_to_depth")


@keras.saving.register_keras_serializable(package="spinenet")
class MBConvResample(keras.layers.Layer):
  """Resampling for MBConv scale-permuted backbones (no alpha, no first 1x1 conv).

  Maps [batch, H_in, W_in, C_in] to [batch, H_t, W_t, target_filters]:
  - up (target level lower): nearest-neighbour upsampling;
  - down by d levels, downsample_mode "strided_conv" (SpineNet-MBConv,
    SpineNet appendix A; Model Garden's spinenet_mbconv does the same):
    d x (depthwise 3x3 stride-2 conv + BN + activation) on C_in channels;
  - down by d levels, downsample_mode "space_to_depth" (Eff-SpineNet §3.2,
    "space-to-depth followed by stride-2 convolutions"): a 2x2
    space-to-depth (C_in -> 4 C_in channels, one level down), then
    (d - 1) x (depthwise 3x3 stride-2 conv + BN + activation) on the
    4 C_in channels. No published code exists; this reading keeps every
    input pixel for the first halving (nothing is skipped by a stride) and
    gives the paper's Table 9 deltas in direction and size (space-to-depth
    adds a little: the final 1x1 conv sees 4x the channels);
  - finally a 1x1 conv to target_filters + BN, no activation (the fusion
    activates after summing).

  Args:
    input_level, target_level: levels of the parent and of the target block.
    target_size: (height, width) of the target feature map.
    target_filters: output width (the target block's input width).
    downsample_mode: "strided_conv" or "space_to_depth".
    activation, use_sync_bn, norm_momentum, norm_epsilon: as ConvBNAct.
  """

  def __init__(self, input_level, target_level, target_size, target_filters,
               downsample_mode="strided_conv", activation="swish",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               **kwargs):
    super().__init__(**kwargs)
    if downsample_mode not in DOWNSAMPLE_MODES:
      raise ValueError(f"{self.name}: unknown downsample_mode "
                       f"{downsample_mode!r}; expected one of "
                       f"{DOWNSAMPLE_MODES}.")
    self.input_level = int(input_level)
    self.target_level = int(target_level)
    self.target_size = tuple(int(s) for s in target_size)
    self.target_filters = int(target_filters)
    self.downsample_mode = downsample_mode
    self.activation = activation
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)
    levels_down = max(0, self.target_level - self.input_level)
    self.space_to_depth = levels_down > 0 and downsample_mode == "space_to_depth"
    num_convs = levels_down - 1 if self.space_to_depth else levels_down
    self.downsample = tracked_list(self, "downsample", [
        DepthwiseConvBNAct(3, 2, activation, name=f"downsample_{i}", **bn)
        for i in range(num_convs)])
    self.project = ConvBNAct(self.target_filters, 1, 1, None, name="project",
                             **bn)

  def build(self, input_shape):
    shape = tuple(input_shape)
    if self.space_to_depth:
      shape = (shape[0], None, None, 4 * shape[-1])
    for layer in self.downsample:
      layer.build(shape)
    self.project.build(shape[:1] + self.target_size + shape[-1:])

  def call(self, inputs, training=None):
    x = inputs
    if self.space_to_depth:
      x = _space_to_depth(x)
    for layer in self.downsample:
      x = layer(x, training=training)
    if self.target_level < self.input_level:
      if integer_upsampling(x.shape, self.target_size):
        return project_then_upsample(self.project, x, self.target_size,
                                     training)
      x = nearest_resize(x, *self.target_size)
    return self.project(x, training=training)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],) + self.target_size + (self.target_filters,)

  def get_config(self):
    config = super().get_config()
    config.update(
        input_level=self.input_level, target_level=self.target_level,
        target_size=self.target_size, target_filters=self.target_filters,
        downsample_mode=self.downsample_mode, activation=self.activation,
        use_sync_bn=self.use_sync_bn, norm_momentum=self.norm_momentum,
        norm_epsilon=self.norm_epsilon)
    return config


def _space_to_depth(x):
  """2x2 space-to-depth of [batch, h, w, c] -> [batch, ceil(h/2), ceil(w/2), 4c].

  Odd sides are zero-padded at the bottom/right first, matching the
  ceil(size / 2) level sizes of 'same' strided convs.
  """
  height, width = x.shape[1], x.shape[2]
  pad_h = (height or 0) % 2
  pad_w = (width or 0) % 2
  if pad_h or pad_w:
    x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
  return tf.nn.space_to_depth(x, 2)
