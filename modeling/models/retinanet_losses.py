"""RetinaNet losses: sigmoid focal loss and Huber box loss (REFERENCE §4).

Class convention (shared with the labeler and the post-processing): logits
have num_classes columns and column c is class id c; column 0 is background.
A target t >= 1 is the one-hot row of column t; background (t = 0) is an
all-zero row, i.e. the focal loss runs over columns 1..C-1 only and column 0
is dropped (it gets no gradient and is never output). This is the focal loss
paper's formulation (K binary classifiers, background = all negative). Model
Garden and the TPU repository instead train column 0 as a "background"
classifier (one_hot(0) for negatives); with the same label the other columns
see the same loss either way.

Normalisation: RetinaNet divides by the number of positive anchors + 1. Here
the count is over the whole *global* batch: each replica counts its
positives, the counts are summed over replicas (all_reduce), and each
replica returns its local loss sums divided by that global normaliser. So the
losses summed over replicas equal the loss of the global batch on one device,
whatever the replica count (the Task contract in official/core/task.py).
(Model Garden normalises by each replica's own count and averages the
replicas: the same in expectation, not identical.) The box loss is the Huber
sum over the 4 coordinates of the positives divided by 4 x normaliser (the
mean over coordinates, as the Model Garden and TPU code do); box_loss_weight
= 50 was tuned for that convention.
"""

import tensorflow as tf

from modeling.ops.anchors import flatten_levels


def focal_loss(logits, targets, alpha=0.25, gamma=1.5):
  """Sigmoid focal loss per anchor, summed over the class columns.

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


def huber_box_loss(deltas, targets, positive, delta=0.1):
  """Huber loss of box deltas per anchor, summed over the 4 coordinates.

  Args:
    deltas: float [..., 4] predicted encodings.
    targets: float [..., 4] target encodings.
    positive: bool [...]; other anchors contribute 0.
    delta: Huber threshold: 0.5 e^2 for |e| <= delta, delta (|e| - delta / 2)
      above.
  Returns:
    float32 [...], the loss of each anchor (not normalised).
  """
  error = tf.abs(tf.cast(deltas, tf.float32) - tf.cast(targets, tf.float32))
  quadratic = tf.minimum(error, delta)
  huber = 0.5 * quadratic ** 2 + delta * (error - quadratic)
  return tf.where(tf.cast(positive, tf.bool), tf.reduce_sum(huber, -1), 0.0)


def global_sum(value):
  """Sums a float32 value over all replicas when in a multi-replica context.

  In a replica context (inside strategy.run) with more than one replica this
  is an all_reduce; otherwise (one device, or cross-replica context) the
  value itself.
  """
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
  return value


def _levels(name, tensors):
  if not isinstance(tensors, dict) or not tensors:
    raise ValueError(f"retinanet_losses: {name} must be a non-empty dict "
                     f"str(level) -> tensor, got {type(tensors).__name__}.")
  return sorted(tensors, key=int)


def retinanet_losses(cls_outputs, box_outputs, labels, num_classes,
                     box_loss_weight=50.0, alpha=0.25, gamma=1.5,
                     huber_delta=0.1, global_normalizer=True):
  """This replica's share of the RetinaNet losses.

  Args:
    cls_outputs: dict str(level) -> [B, H_l, W_l, A * num_classes] logits.
    box_outputs: dict str(level) -> [B, H_l, W_l, A * 4] box deltas.
    labels: dict with
      cls_targets: dict str(level) -> int32 [B, H_l, W_l, A] (-1 ignored,
        0 background, else class id);
      box_targets: dict str(level) -> float32 [B, H_l, W_l, A * 4];
      (AnchorLabeler.multilevel_targets per image, batched; other keys are
      ignored).
    num_classes: logit columns per anchor, background included.
    box_loss_weight: weight of box_loss in total_loss.
    alpha, gamma: focal loss.
    huber_delta: Huber threshold on the encoded deltas.
    global_normalizer: count positives over all replicas (see the module
      docstring); False: this replica's count only.
  Returns:
    dict of float32 scalars: total_loss = cls_loss + box_loss_weight *
    box_loss; cls_loss = focal sum / (P + 1); box_loss = Huber sum /
    (4 (P + 1)), P = positive anchors in the (global) batch.
  Raises:
    ValueError: when the levels or channels of outputs and labels disagree.
  """
  cls_targets, box_targets = labels["cls_targets"], labels["box_targets"]
  levels = _levels("cls_outputs", cls_outputs)
  for name, tensors in (("box_outputs", box_outputs),
                        ("labels['cls_targets']", cls_targets),
                        ("labels['box_targets']", box_targets)):
    if _levels(name, tensors) != levels:
      raise ValueError(
          f"retinanet_losses: cls_outputs have levels {levels} but {name} "
          f"has levels {_levels(name, tensors)}.")
  for level in levels:
    anchors = cls_targets[level].shape[-1]
    if cls_outputs[level].shape[-1] != anchors * num_classes:
      raise ValueError(
          f"retinanet_losses: level {level} cls_outputs have "
          f"{cls_outputs[level].shape[-1]} channels, expected {anchors} "
          f"anchors x {num_classes} classes = {anchors * num_classes}.")
    if box_outputs[level].shape[-1] != anchors * 4:
      raise ValueError(
          f"retinanet_losses: level {level} box_outputs have "
          f"{box_outputs[level].shape[-1]} channels, expected {anchors} "
          f"anchors x 4 = {anchors * 4}.")

  logits = flatten_levels(cls_outputs, num_classes)
  deltas = flatten_levels(box_outputs, 4)
  targets = flatten_levels(cls_targets, 1)[..., 0]
  box_targets = flatten_levels(box_targets, 4)
  positive = targets > 0

  num_positives = tf.reduce_sum(tf.cast(positive, tf.float32))
  if global_normalizer:
    num_positives = global_sum(num_positives)
  normalizer = tf.stop_gradient(num_positives) + 1.0

  cls_loss = tf.reduce_sum(focal_loss(logits, targets, alpha, gamma))
  box_loss = tf.reduce_sum(huber_box_loss(deltas, box_targets, positive,
                                          huber_delta))
  cls_loss = cls_loss / normalizer
  box_loss = box_loss / (4.0 * normalizer)
  return {"total_loss": cls_loss + box_loss_weight * box_loss,
          "cls_loss": cls_loss, "box_loss": box_loss}
