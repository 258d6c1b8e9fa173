"""Optimizer and weight decay.

SpineNet trains with SGD + momentum and an L2 penalty on convolution and dense
kernels only (batch-norm parameters, biases and fusion weights are left
alone). The penalty is added to the loss by the trainer (`weight_decay_loss`)
rather than decoupled in the optimizer, as in the papers' reference code.
"""

import gin
import keras
import tensorflow as tf

# Names (last path component) of the variables weight decay applies to.
DECAYED_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


@keras.saving.register_keras_serializable(package="official")
class SGD(keras.optimizers.SGD):
  """keras.optimizers.SGD whose global-norm clipping sees the summed gradient.

  Keras 3 (TF backend) clips in `_clip_gradients` before
  `_all_reduce_sum_gradients` sums the replicas' gradients, so with N replicas
  each replica's share would be clipped by its own norm. With more than one
  replica this class clips after the sum instead, so `global_clipnorm` means
  the same under every strategy (tests/official/test_distributed.py checks it).
  """

  def _defer_clipping(self):
    context = tf.distribute.get_replica_context()
    return bool(self.global_clipnorm) and context is not None and (
        context.num_replicas_in_sync > 1)

  def _clip_gradients(self, grads):
    if self._defer_clipping():
      return grads
    return super()._clip_gradients(grads)

  def _all_reduce_sum_gradients(self, grads_and_vars):
    defer = self._defer_clipping()
    reduced = super()._all_reduce_sum_gradients(grads_and_vars)
    if not defer:
      return reduced
    present = [g for g, _ in reduced if g is not None]
    clipped, _ = tf.clip_by_global_norm(present, self.global_clipnorm)
    clipped = iter(clipped)
    return [(None if g is None else next(clipped), v) for g, v in reduced]


@gin.configurable
def build_optimizer(learning_rate, momentum=0.9, nesterov=False,
                    clipnorm=None):
  """Returns SGD with momentum.

  Args:
    learning_rate: a float or a keras LearningRateSchedule (the trainer passes
      the schedule from `schedules.learning_rate_schedule`).
    momentum: momentum coefficient.
    nesterov: use Nesterov momentum.
    clipnorm: when set, gradients are clipped so that their global L2 norm
      (over all variables, after summing over replicas) is at most this value.

  Returns:
    A keras.optimizers.SGD (the subclass above).
  """
  return SGD(learning_rate=learning_rate, momentum=momentum,
             nesterov=nesterov, global_clipnorm=clipnorm)


def short_name(variable):
  """Last path component of a variable's name, without any ":0" suffix."""
  return variable.name.split("/")[-1].split(":")[0]


def decayed_variables(variables):
  """The variables weight decay applies to: kernels of convs and dense layers.

  Args:
    variables: iterable of keras or tf variables.

  Returns:
    List of those whose short name is in DECAYED_NAMES ("kernel",
    "depthwise_kernel", "pointwise_kernel"); never BN gamma/beta, moving
    statistics, biases, or "fusion_weights".
  """
  return [v for v in variables if short_name(v) in DECAYED_NAMES]


def weight_decay_loss(variables, weight_decay):
  """L2 penalty weight_decay * sum(tf.nn.l2_loss(w)) = wd / 2 * sum(w ** 2).

  The factor 1/2 is tf.nn.l2_loss's, so the gradient of the penalty is
  weight_decay * w (the usual "weight decay" of SGD papers).

  Args:
    variables: iterable of variables; only `decayed_variables` count.
    weight_decay: coefficient (0 or None: no penalty).

  Returns:
    Scalar float32 tensor.
  """
  decayed = decayed_variables(variables)
  if not weight_decay or not decayed:
    return tf.constant(0.0, tf.float32)
  return weight_decay * tf.add_n(
      [tf.nn.l2_loss(tf.cast(tf.convert_to_tensor(v), tf.float32))
       for v in decayed])
