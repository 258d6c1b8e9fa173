"""RetinaNet losses: sigmoid focal loss and Huber box loss.

Lin et al., "Focal Loss for Dense Object Detection" (2017), Sec. 4 and 5.1.
Class convention (shared with the labeler and the post-processing): logits
have num_classes columns and column c is class id c; column 0 is background
and takes no part in the focal loss (modeling/losses/elementwise.py). This
is the paper's formulation (K binary classifiers, background = all
negative). Model Garden and the TPU repository instead train column 0 as a
"background" classifier (one_hot(0) for negatives); with the same label the
other columns see the same loss either way.

Normalisation: RetinaNet divides by the number of positive anchors + 1
(paper Sec. 4, "Focal Loss": normalised by the number of anchors assigned
to a ground-truth box; the + 1 keeps a batch without positives finite). The
count is over the whole *global* batch
(modeling/losses/normalizers.py), so the losses summed over replicas equal
the loss of the global batch on one device. The box loss is the Huber sum
over the 4 coordinates of the positives divided by 4 x normaliser (the mean
over coordinates, as the Model Garden and TPU code do); box_loss_weight = 50
was tuned for that convention.
"""

import tensorflow as tf

from modeling.losses.elementwise import focal_loss, huber
from modeling.losses.normalizers import global_count
from modeling.ops.anchors import flatten_levels


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
  errors = tf.cast(deltas, tf.float32) - tf.cast(targets, tf.float32)
  return tf.where(tf.cast(positive, tf.bool),
                  tf.reduce_sum(huber(errors, delta), -1), 0.0)


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

  normalizer = global_count(positive, global_normalizer) + 1.0

  cls_loss = tf.reduce_sum(focal_loss(logits, targets, alpha, gamma))
  box_loss = tf.reduce_sum(huber_box_loss(deltas, box_targets, positive,
                                          huber_delta))
  cls_loss = cls_loss / normalizer
  box_loss = box_loss / (4.0 * normalizer)
  return {"total_loss": cls_loss + box_loss_weight * box_loss,
          "cls_loss": cls_loss, "box_loss": box_loss}
