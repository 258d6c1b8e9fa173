"""MBConv (mobile inverted bottleneck with squeeze-excitation) and depthwise conv-BN.

Sandler et al. 2018 (MobileNetV2), Tan & Le 2019 (MnasNet, EfficientNet), as
used by SpineNet-MBConv (SpineNet appendix A) and Eff-SpineNet.

MBConvBlock maps [batch, H, W, in_filters] to [batch, ceil(H / strides),
ceil(W / strides), filters]:
  1x1 expand conv to in_filters * expand_ratio + BN + act (skipped when
  expand_ratio == 1), depthwise kxk (strided) conv + BN + act,
  squeeze-excitation, 1x1 project conv to `filters` + BN (no activation),
  stochastic depth on that branch and an identity shortcut when strides == 1
  and in_filters == filters.

Choices written down here as the project rule:
- The squeeze-excitation reduced width is max(1, int(in_filters * se_ratio)),
  from the block INPUT width (EfficientNet and Model Garden), not the expanded
  width; both SE convs have biases.
- The squeeze-excitation's functions are options (se_inner_activation,
  se_gating). The default is EfficientNet's form (Tan & Le 2019: Sec. 4
  adds squeeze-excitation to MBConv, Sec. 5.2 trains with swish; that the
  squeeze uses the block activation is its public code's, the paper does not
  say): the block activation (swish) after the reduce conv and a sigmoid
  gate. It stays the default, so existing checkpoints and outputs do not
  change. se_inner_activation="relu" with se_gating="hard_sigmoid" is
  MobileNetV3's form (Howard et al. 2019, Sec. 5.2: the sigmoid replaced by
  the piecewise-linear ReLU6(x + 3) / 6), which Model Garden's
  SpineNet-Mobile uses in every block
  (`tensorflow/models/official/vision/modeling/backbones/spinenet_mobile.py`
  builds InvertedBottleneckBlock(se_gating_activation='hard_sigmoid') and
  keeps its se_inner_activation default 'relu'); its checkpoints import only
  with that form (official/core/model_garden_import.py). The SpineNet paper
  (appendix A) does not say which form its MBConv blocks use.
- No activation after the residual add (inverted residual blocks are linear
  bottlenecks).
"""

import keras
import tensorflow as tf

from modeling.layers import activations
from modeling.layers.conv_bn import ConvBNAct, batch_norm, kernel_initializer
from modeling.layers.regularization import StochasticDepth


def _hard_sigmoid(x):
  # Model Garden's hard_sigmoid
  # (`tensorflow/models/official/modeling/activations/sigmoid.py`) multiplies
  # by the rounded constant 0.16667, not 1 / 6 as MobileNetV3 (Sec. 5.2)
  # writes it; the rounded constant is kept so that an imported
  # SpineNet-Mobile checkpoint computes Model Garden's outputs exactly (the
  # gate then reaches 1.00002 instead of 1).
  return tf.nn.relu6(x + 3.0) * 0.16667


# Squeeze-excitation gates by name (module docstring: where each comes from).
_SE_GATES = {"sigmoid": tf.sigmoid, "hard_sigmoid": _hard_sigmoid}
SE_GATINGS = tuple(_SE_GATES)


def check_se_gating(gating, where):
  """Returns `gating` if it names a gate of _SE_GATES.

  Raises:
    ValueError: naming `where`, the value and the known gates.
  """
  if gating not in _SE_GATES:
    raise ValueError(f"{where}: unknown se_gating {gating!r}; expected one "
                     f"of {list(SE_GATINGS)}.")
  return gating


@keras.saving.register_keras_serializable(package="spinenet")
class DepthwiseConvBNAct(keras.layers.Layer):
  """DepthwiseConv2D (no bias) -> BatchNorm -> optional activation.

  Input: [batch, H, W, C]. Output: [batch, ceil(H / strides),
  ceil(W / strides), C] ('same' padding).

  Args:
    kernel_size: square kernel side.
    strides: spatial stride.
    activation: activation name, or None.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  """

  def __init__(self, kernel_size=3, strides=1, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               **kwargs):
    super().__init__(**kwargs)
    self.kernel_size = kernel_size
    self.strides = strides
    self.activation = (None if activation is None
                       else activations.check_activation(activation))
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.conv = keras.layers.DepthwiseConv2D(
        kernel_size, strides=strides, padding="same", use_bias=False,
        depthwise_initializer=kernel_initializer(), name="depthwise")
    self.bn = batch_norm(norm_momentum, norm_epsilon, use_sync_bn, name="bn")

  def build(self, input_shape):
    self.conv.build(input_shape)
    self.bn.build(self.conv.compute_output_shape(input_shape))

  def call(self, inputs, training=None):
    x = self.bn(self.conv(inputs), training=training)
    if self.activation is not None:
      x = activations.get_activation(self.activation)(x)
    return x

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(
        kernel_size=self.kernel_size, strides=self.strides,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class SqueezeExcitation(keras.layers.Layer):
  """Channel gating: x * gate(W2 act(W1 mean_hw(x) + b1) + b2).

  Input and output: [batch, H, W, C].

  Args:
    reduced_filters: width of the squeeze (W1 output).
    activation: activation of the squeeze (modeling/layers/activations.py
      names).
    gating: "sigmoid" (EfficientNet) or "hard_sigmoid", relu6(x + 3) *
      0.16667 (MobileNetV3 Sec. 5.2, with Model Garden's constant; module
      docstring).

  Raises:
    ValueError: reduced_filters < 1, or an unknown activation or gating.
  """

  def __init__(self, reduced_filters, activation="relu", gating="sigmoid",
               **kwargs):
    super().__init__(**kwargs)
    if reduced_filters < 1:
      raise ValueError(f"{self.name}: reduced_filters must be >= 1, got "
                       f"{reduced_filters}.")
    self.reduced_filters = int(reduced_filters)
    self.activation = activations.check_activation(activation)
    self.gating = check_se_gating(gating, self.name)
    self.reduce = keras.layers.Conv2D(
        self.reduced_filters, 1, kernel_initializer=kernel_initializer(),
        name="reduce")
    self.expand = None

  def build(self, input_shape):
    channels = input_shape[-1]
    self.expand = keras.layers.Conv2D(
        channels, 1, kernel_initializer=kernel_initializer(), name="expand")
    self.reduce.build((None, 1, 1, channels))
    self.expand.build((None, 1, 1, self.reduced_filters))

  def call(self, inputs):
    x = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
    x = activations.get_activation(self.activation)(self.reduce(x))
    return inputs * _SE_GATES[self.gating](self.expand(x))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(reduced_filters=self.reduced_filters,
                  activation=self.activation, gating=self.gating)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class MBConvBlock(keras.layers.Layer):
  """Mobile inverted bottleneck with squeeze-excitation (see module doc).

  Args:
    in_filters: input channels (fixes the expand and SE widths).
    filters: output channels.
    strides: stride of the depthwise conv.
    expand_ratio: expanded width = in_filters * expand_ratio.
    kernel_size: depthwise kernel side.
    se_ratio: SE reduced width = max(1, int(in_filters * se_ratio)); None or
      0 turns SE off.
    stochastic_depth_rate: drop rate of the branch (only with the shortcut).
    activation: "relu", "swish" or "hard_swish".
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
    se_inner_activation: activation after the SE reduce conv; None (default)
      takes `activation` (EfficientNet); "relu" for Model Garden's
      SpineNet-Mobile (module docstring).
    se_gating: SE gate, "sigmoid" (default, EfficientNet) or "hard_sigmoid"
      (MobileNetV3 Sec. 5.2; Model Garden's SpineNet-Mobile).

  Raises:
    ValueError: a width, ratio, kernel or stride out of range, or an unknown
      activation or se_gating (naming the layer and the value).
  """

  def __init__(self, in_filters, filters, strides=1, expand_ratio=6,
               kernel_size=3, se_ratio=0.2, stochastic_depth_rate=None,
               activation="swish", use_sync_bn=False, norm_momentum=0.99,
               norm_epsilon=1e-3, se_inner_activation=None,
               se_gating="sigmoid", **kwargs):
    super().__init__(**kwargs)
    for name, value in (("in_filters", in_filters), ("filters", filters),
                        ("expand_ratio", expand_ratio),
                        ("kernel_size", kernel_size), ("strides", strides)):
      if int(value) != value or value < 1:
        raise ValueError(f"{self.name}: {name} must be an integer >= 1, got "
                         f"{value!r}.")
    if se_ratio is not None and not 0.0 <= se_ratio <= 1.0:
      raise ValueError(f"{self.name}: se_ratio must be in [0, 1], got "
                       f"{se_ratio!r}.")
    self.in_filters = int(in_filters)
    self.filters = int(filters)
    self.strides = int(strides)
    self.expand_ratio = int(expand_ratio)
    self.kernel_size = int(kernel_size)
    self.se_ratio = se_ratio
    self.stochastic_depth_rate = stochastic_depth_rate
    self.activation = activations.check_activation(activation)
    self.se_inner_activation = (
        None if se_inner_activation is None
        else activations.check_activation(se_inner_activation))
    # Checked even when SE is off, so a misspelt binding fails everywhere.
    self.se_gating = check_se_gating(se_gating, self.name)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)
    self.expanded_filters = self.in_filters * self.expand_ratio
    self.expand = (ConvBNAct(self.expanded_filters, 1, 1, activation,
                             name="expand", **bn)
                   if self.expand_ratio != 1 else None)
    self.depthwise = DepthwiseConvBNAct(self.kernel_size, self.strides,
                                        activation, name="depthwise", **bn)
    self.se = (SqueezeExcitation(
        max(1, int(self.in_filters * se_ratio)),
        activation if se_inner_activation is None else se_inner_activation,
        se_gating, name="se") if se_ratio else None)
    self.project = ConvBNAct(self.filters, 1, 1, None, name="project", **bn)
    self.use_residual = self.strides == 1 and self.in_filters == self.filters
    self.stochastic_depth = (
        StochasticDepth(stochastic_depth_rate, name="stochastic_depth")
        if stochastic_depth_rate and self.use_residual else None)

  def build(self, input_shape):
    if input_shape[-1] != self.in_filters:
      raise ValueError(f"{self.name}: input has {input_shape[-1]} channels, "
                       f"in_filters is {self.in_filters}.")
    shape = tuple(input_shape)
    if self.expand is not None:
      self.expand.build(shape)
      shape = self.expand.compute_output_shape(shape)
    self.depthwise.build(shape)
    shape = self.depthwise.compute_output_shape(shape)
    if self.se is not None:
      self.se.build(shape)
    self.project.build(shape)

  def call(self, inputs, training=None):
    x = inputs
    if self.expand is not None:
      x = self.expand(x, training=training)
    x = self.depthwise(x, training=training)
    if self.se is not None:
      x = self.se(x)
    x = self.project(x, training=training)
    if self.use_residual:
      if self.stochastic_depth is not None:
        x = self.stochastic_depth(x, training=training)
      x = x + inputs
    return x

  def compute_output_shape(self, input_shape):
    shape = self.depthwise.compute_output_shape(
        tuple(input_shape[:-1]) + (self.expanded_filters,))
    return tuple(shape[:-1]) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update(
        in_filters=self.in_filters, filters=self.filters,
        strides=self.strides, expand_ratio=self.expand_ratio,
        kernel_size=self.kernel_size, se_ratio=self.se_ratio,
        stochastic_depth_rate=self.stochastic_depth_rate,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon,
        se_inner_activation=self.se_inner_activation,
        se_gating=self.se_gating)
    return config
