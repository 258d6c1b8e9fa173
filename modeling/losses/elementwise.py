"""Elementwise losses shared by the detection losses."""

import tensorflow as tf


def huber(errors, delta):
  """Elementwise Huber loss of prediction errors.

  0.5 e^2 for |e| <= delta, delta (|e| - delta / 2) above (Fast R-CNN,
  Sec. 2.3, "smooth L1" with delta = 1; RetinaNet and the RPN use smaller
  deltas, see retinanet.py and maskrcnn.py).

  Args:
    errors: float tensor, prediction - target, any shape.
    delta: float > 0, the threshold between the quadratic and linear parts.
  Returns:
    float32 tensor of the shape of `errors`.
  """
  errors = tf.abs(tf.cast(errors, tf.float32))
  quadratic = tf.minimum(errors, delta)
  return 0.5 * quadratic ** 2 + delta * (errors - quadratic)


def focal_loss(logits, targets, alpha=0.25, gamma=1.5):
  """Sigmoid focal loss per anchor, summed over the class columns.

  Lin et al., "Focal Loss for Dense Object Detection" (2017), Sec. 3.1,
  Eq. 5: FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), one binary classifier
  per foreground class. Column c of `logits` is class id c; column 0 is
  background: a target t >= 1 is the one-hot row of column t, background
  (t = 0) is an all-zero row, so column 0 is dropped (no gradient).

  Args:
    logits: float [..., C] class logits; column 0 is background and unused.
    targets: int [...] in -1..C-1: class id, 0 = background (all-zero target
      row), -1 = ignored (loss 0).
    alpha: weight of the positive term (1 - alpha for the negatives).
    gamma: focusing exponent.
  Returns:
    float32 [...], the loss of each anchor (not normalised).
  """
  logits = tf.cast(logits, tf.float32)
  targets = tf.cast(targets, tf.int32)
  num_classes = logits.shape[-1]
  # one_hot of -1 (background) and -2 (ignored) is an all-zero row.
  labels = tf.one_hot(targets - 1, num_classes - 1, dtype=tf.float32)
  x = logits[..., 1:]
  # s = -x for a positive column, x for a negative one; then
  # cross entropy = softplus(s) and 1 - p_t = sigmoid(s), both stable.
  s = (1.0 - 2.0 * labels) * x
  cross_entropy = tf.nn.softplus(s)
  modulator = tf.exp(gamma * tf.math.log_sigmoid(s))
  alpha_t = labels * alpha + (1.0 - labels) * (1.0 - alpha)
  loss = tf.reduce_sum(alpha_t * modulator * cross_entropy, axis=-1)
  return tf.where(targets >= 0, loss, 0.0)
