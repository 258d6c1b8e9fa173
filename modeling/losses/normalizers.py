"""Replica-aware loss normalisers.

Each replica computes the loss sums of its own slice of the global batch and
divides them by a normaliser of the *global* batch (a positive-anchor count,
a valid-pixel count, the global batch size). The sums over replicas of the
returned shares are then exactly the loss of the global batch on one device,
whatever the replica count (the Task contract in official/core/task.py).
Model Garden divides by each replica's own count and averages the replicas:
equal in expectation, not identical.
"""

import tensorflow as tf


def global_sum(value):
  """Sums a float32 value over all replicas when in a multi-replica context.

  In a replica context (inside strategy.run) with more than one replica this
  is an all_reduce (SUM); otherwise (one device, or the cross-replica
  context) the value itself.

  Args:
    value: float32 tensor, any shape.
  Returns:
    float32 tensor of the same shape.
  """
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
  return value


def global_count(mask, global_normalizer=True):
  """Number of True elements of `mask`, over all replicas, without gradient.

  Args:
    mask: bool tensor (or 0/1 numbers), any shape.
    global_normalizer: True: summed over the replicas (global_sum); False:
      this replica's count only.
  Returns:
    float32 scalar, gradient stopped (a normaliser is a constant of the
    step). Not floored: callers add 1 or take max(count, 1) as their loss
    defines.
  """
  count = tf.reduce_sum(tf.cast(mask, tf.float32))
  if global_normalizer:
    count = global_sum(count)
  return tf.stop_gradient(count)
