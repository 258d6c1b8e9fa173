"""One harness for every Keras layer: shape, config round trip, bfloat16, saving."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf


def _random_inputs(input_shapes, seed=0):
  rng = np.random.default_rng(seed)
  if isinstance(input_shapes, list):
    return [rng.normal(size=s).astype("float32") for s in input_shapes]
  if isinstance(input_shapes, dict):
    return {k: rng.normal(size=s).astype("float32")
            for k, s in input_shapes.items()}
  return rng.normal(size=input_shapes).astype("float32")


def check_layer(make_layer, input_shapes, expected_output_shape):
  """Checks a layer the way every layer of the project must behave.

  - the output has `expected_output_shape` and compute_output_shape agrees;
  - from_config(get_config()) rebuilds a layer that, given the same weights,
    computes the same outputs;
  - it runs under the mixed_bfloat16 policy with finite outputs;
  - a model holding it saves to .keras and reloads with equal outputs.
  """
  inputs = _random_inputs(input_shapes)
  layer = make_layer()
  outputs = layer(inputs, training=False)
  assert tuple(outputs.shape) == tuple(expected_output_shape)
  computed = layer.compute_output_shape(
      input_shapes if not isinstance(input_shapes, tuple) else input_shapes)
  assert tuple(computed) == tuple(expected_output_shape)

  clone = layer.__class__.from_config(layer.get_config())
  clone(inputs, training=False)
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(inputs, training=False), outputs,
                             rtol=1e-5, atol=1e-5)
  assert clone.get_config() == layer.get_config()

  assert_checkpoint_covers(layer)

  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    low = make_layer()
    low_out = low(tf.nest.map_structure(tf.convert_to_tensor, inputs),
                  training=True)
    assert low_out.dtype in (tf.bfloat16, tf.float32)
    assert np.all(np.isfinite(tf.cast(low_out, tf.float32).numpy()))
  finally:
    keras.mixed_precision.set_global_policy(previous)

  if isinstance(input_shapes, tuple):
    model_in = keras.Input(shape=input_shapes[1:], batch_size=input_shapes[0])
  elif isinstance(input_shapes, list):
    model_in = [keras.Input(shape=s[1:], batch_size=s[0]) for s in input_shapes]
  else:
    model_in = {k: keras.Input(shape=s[1:], batch_size=s[0])
                for k, s in input_shapes.items()}
  model = keras.Model(model_in, make_layer()(model_in))
  expected = model(inputs, training=False)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
  np.testing.assert_allclose(reloaded(inputs, training=False), expected,
                             rtol=1e-5, atol=1e-5)
  return layer


def assert_checkpoint_covers(layer_or_model, make_clone=None):
  """tf.train.Checkpoint saves every weight, and restores each into its place.

  Keras 3 layers kept in list/dict attributes are invisible to
  tf.train.Checkpoint (modeling/layers/tracking.py); this catches them.
  `make_clone` (optional) builds a second, fresh instance to restore into.
  """
  weights = layer_or_model.weights
  with tempfile.TemporaryDirectory() as tmp:
    for i, w in enumerate(weights):
      w.assign(np.full(w.shape, i + 1, w.dtype))
    path = tf.train.Checkpoint(root=layer_or_model).write(
        os.path.join(tmp, "ckpt"))
    saved = [name for name, _ in tf.train.list_variables(path)
             if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(saved) == len(weights), (
        f"{layer_or_model.name}: checkpoint holds {len(saved)} of "
        f"{len(weights)} weights")
    if make_clone is not None:
      clone = make_clone()
      tf.train.Checkpoint(root=clone).read(path).assert_consumed()
      for i, w in enumerate(clone.weights):
        assert np.all(w.numpy() == i + 1), f"{w.path} restored wrongly"
