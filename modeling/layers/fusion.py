"""Fusion of the resampled parents of a block."""

import keras
import tensorflow as tf

from modeling.layers import activations

FUSION_MODES = ("sum", "weighted")


@keras.saving.register_keras_serializable(package="spinenet")
class BlockFusion(keras.layers.Layer):
  """Merges N same-shape feature maps [batch, H, W, C] into one, then activates.

  Modes:
    sum: x = sum_i B_i (SpineNet).
    weighted: fast normalized fusion (Eff-SpineNet eq. 1, after EfficientDet):
      x = sum_i w_i * B_i / (sum_j w_j + epsilon), with w_i = relu(v_i) so the
      weights stay non-negative, v_i initialised to 1. The weights are float32
      under any mixed-precision policy and are named `fusion_weights`, which
      the trainer excludes from weight decay.

  Args:
    mode: "sum" or "weighted".
    epsilon: stabiliser of the normalisation (paper: 1e-3; EfficientDet: 1e-4).
    activation: applied after fusion, or None.
  """

  def __init__(self, mode="sum", epsilon=1e-3, activation=None, **kwargs):
    super().__init__(**kwargs)
    if mode not in FUSION_MODES:
      raise ValueError(f"Unknown fusion mode {mode!r}; expected one of "
                       f"{FUSION_MODES}.")
    self.mode = mode
    self.epsilon = epsilon
    self.activation = (None if activation is None
                       else activations.check_activation(activation))

  def build(self, input_shape):
    shapes = [tuple(s) for s in input_shape]
    if len({s[1:] for s in shapes}) != 1:
      raise ValueError(f"{self.name}: inputs must share one shape, got {shapes}")
    if self.mode == "weighted":
      self.fusion_weights = self.add_weight(
          name="fusion_weights", shape=(len(shapes),), initializer="ones",
          dtype="float32", autocast=False, trainable=True)

  def normalized_weights(self):
    """[num_inputs] float32 weights that are >= 0 and sum to just under 1."""
    weights = tf.nn.relu(tf.convert_to_tensor(self.fusion_weights))
    return weights / (tf.reduce_sum(weights) + self.epsilon)

  def call(self, inputs):
    if self.mode == "sum":
      x = tf.add_n(list(inputs))
    else:
      weights = tf.cast(self.normalized_weights(), inputs[0].dtype)
      x = tf.add_n([weights[i] * inputs[i] for i in range(len(inputs))])
    if self.activation is not None:
      x = activations.get_activation(self.activation)(x)
    return x

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[0])

  def get_config(self):
    config = super().get_config()
    config.update(mode=self.mode, epsilon=self.epsilon,
                  activation=self.activation)
    return config
