"""Image classification loss: softmax cross-entropy with label smoothing.

Label smoothing as in Szegedy et al., "Rethinking the Inception
Architecture for Computer Vision" (2016), Sec. 7: the target is
(1 - epsilon) one_hot + epsilon / K over the K classes (the improved
classification protocol of the SpineNet final version, Sec. 5.6 and
Table 11, uses epsilon = 0.1). The loss is the
mean over the global batch: every replica divides its sum by the global
batch size, so the replicas' shares add up to the one-device mean.
"""

import tensorflow as tf


def classification_loss(logits, labels, num_classes, global_batch_size,
                        label_smoothing=0.0):
  """This replica's share of the mean softmax cross-entropy.

  Args:
    logits: float [b, num_classes].
    labels: int [b] class ids in 0..num_classes - 1.
    num_classes: int, the logit columns.
    global_batch_size: int, examples in the global batch (over all
      replicas), the normaliser.
    label_smoothing: float in [0, 1), probability spread evenly over all
      classes.
  Returns:
    float32 scalar: sum of the examples' cross-entropy / global_batch_size.
  Raises:
    ValueError: for label_smoothing outside [0, 1) or a logit width other
      than num_classes.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"classification_loss: label_smoothing must be in "
                     f"[0, 1), got {label_smoothing}.")
  logits = tf.cast(logits, tf.float32)
  if logits.shape[-1] is not None and logits.shape[-1] != num_classes:
    raise ValueError(f"classification_loss: logits have {logits.shape[-1]} "
                     f"columns, expected num_classes = {num_classes}.")
  one_hot = tf.one_hot(labels, num_classes)
  if label_smoothing:
    one_hot = (one_hot * (1.0 - label_smoothing) +
               label_smoothing / num_classes)
  per_example = tf.nn.softmax_cross_entropy_with_logits(one_hot, logits)
  return tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)
