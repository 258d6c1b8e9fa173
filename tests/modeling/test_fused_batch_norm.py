"""FusedBatchNormalization computes Keras' BatchNormalization (issue: speed).

The fused layer (modeling/layers/fused_batch_norm.py) must give the same
outputs, gradients and moving statistics as keras.layers.BatchNormalization
in training and inference mode, under float32 and both mixed-precision
policies, restore the Keras layer's checkpoints, and fall back to Keras'
computation where the fused kernel would compute something else.
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

from modeling.layers import conv_bn
from modeling.layers import fused_batch_norm
from modeling.layers.fused_batch_norm import FusedBatchNormalization

# Tolerances per compute dtype: float32 agrees to rounding; half-precision
# outputs are rounded once to 8 (bfloat16) or 11 (float16) mantissa bits.
TOLERANCE = {"float32": 1e-5, "mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}


def _pair(policy, **kwargs):
  """A Keras and a fused layer with the same (non-trivial) weights."""
  keras.config.set_dtype_policy(policy)
  try:
    ref = keras.layers.BatchNormalization(**kwargs)
    fused = FusedBatchNormalization(**kwargs)
    for layer in (ref, fused):
      layer.build((None, 5, 6, 3))
    rng = np.random.default_rng(0)
    values = [rng.uniform(0.5, 2.0, 3), rng.normal(size=3),
              rng.normal(size=3), rng.uniform(0.5, 2.0, 3)]
    for layer in (ref, fused):
      layer.set_weights([v.astype("float32") for v in values])
  finally:
    keras.config.set_dtype_policy("float32")
  return ref, fused


def _inputs(dtype):
  x = tf.random.stateless_normal([4, 5, 6, 3], [1, 2]) * 3.0 + 1.5
  return tf.cast(x, dtype)


@pytest.mark.parametrize("policy", sorted(TOLERANCE))
@pytest.mark.parametrize("training", [True, False])
def test_outputs_gradients_and_moving_statistics_equal_keras(policy, training):
  ref, fused = _pair(policy, momentum=0.9, epsilon=1e-3)
  initial_mean = fused.moving_mean.numpy()
  x = _inputs(ref.compute_dtype)
  # The fused kernel computes this case (else the comparison is Keras' own
  # call against itself).
  assert fused._fused(x, None, True)  # pylint: disable=protected-access
  upstream = tf.random.stateless_normal([4, 5, 6, 3], [3, 4])
  results = []
  for layer in (ref, fused):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=training)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    results.append((y, grads, layer.moving_mean.numpy(),
                    layer.moving_variance.numpy()))
  tol = TOLERANCE[policy]
  (y_ref, g_ref, mean_ref, var_ref), (y, g, mean, var) = results
  assert y.dtype == y_ref.dtype
  np.testing.assert_allclose(np.float32(y), np.float32(y_ref), atol=tol * 10,
                             rtol=tol)
  for a, b, name in zip(g, g_ref, ("input", "gamma", "beta")):
    scale = float(np.max(np.abs(np.float32(b))))
    np.testing.assert_allclose(np.float32(a), np.float32(b),
                               atol=tol * 10 * scale, err_msg=name)
  # Moving statistics: moved towards the batch's biased moments in
  # training, untouched in inference.
  np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol)
  np.testing.assert_allclose(var, var_ref, rtol=tol, atol=tol)
  assert np.allclose(mean, initial_mean) != training


def test_batch_of_one_value_per_channel_has_zero_variance():
  ref, fused = _pair("float32", momentum=0.5)
  x = tf.random.stateless_normal([1, 1, 1, 3], [5, 6])
  before = fused.moving_variance.numpy()
  ref(x, training=True)
  y = fused(x, training=True)
  assert np.all(np.isfinite(y.numpy()))
  np.testing.assert_allclose(fused.moving_variance.numpy(), before * 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(fused.moving_variance.numpy(),
                             ref.moving_variance.numpy(), rtol=1e-6)


def test_restores_a_keras_batch_norm_checkpoint(tmp_path):
  ref, _ = _pair("float32")
  path = tf.train.Checkpoint(layer=ref).write(str(tmp_path / "ckpt"))
  fused = FusedBatchNormalization()
  fused.build((None, 5, 6, 3))
  tf.train.Checkpoint(layer=fused).read(path).assert_consumed()
  x = _inputs("float32")
  np.testing.assert_allclose(fused(x, training=False), ref(x, training=False),
                             atol=1e-5)
  assert [w.path.split("/")[-1] for w in fused.weights] == [
      w.path.split("/")[-1] for w in ref.weights]


@pytest.mark.parametrize("kwargs,shape", [
    (dict(synchronized=True), (4, 5, 6, 3)),   # replica-averaged moments
    (dict(epsilon=1e-6), (4, 5, 6, 3)),        # below cuDNN's minimum
    (dict(), (8, 3)),                          # dense features
])
def test_falls_back_to_keras_where_the_kernel_differs(kwargs, shape,
                                                      monkeypatch):
  # Synchronized statistics differ from the kernel's with several replicas.
  monkeypatch.setattr(fused_batch_norm, "replicas_in_sync", lambda: 2)
  ref = keras.layers.BatchNormalization(**kwargs)
  fused = FusedBatchNormalization(**kwargs)
  x = tf.random.stateless_normal(shape, [7, 8]) * 2.0
  np.testing.assert_allclose(fused(x, training=True), ref(x, training=True),
                             atol=1e-6)
  np.testing.assert_allclose(fused.moving_variance.numpy(),
                             ref.moving_variance.numpy(), rtol=1e-6)
  if len(shape) == 4:
    assert not fused._fused(x, None, True)  # pylint: disable=protected-access


def test_synchronized_training_on_one_replica_runs_the_kernel():
  # One replica in sync (no strategy, or one device): the replica average
  # is the local batch's, the kernel's function.
  assert fused_batch_norm.replicas_in_sync() == 1
  ref = keras.layers.BatchNormalization(synchronized=True)
  fused = FusedBatchNormalization(synchronized=True)
  x = tf.random.stateless_normal((4, 5, 6, 3), [7, 8]) * 2.0 + 1.0
  assert fused._fused(x, None, True)  # pylint: disable=protected-access
  np.testing.assert_allclose(fused(x, training=True), ref(x, training=True),
                             atol=1e-5)
  for a, b in ((fused.moving_mean, ref.moving_mean),
               (fused.moving_variance, ref.moving_variance)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def test_synchronized_inference_runs_the_kernel():
  # With the moving statistics synchronization changes nothing: the kernel
  # runs (and an export folds it), with Keras' outputs.
  ref = keras.layers.BatchNormalization(synchronized=True)
  fused = FusedBatchNormalization(synchronized=True)
  x = tf.random.stateless_normal((4, 5, 6, 3), [7, 8]) * 2.0
  ref(x, training=True)
  fused(x, training=True)
  assert fused._fused(x, None, False)  # pylint: disable=protected-access
  np.testing.assert_allclose(fused(x, training=False), ref(x, training=False),
                             atol=1e-5)
  graph = tf.function(lambda t: fused(t, training=False)).get_concrete_function(
      tf.TensorSpec(x.shape)).graph
  assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}


def test_the_project_factory_builds_the_fused_layer():
  layer = conv_bn.batch_norm(momentum=0.9, epsilon=1e-3)
  assert isinstance(layer, FusedBatchNormalization)
  config = layer.get_config()
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(clone) is FusedBatchNormalization
  assert clone.get_config() == config
