"""Batch normalization on TensorFlow's fused kernel, numerically Keras' layer.

Keras 3's BatchNormalization, on the TensorFlow backend, computes the batch
moments, the normalisation and the moving-average updates as separate small
ops; tf_keras (which Model Garden uses) calls the fused kernel
(FusedBatchNormV3 and its fused gradient) instead. In a SpineNet, with a
batch norm after every convolution and small maps at levels 5-7, those
extra ops are a large share of the step on a CPU. FusedBatchNormalization
is keras.layers.BatchNormalization (same arguments, variables, variable
paths, checkpoints and config) whose call runs the fused kernel where it
computes the same function:

- training mode (training=True on a trainable layer): normalise with the
  batch mean and the biased batch variance (divisor N = batch x height x
  width), and move moving_mean and moving_variance towards them with
  `momentum`, as Keras' layer does. The kernel returns the unbiased
  variance (divisor N - 1, the form tf_keras' fused path averages); it is
  rescaled by (N - 1) / N here, so the moving variance is Keras', not
  tf_keras' (the two differ by that factor).
- inference mode: normalise with the moving statistics.
- under mixed precision (float16 / bfloat16 inputs) the kernel takes the
  half-precision input with float32 scale, offset and statistics and
  accumulates in float32, which is what Keras' layer gets by casting the
  input to float32 first; the output has the input's dtype.

Everything else falls back to Keras' own call, unchanged: inputs that are
not 4-D with channels last, synchronized statistics in training mode over
more than one replica (replica-averaged moments are not a fused kernel's;
with one replica in sync, or with the moving statistics, synchronization
changes nothing, and the kernel runs), masks, renorm, epsilon below 1.001e-5
(the smallest epsilon cuDNN's fused kernel accepts; TensorFlow raises
smaller ones silently, which would change the function), and float64.

Sources: Ioffe & Szegedy, "Batch Normalization" (ICML 2015), Algorithm 1
and Sec. 3.1 (inference with population statistics); the fused kernel is
TensorFlow's tf.raw_ops.FusedBatchNormV3.
"""

import keras
import tensorflow as tf

# cuDNN's fused batch norm rejects epsilon < CUDNN_BN_MIN_EPSILON (1e-5);
# TensorFlow's own wrappers raise such an epsilon to 1.001e-5.
MIN_FUSED_EPSILON = 1.001e-5
_FUSED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def replicas_in_sync():
  """Replicas a synchronized batch norm averages over, where it is traced."""
  context = tf.distribute.get_replica_context()
  if context is not None:
    return context.num_replicas_in_sync
  return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="spinenet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization computed by the fused kernel.

  Input and output: any shape Keras' layer takes; the fused path applies to
  [batch, height, width, channels] (axis -1) float32 / float16 / bfloat16
  tensors, the rest is Keras' call (module docstring).

  Args: those of keras.layers.BatchNormalization.
  """

  def _fused(self, inputs, mask, training):
    axis = self.axis if isinstance(self.axis, int) else (
        self.axis[0] if len(self.axis) == 1 else None)
    # Synchronization averages the batch moments over replicas; with the
    # moving statistics (inference, or a frozen layer), or with one replica
    # in sync, it changes nothing.
    batch_statistics = bool(training) and self.trainable
    synchronized = (self.synchronized and batch_statistics and
                    replicas_in_sync() > 1)
    return (mask is None and not synchronized and
            not self.renorm and
            len(inputs.shape) == 4 and axis in (-1, 3) and
            self.epsilon >= MIN_FUSED_EPSILON and
            tf.as_dtype(inputs.dtype) in _FUSED_DTYPES)

  def call(self, inputs, training=None, mask=None):
    inputs = tf.convert_to_tensor(inputs)
    if not self._fused(inputs, mask, training):
      return super().call(inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    gamma = (tf.cast(self.gamma, tf.float32) if self.scale
             else tf.ones([channels], tf.float32))
    beta = (tf.cast(self.beta, tf.float32) if self.center
            else tf.zeros([channels], tf.float32))
    if training and self.trainable:
      outputs, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
          x=inputs, scale=gamma, offset=beta,
          mean=tf.constant([], tf.float32),
          variance=tf.constant([], tf.float32), epsilon=self.epsilon,
          exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
      shape = tf.shape(inputs)
      count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
      # Biased variance, as Keras' layer averages (module docstring). With
      # one value per channel the unbiased variance is undefined (the kernel
      # gives NaN) and the biased one is 0.
      variance = tf.where(
          count > 1.0, unbiased_variance * ((count - 1.0) /
                                            tf.maximum(count, 1.0)), 0.0)
      mean = tf.stop_gradient(mean)
      variance = tf.stop_gradient(variance)
      momentum = self.momentum
      self.moving_mean.assign(
          tf.cast(self.moving_mean, tf.float32) * momentum +
          mean * (1.0 - momentum))
      self.moving_variance.assign(
          tf.cast(self.moving_variance, tf.float32) * momentum +
          variance * (1.0 - momentum))
    else:
      outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
          x=inputs, scale=gamma, offset=beta,
          mean=tf.cast(self.moving_mean, tf.float32),
          variance=tf.cast(self.moving_variance, tf.float32),
          epsilon=self.epsilon, exponential_avg_factor=1.0,
          data_format="NHWC", is_training=False)
    return tf.cast(outputs, self.compute_dtype)
