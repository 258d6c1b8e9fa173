"""DropBlock and stochastic depth: structured noise that is identity at inference."""

import keras
import tensorflow as tf


def stochastic_depth_rate(init_rate, block_index, num_blocks):
  """Drop rate of block `block_index` (1-based) of `num_blocks`: a linear ramp.

  Block k of N gets init_rate * k / N, so the last block drops at init_rate.
  Returns None when init_rate is falsy (stochastic depth off).
  """
  if not init_rate:
    return None
  if not 0.0 <= init_rate < 1.0:
    raise ValueError(f"stochastic depth rate must be in [0, 1), got {init_rate}")
  return init_rate * float(block_index) / float(num_blocks)


@keras.saving.register_keras_serializable(package="spinenet")
class StochasticDepth(keras.layers.Layer):
  """Drops a whole residual branch per sample with probability `rate`.

  Input: [batch, ...] residual branch. In training each sample's branch is kept
  with probability 1 - rate and kept branches are divided by 1 - rate; at
  inference the layer is the identity.
  """

  def __init__(self, rate, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate}")
    self.rate = float(rate)

  def call(self, inputs, training=None):
    if not training or self.rate == 0.0:
      return inputs
    keep_prob = 1.0 - self.rate
    batch = tf.shape(inputs)[0]
    mask_shape = tf.concat([[batch], tf.ones([tf.rank(inputs) - 1], tf.int32)], 0)
    keep = tf.floor(keep_prob + tf.random.uniform(mask_shape, dtype=tf.float32))
    return inputs / tf.cast(keep_prob, inputs.dtype) * tf.cast(keep, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(rate=self.rate)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class DropBlock(keras.layers.Layer):
  """DropBlock (Ghiasi et al. 2018) on [batch, height, width, channels] maps.

  Zeroes contiguous block_size x block_size squares so that about 1 - keep_prob
  of the activations are dropped, then rescales the kept ones by the fraction
  kept. Identity at inference, and when keep_prob is None or 1.

  Args:
    keep_prob: probability an activation is kept (paper: 0.9).
    block_size: side of the dropped squares in pixels (paper: 3); clipped to
      the feature map size.
  """

  def __init__(self, keep_prob=0.9, block_size=3, **kwargs):
    super().__init__(**kwargs)
    if keep_prob is not None and not 0.0 < keep_prob <= 1.0:
      raise ValueError(f"DropBlock keep_prob must be in (0, 1], got {keep_prob}")
    if block_size < 1:
      raise ValueError(f"DropBlock block_size must be >= 1, got {block_size}")
    self.keep_prob = keep_prob
    self.block_size = int(block_size)

  def call(self, inputs, training=None):
    if not training or self.keep_prob is None or self.keep_prob == 1.0:
      return inputs
    _, height, width, _ = inputs.shape
    block = min(self.block_size, height, width)
    # Seed rate so that the expected dropped fraction is 1 - keep_prob
    # (eq. 1 of the DropBlock paper): only seeds whose block fits are drawn.
    gamma = ((1.0 - self.keep_prob) * height * width / (block * block) /
             ((height - block + 1) * (width - block + 1)))
    h_idx, w_idx = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    half = block // 2
    valid = ((h_idx >= half) & (h_idx < height - (block - 1) // 2) &
             (w_idx >= half) & (w_idx < width - (block - 1) // 2))
    valid = tf.cast(valid, tf.float32)[None, :, :, None]
    noise = tf.random.uniform(tf.shape(inputs), dtype=tf.float32)
    seeds = tf.cast(noise < gamma, tf.float32) * valid
    dropped = tf.nn.max_pool2d(seeds, ksize=block, strides=1, padding="SAME")
    keep_mask = 1.0 - dropped
    kept_fraction = tf.reduce_sum(keep_mask) / tf.cast(tf.size(keep_mask),
                                                       tf.float32)
    scale = 1.0 / tf.maximum(kept_fraction, 1e-6)
    return inputs * tf.cast(keep_mask * scale, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(keep_prob=self.keep_prob, block_size=self.block_size)
    return config
