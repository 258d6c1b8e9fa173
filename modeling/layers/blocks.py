"""Residual, bottleneck and ResNeXt blocks (He et al. 2016; Xie et al. 2017).

Each block maps [batch, H, W, C_in] to [batch, ceil(H / strides),
ceil(W / strides), output_filters]: `filters` for ResidualBlock and
4 * `filters` for BottleneckBlock and ResNeXtBlock. DropBlock, when enabled,
follows every batch norm of the block; stochastic depth drops the residual branch.

Shortcut: a 1x1 conv + batch norm with the block's stride when
use_projection, else the identity; a strided block without projection
subsamples its input (x[:, ::s, ::s], what a 1x1 stride-s identity conv with
'same' padding computes) and has no shortcut weights. A block's variables
then never depend on its stride, which SP-NAS's swap relies on (SP-NAS
Sec. 3.1; modeling/backbones/spnet.py).

zero_init_residual starts the last batch norm of the residual branch at
scale 0 (Goyal et al. 2017, "Accurate, Large Minibatch SGD", experimental
settings), so a new block without projection starts as the identity (SP-NAS
Sec. 3.1, "expand").
"""

import keras

from modeling.layers import activations
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.regularization import DropBlock, StochasticDepth
from modeling.layers.tracking import tracked_list


class _ResidualBase(keras.layers.Layer):
  """Shared arguments and the shortcut/branch/add logic of residual blocks."""

  expansion = 1

  def __init__(self, filters, strides=1, use_projection=False,
               stochastic_depth_rate=None, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               dropblock_keep_prob=None, dropblock_size=3,
               zero_init_residual=False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.strides = strides
    self.use_projection = use_projection
    self.stochastic_depth_rate = stochastic_depth_rate
    self.activation = activations.check_activation(activation)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.dropblock_keep_prob = dropblock_keep_prob
    self.dropblock_size = dropblock_size
    self.zero_init_residual = zero_init_residual
    if use_projection:
      self.shortcut = self._conv(self.output_filters, 1, strides, None, "shortcut")
      self.shortcut_dropblock = self._dropblock("shortcut_dropblock")
    self.branch = tracked_list(self, "branch", self._make_branch())
    if zero_init_residual:
      # Set before the batch norm is built, so its gamma is created as zeros
      # (ConvBNAct builds its batch norm in its own build()).
      self.branch[-1].bn.gamma_initializer = keras.initializers.Zeros()
    self.branch_dropblocks = tracked_list(
        self, "branch_dropblock",
        [self._dropblock(f"dropblock_{i}") for i in range(len(self.branch))])
    self.stochastic_depth = (
        StochasticDepth(stochastic_depth_rate, name="stochastic_depth")
        if stochastic_depth_rate else None)

  @property
  def output_filters(self):
    return self.filters * self.expansion

  def _conv(self, filters, kernel_size, strides, activation, name, groups=1):
    return ConvBNAct(filters, kernel_size, strides, activation, groups=groups,
                     use_sync_bn=self.use_sync_bn,
                     norm_momentum=self.norm_momentum,
                     norm_epsilon=self.norm_epsilon, name=name)

  def _dropblock(self, name):
    return DropBlock(self.dropblock_keep_prob, self.dropblock_size, name=name)

  def _make_branch(self):
    raise NotImplementedError

  def build(self, input_shape):
    if not self.use_projection and input_shape[-1] != self.output_filters:
      raise ValueError(
          f"{self.name}: input has {input_shape[-1]} channels but the block "
          f"outputs {self.output_filters}; set use_projection=True.")
    shape = input_shape
    for layer in self.branch:
      layer.build(shape)
      shape = layer.compute_output_shape(shape)
    if self.use_projection:
      self.shortcut.build(input_shape)

  def call(self, inputs, training=None):
    shortcut = inputs
    if self.use_projection:
      shortcut = self.shortcut(inputs, training=training)
      shortcut = self.shortcut_dropblock(shortcut, training=training)
    elif self.strides > 1:
      shortcut = inputs[:, ::self.strides, ::self.strides, :]
    x = inputs
    for layer, dropblock in zip(self.branch, self.branch_dropblocks):
      x = dropblock(layer(x, training=training), training=training)
    if self.stochastic_depth is not None:
      x = self.stochastic_depth(x, training=training)
    return activations.get_activation(self.activation)(x + shortcut)

  def compute_output_shape(self, input_shape):
    shape = input_shape
    for layer in self.branch:
      shape = layer.compute_output_shape(shape)
    return shape

  def get_config(self):
    config = super().get_config()
    config.update(
        filters=self.filters, strides=self.strides,
        use_projection=self.use_projection,
        stochastic_depth_rate=self.stochastic_depth_rate,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon,
        dropblock_keep_prob=self.dropblock_keep_prob,
        dropblock_size=self.dropblock_size,
        zero_init_residual=self.zero_init_residual)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class ResidualBlock(_ResidualBase):
  """Two 3x3 convolutions; output width = filters."""

  expansion = 1

  def _make_branch(self):
    return [self._conv(self.filters, 3, self.strides, self.activation, "conv_1"),
            self._conv(self.filters, 3, 1, None, "conv_2")]


@keras.saving.register_keras_serializable(package="spinenet")
class BottleneckBlock(_ResidualBase):
  """1x1 -> 3x3 (strided) -> 1x1 expansion; output width = 4 * filters."""

  expansion = 4

  def _make_branch(self):
    return [self._conv(self.filters, 1, 1, self.activation, "conv_1"),
            self._conv(self.filters, 3, self.strides, self.activation, "conv_2"),
            self._conv(self.output_filters, 1, 1, None, "conv_3")]


@keras.saving.register_keras_serializable(package="spinenet")
class ResNeXtBlock(_ResidualBase):
  """ResNeXt bottleneck with a grouped 3x3 conv; output width = 4 * filters.

  The grouped width is cardinality * base_width * filters / 64, so at
  filters=64 ResNeXt 32x4d has 128 inner channels and 32x8d has 256.

  Args:
    cardinality: number of groups (32 in the paper's 32x4d / 32x8d).
    base_width: channels per group at filters=64 (4 or 8).
  """

  expansion = 4

  def __init__(self, filters, cardinality=32, base_width=4, **kwargs):
    self.cardinality = cardinality
    self.base_width = base_width
    super().__init__(filters, **kwargs)

  @property
  def inner_filters(self):
    return self.cardinality * max(1, self.base_width * self.filters // 64)

  def _make_branch(self):
    return [
        self._conv(self.inner_filters, 1, 1, self.activation, "conv_1"),
        self._conv(self.inner_filters, 3, self.strides, self.activation,
                   "conv_2", groups=self.cardinality),
        self._conv(self.output_filters, 1, 1, None, "conv_3")]

  def get_config(self):
    config = super().get_config()
    config.update(cardinality=self.cardinality, base_width=self.base_width)
    return config


BLOCKS = {
    "residual": ResidualBlock,
    "bottleneck": BottleneckBlock,
    "resnext": ResNeXtBlock,
}

# Output width of a block as a multiple of its `filters` argument.
BLOCK_EXPANSION = {name: cls.expansion for name, cls in BLOCKS.items()}
