"""Convolution + batch norm + activation, the unit every block is made of."""

import keras

from modeling.layers import activations
from modeling.layers.fused_batch_norm import FusedBatchNormalization


def kernel_initializer():
  """He (fan-in) truncated normal, the usual choice for ReLU/swish conv nets.

  Choice: Model Garden's SpineNet uses VarianceScaling(scale=1.0); the papers do
  not say. With batch norm after every conv, training from scratch is insensitive
  to this scale, and He initialisation keeps deep residual stacks well scaled.
  """
  return keras.initializers.VarianceScaling(
      scale=2.0, mode="fan_in", distribution="truncated_normal")


def batch_norm(momentum=0.99, epsilon=1e-3, synchronized=False, name=None):
  """A batch norm layer; `synchronized` averages statistics over replicas.

  Keras' BatchNormalization computed by TensorFlow's fused kernel where that
  is the same function (modeling/layers/fused_batch_norm.py), Keras' own
  computation elsewhere (synchronized statistics included).
  """
  return FusedBatchNormalization(
      momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name)


@keras.saving.register_keras_serializable(package="spinenet")
class ConvBNAct(keras.layers.Layer):
  """Conv2D (no bias) -> BatchNorm -> optional activation.

  Input: [batch, height, width, channels]. Output: [batch, ceil(height /
  strides), ceil(width / strides), filters] ('same' padding, as TF 'SAME').

  Args:
    filters: output channels.
    kernel_size: square kernel side.
    strides: spatial stride.
    activation: activation name, or None for no activation.
    groups: grouped convolution (ResNeXt); `filters` must divide by it.
    use_sync_bn: synchronize batch-norm statistics across replicas.
    norm_momentum, norm_epsilon: batch-norm parameters.
  """

  def __init__(self, filters, kernel_size=1, strides=1, activation="relu",
               groups=1, use_sync_bn=False, norm_momentum=0.99,
               norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.activation = (None if activation is None
                       else activations.check_activation(activation))
    self.groups = groups
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.conv = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", groups=groups,
        use_bias=False, kernel_initializer=kernel_initializer(), name="conv")
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
        filters=self.filters, kernel_size=self.kernel_size,
        strides=self.strides, activation=self.activation, groups=self.groups,
        use_sync_bn=self.use_sync_bn, norm_momentum=self.norm_momentum,
        norm_epsilon=self.norm_epsilon)
    return config
