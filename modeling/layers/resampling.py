"""Cross-scale resampling of a parent block's features to a target block.

SpineNet (Du et al. 2020, Sec. 3.2): a 1x1 conv reduces the parent to
alpha * C channels (C: the parent's inner width, i.e. output / 4 for
bottleneck parents), BN and activation; going down, a 3x3 stride-2 conv + BN +
activation, then 3x3 stride-2 max-pooling for every further level; going up,
nearest-neighbour upsampling; finally a 1x1 conv to the target block's input
width and BN without activation.
"""

import keras
import tensorflow as tf

from modeling.layers.conv_bn import ConvBNAct


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
