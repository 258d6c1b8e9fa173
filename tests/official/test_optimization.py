"""Optimizer construction and which variables weight decay touches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.layers import fusion
from official.core import optimization

# build_optimizer / learning_rate_schedule are gin-configurable.
pytestmark = pytest.mark.usefixtures("no_gin_bindings")


def _model():
  """Conv2D, SeparableConv2D, DepthwiseConv2D, BN, weighted fusion, Dense."""
  inputs = keras.Input((8, 8, 3))
  a = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
  b = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep")(inputs)
  x = fusion.BlockFusion(mode="weighted", name="fuse")([a, b])
  x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(2, name="dense")(x)
  return keras.Model(inputs, outputs)


def test_weight_decay_applies_to_kernels_only():
  model = _model()
  decayed = {v.path for v in optimization.decayed_variables(model.variables)}
  assert decayed == {"conv/kernel", "sep/depthwise_kernel",
                     "sep/pointwise_kernel", "dw/kernel", "dense/kernel"}
  everything = {v.path for v in model.variables}
  # Never BN gamma/beta/moving statistics, biases or fusion weights.
  assert {"bn/gamma", "bn/beta", "bn/moving_mean", "conv/bias",
          "dense/bias", "fuse/fusion_weights"} <= everything - decayed


def test_weight_decay_value_is_half_wd_times_sum_of_squares():
  model = _model()
  wd = 4e-5
  expected = wd / 2 * sum(
      float(np.sum(np.square(v.numpy())))
      for v in optimization.decayed_variables(model.trainable_variables))
  got = float(optimization.weight_decay_loss(model.trainable_variables, wd))
  assert got == pytest.approx(expected, rel=1e-5)
  assert float(optimization.weight_decay_loss(model.variables, 0.0)) == 0.0


def test_decay_gradient_is_wd_times_weight():
  model = _model()
  kernel = model.get_layer("dense").kernel
  with tf.GradientTape() as tape:
    loss = optimization.weight_decay_loss(model.trainable_variables, 0.1)
  grad = tape.gradient(loss, kernel)
  np.testing.assert_allclose(grad.numpy(), 0.1 * kernel.numpy(), rtol=1e-6)


def test_plain_tf_variable_names_are_recognised():
  v = tf.Variable(tf.ones((2, 2)), name="block/conv/kernel")
  b = tf.Variable(tf.ones((2,)), name="block/conv/bias")
  assert optimization.decayed_variables([v, b]) == [v]


def test_build_optimizer_is_sgd_with_global_clipnorm():
  optimizer = optimization.build_optimizer(0.1, momentum=0.8, nesterov=True,
                                           clipnorm=2.0)
  assert isinstance(optimizer, keras.optimizers.SGD)
  assert optimizer.momentum == 0.8 and optimizer.nesterov
  assert optimizer.global_clipnorm == 2.0 and optimizer.clipnorm is None
  # One device: the global norm of [3, 4] (5) is clipped to 2.
  v = keras.Variable(np.zeros(2, np.float32))
  plain = optimization.build_optimizer(1.0, momentum=0.0, clipnorm=2.0)
  plain.apply_gradients([(tf.constant([3.0, 4.0]), v)])
  np.testing.assert_allclose(v.numpy(), [-1.2, -1.6], rtol=1e-6)
