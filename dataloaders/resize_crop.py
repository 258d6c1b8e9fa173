"""The resize-and-crop geometry shared by the detection and segmentation parsers.

S = output_size, (h, w) the decoded image. Training: a random scale s in
[aug_scale_min, aug_scale_max]; the image is resized to fit an
(S * s) x (S * s) square (long side round(S * s)) and a random S x S window
is cut where it is larger than S. Evaluation: s = 1, no crop (offset 0).
"""

import tensorflow as tf


def scale_and_offset(height, width, output_size, training, aug_scale_min,
                     aug_scale_max, scale_seed=None, crop_seed=None):
  """Sizes of the resize and the crop.

  Args:
    height, width: int32 scalars, the decoded image's size.
    output_size: S, the model input side in pixels.
    training: draw a random scale and window (else s = 1, offset 0).
    aug_scale_min, aug_scale_max: the scale jitter range (training).
    scale_seed, crop_seed: [2] stateless seeds (training).
  Returns:
    (scaled_size int32 [2], image_scale float32 [2], offset int32 [2]): the
    resized image is scaled_size (height, width) pixels, image_scale =
    scaled_size / original size, and the S x S window starts at offset.
  """
  size = tf.cast(tf.stack([height, width]), tf.float32)
  if training and aug_scale_max > aug_scale_min:
    scale = tf.random.stateless_uniform([], scale_seed, aug_scale_min,
                                        aug_scale_max)
  else:
    scale = tf.constant(aug_scale_min if training else 1.0)
  target = tf.round(output_size * scale)
  factor = tf.reduce_min(target / size)
  scaled_size = tf.maximum(tf.round(size * factor), 1.0)
  image_scale = scaled_size / size
  scaled_size = tf.cast(scaled_size, tf.int32)
  max_offset = tf.maximum(scaled_size - output_size, 0)
  if training:
    # Every offset 0..max_offset is equally likely.
    offset = tf.cast(
        tf.random.stateless_uniform([2], crop_seed) *
        tf.cast(max_offset + 1, tf.float32), tf.int32)
    offset = tf.minimum(offset, max_offset)
  else:
    offset = tf.zeros([2], tf.int32)
  return scaled_size, image_scale, offset
