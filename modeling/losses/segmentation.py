"""Semantic segmentation loss: mean softmax cross-entropy over valid pixels.

Eff-SpineNet paper (Sec. 4.3 and 5.3) trains the segmenter with per-pixel
softmax cross-entropy; pixels labelled ignore_label (PASCAL VOC's 255
boundary and "void" pixels) and labels >= num_classes take no part. The
mean is over the valid pixels of the *global* batch: each replica divides
its sum by the valid-pixel count summed over replicas (normalizers.py), so
the replicas' shares add up to the global mean.
"""

import tensorflow as tf

from modeling.losses.normalizers import global_count


def segmentation_loss(logits, labels, num_classes, ignore_label=255,
                      global_normalizer=True):
  """This replica's share of the mean cross-entropy over valid pixels.

  Args:
    logits: float [b, H, W, num_classes].
    labels: int [b, H, W] class ids; ignore_label pixels (and ids >=
      num_classes) get no loss.
    num_classes: int, the logit columns.
    ignore_label: int.
    global_normalizer: divide by the valid pixels of all replicas; False: of
      this replica only.
  Returns:
    float32 scalar: sum of the valid pixels' cross-entropy / max(valid
    pixels, 1); 0 when no pixel is valid.
  """
  logits = tf.cast(logits, tf.float32)
  labels = tf.cast(labels, tf.int32)
  valid = tf.logical_and(labels != ignore_label, labels < num_classes)
  safe_labels = tf.where(valid, labels, 0)
  per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=safe_labels, logits=logits)
  total = tf.reduce_sum(tf.where(valid, per_pixel, 0.0))
  return total / tf.maximum(global_count(valid, global_normalizer), 1.0)
