"""Upsampling resamplers project before upsampling: the same function, moving statistics and gradients.

modeling/layers/resampling.py runs the final 1x1 conv + batch norm of an
upsampling resampler before the nearest upsampling (project_then_upsample).
Each test computes the network's defined order, upsample then project, with
the same layers, and requires the outputs, the batch norm's moving
statistics after a training step, and the gradients of every weight and of
the input to agree to float tolerance.
"""

import numpy as np
import pytest
import tensorflow as tf

from modeling.layers import resampling


def _randomize_batch_norms(layer, rng):
  for weight in layer.weights:
    name = weight.path
    shape = tuple(weight.shape)
    if name.endswith("moving_variance"):
      weight.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
    elif name.endswith("moving_mean") or name.endswith("beta"):
      weight.assign(rng.normal(0.0, 0.5, shape).astype("float32"))
    elif name.endswith("gamma"):
      weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))


def _defined_order(layer, inputs, training):
  """The network as defined: upsample, then project (SpineNet Sec. 3.2)."""
  x = inputs
  if isinstance(layer, resampling.SpineNetResample):
    x = layer.reduce(x, training=training)
  x = resampling.nearest_resize(x, *layer.target_size)
  return layer.project(x, training=training)


def _layers():
  return [
      # Level 5 -> level 3 (factor 4), SpineNet: reduce, up, project.
      resampling.SpineNetResample(5, 3, (16, 16), reduced_filters=6,
                                  target_filters=10, name="spinenet"),
      # Level 4 -> level 3 (factor 2), SpineNet-MBConv / Eff-SpineNet.
      resampling.MBConvResample(4, 3, (16, 16), target_filters=10,
                                name="mbconv"),
  ]


def _inputs(layer):
  size = 16 // 2 ** (layer.input_level - layer.target_level)
  rng = np.random.default_rng(layer.input_level)
  return tf.constant(rng.normal(size=(3, size, size, 12)).astype("float32"))


@pytest.mark.parametrize("index", [0, 1])
def test_inference_outputs_equal_the_defined_order(index):
  layer = _layers()[index]
  x = _inputs(layer)
  layer(x)
  _randomize_batch_norms(layer, np.random.default_rng(1))
  assert resampling.integer_upsampling(
      (None, x.shape[1], x.shape[2], None), layer.target_size)
  ours = layer(x, training=False)
  defined = _defined_order(layer, x, training=False)
  assert ours.shape == (3, 16, 16, 10)
  np.testing.assert_allclose(ours.numpy(), defined.numpy(), atol=1e-5)
  # Not a vacuous comparison: the output depends on the BN's statistics.
  assert float(tf.reduce_max(tf.abs(ours))) > 0.1


@pytest.mark.parametrize("index", [0, 1])
def test_training_step_equals_the_defined_order(index):
  """Outputs, moving statistics and gradients, from identical weights."""
  results = []
  for order in ("ours", "defined"):
    layer = _layers()[index]
    x = _inputs(layer)
    layer(x)
    _randomize_batch_norms(layer, np.random.default_rng(1))
    for weight, value in zip(layer.weights, _reference_weights(index)):
      weight.assign(value)
    with tf.GradientTape() as tape:
      tape.watch(x)
      if order == "ours":
        y = layer(x, training=True)
      else:
        y = _defined_order(layer, x, training=True)
      # Weights varying per pixel: a per-channel constant one would give
      # zero gradients before a training-mode batch norm (rounding noise).
      loss = tf.reduce_sum(y * tf.sin(tf.reshape(
          tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))))
    grads = tape.gradient(loss, [x] + [w.value for w in
                                       layer.trainable_weights])
    moving = [w.numpy() for w in layer.non_trainable_weights]
    results.append((y.numpy(), moving, [g.numpy() for g in grads]))
  (y0, m0, g0), (y1, m1, g1) = results
  np.testing.assert_allclose(y0, y1, atol=1e-4)
  assert len(m0) >= 2  # At least the project BN's mean and variance.
  for a, b in zip(m0, m1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(g0, g1):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  # The project BN saw a batch: its moving mean left the randomized value.
  assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(
      m0, _reference_moving(index)))


_CACHE = {}


def _reference(index):
  if index not in _CACHE:
    layer = _layers()[index]
    x = _inputs(layer)
    layer(x)
    rng = np.random.default_rng(7)
    for w in layer.weights:
      w.assign(rng.normal(0.0, 0.3, tuple(w.shape)).astype("float32"))
    _randomize_batch_norms(layer, np.random.default_rng(1))
    _CACHE[index] = ([w.numpy() for w in layer.weights],
                     [w.numpy() for w in layer.non_trainable_weights])
  return _CACHE[index]


def _reference_weights(index):
  return _reference(index)[0]


def _reference_moving(index):
  return _reference(index)[1]


def test_non_integer_factors_keep_the_defined_order():
  # 7x7 -> 16x16 (e.g. 224 px classification): copies are uneven, so the
  # batch statistics would differ; the layer upsamples first.
  assert not resampling.integer_upsampling((None, 7, 7, 4), (16, 16))
  assert not resampling.integer_upsampling((None, 16, 16, 4), (16, 16))
  assert not resampling.integer_upsampling((None, None, 8, 4), (16, 16))
  layer = resampling.SpineNetResample(4, 3, (16, 16), reduced_filters=4,
                                      target_filters=6)
  x = tf.random.normal((2, 7, 7, 8), seed=3)
  layer(x)
  _randomize_batch_norms(layer, np.random.default_rng(2))
  # Training-mode outputs equal the defined order's exactly (projecting
  # first would normalise with other batch statistics).
  ours = layer(x, training=True)
  defined = _defined_order(layer, x, training=True)
  assert ours.shape == (2, 16, 16, 6)
  np.testing.assert_allclose(ours.numpy(), defined.numpy(), atol=1e-5)
  projected_first = resampling.nearest_resize(layer.project(
      layer.reduce(x, training=True), training=True), 16, 16)
  assert np.abs(projected_first.numpy() - defined.numpy()).max() > 1e-3
