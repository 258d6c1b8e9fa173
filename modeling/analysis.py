"""Model size and cost: parameter counts and multiply-adds.

Multiply-adds are counted the way the SpineNet papers count FLOPs: the
TensorFlow profiler's float-operation count of one forward pass at batch 1,
divided by 2 (the profiler counts a multiply and an add as two operations).
Ops the profiler has no cost for (resize, max-pool, gather) count zero.
"""

import numpy as np
import tensorflow as tf


def count_params(model, trainable_only=False):
  """Number of scalars in the model's weights (all weights unless trainable_only)."""
  weights = model.trainable_weights if trainable_only else model.weights
  return int(sum(np.prod(w.shape) for w in weights))


def count_multiply_adds(model, input_shape, dtype=tf.float32):
  """Multiply-adds of one forward pass of `model` on one input of `input_shape`.

  Args:
    model: a Keras model called as model(inputs, training=False).
    input_shape: shape without the batch dimension, e.g. (640, 640, 3).
  Returns:
    int, multiply-adds (profiler FLOPs / 2).
  """
  spec = tf.TensorSpec((1,) + tuple(input_shape), dtype)
  forward = tf.function(lambda x: model(x, training=False))
  graph = forward.get_concrete_function(spec).graph
  options = (tf.compat.v1.profiler.ProfileOptionBuilder(
      tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
             .with_empty_output().build())
  profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op",
                                          options=options)
  return int(profile.total_float_ops // 2)
