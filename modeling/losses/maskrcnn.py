"""Mask R-CNN and Faster R-CNN losses: RPN, Fast R-CNN and mask terms.

He et al., "Mask R-CNN" (2017), Sec. 3 (L = L_cls + L_box + L_mask) with
the RPN terms of Ren et al., "Faster R-CNN" (2015), Sec. 3.1.2. Faster
R-CNN (a model without a mask head, include_mask=False) has the same terms
without mask_loss.

Terms (the public SpineNet / Model Garden Mask R-CNN, all weights 1):
- rpn_score_loss: sigmoid cross-entropy of the objectness logits over the
  anchors the input pipeline sampled (targets 1 / 0; -1 is skipped).
- rpn_box_loss: Huber loss (delta 1/9) of the box deltas of the sampled
  positive anchors, summed over the 4 coordinates.
- frcnn_class_loss: softmax cross-entropy over the sampled ROIs (class -1,
  the sampler's ignored rows, is skipped).
- frcnn_box_loss: Huber loss (delta 1) of each foreground ROI's deltas for
  its own class, against targets encoded with (10, 10, 5, 5).
- mask_loss: sigmoid cross-entropy of the 28x28 mask logits of each
  foreground ROI's class against its mask target.

Normalisers. Each replica returns its share of the loss of the global
batch, so that the shares summed over replicas equal the loss the whole
batch would have on one device (the Task contract in official/core/task.py):
- rpn_score_loss: sum / (global batch size x rpn_batch_size_per_image), a
  fixed normaliser: the mean over the sampled anchors of every image when
  each image has its full minibatch (the TPU Mask R-CNN's normaliser).
- rpn_box_loss: sum / (4 x positive anchors of the global batch).
- frcnn_class_loss: sum / (non-ignored ROIs of the global batch).
- frcnn_box_loss: sum / (4 x foreground ROIs of the global batch).
- mask_loss: sum / (28 x 28 x foreground mask rows of the global batch).
The counts are summed over replicas (an all_reduce, as the RetinaNet
positive count is) and floored at 1, so a batch without positives gives 0,
not NaN. The TPU and Model Garden code divide the same sums by each
replica's own counts, and normalise the RPN box loss per level before
summing the levels; here the mean is over all levels together, so a level
with few positives does not weigh as much as one with many.
"""

import tensorflow as tf

from modeling.losses.elementwise import huber
from modeling.losses.normalizers import global_count
from modeling.ops.anchors import flatten_levels

LOSS_NAMES = ("rpn_score_loss", "rpn_box_loss", "frcnn_class_loss",
              "frcnn_box_loss", "mask_loss")
# The terms of Faster R-CNN (include_mask=False).
BOX_LOSS_NAMES = LOSS_NAMES[:4]
MASK_OUTPUTS = ("mask_logits", "mask_classes", "mask_targets")


def _count(mask, global_normalizer):
  """Global count of `mask`, floored at 1 (module docstring)."""
  return tf.maximum(global_count(mask, global_normalizer), 1.0)


def _check_levels(scores, boxes, score_targets, box_targets):
  levels = sorted(scores, key=int)
  for name, tensors in (("rpn_boxes", boxes),
                        ("labels['rpn_score_targets']", score_targets),
                        ("labels['rpn_box_targets']", box_targets)):
    if sorted(tensors, key=int) != levels:
      raise ValueError(
          f"maskrcnn_losses: rpn_scores have levels {levels} but {name} has "
          f"levels {sorted(tensors, key=int)}; the RPN head and the input "
          "pipeline's anchors must cover the same levels.")
  for level in levels:
    if scores[level].shape[-1] != score_targets[level].shape[-1]:
      raise ValueError(
          f"maskrcnn_losses: level {level} rpn_scores have "
          f"{scores[level].shape[-1]} anchors per location but the targets "
          f"have {score_targets[level].shape[-1]}.")


def rpn_losses(rpn_scores, rpn_boxes, score_targets, box_targets,
               global_batch_size, rpn_batch_size_per_image=256,
               huber_delta=1.0 / 9.0, global_normalizer=True):
  """This replica's share of the RPN objectness and box losses.

  Args:
    rpn_scores: dict str(level) -> [B, H_l, W_l, A] logits.
    rpn_boxes: dict str(level) -> [B, H_l, W_l, 4 A] deltas.
    score_targets: dict str(level) -> int [B, H_l, W_l, A]: 1 / 0 sampled,
      -1 skipped.
    box_targets: dict str(level) -> float [B, H_l, W_l, 4 A].
    global_batch_size: images in the global batch.
    rpn_batch_size_per_image: anchors the input pipeline samples per image.
    huber_delta: Huber threshold of the box loss.
    global_normalizer: count positives over all replicas (module docstring).
  Returns:
    (rpn_score_loss, rpn_box_loss), float32 scalars.
  """
  _check_levels(rpn_scores, rpn_boxes, score_targets, box_targets)
  logits = flatten_levels(rpn_scores, 1)[..., 0]
  targets = tf.cast(flatten_levels(score_targets, 1)[..., 0], tf.int32)
  deltas = flatten_levels(rpn_boxes, 4)
  encoded = tf.cast(flatten_levels(box_targets, 4), tf.float32)
  sampled = targets >= 0
  positive = targets > 0
  cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(
      labels=tf.cast(positive, tf.float32), logits=tf.cast(logits, tf.float32))
  score_loss = tf.reduce_sum(tf.where(sampled, cross_entropy, 0.0)) / float(
      global_batch_size * rpn_batch_size_per_image)
  box_sum = tf.reduce_sum(
      huber(tf.cast(deltas, tf.float32) - encoded, huber_delta), axis=-1)
  box_loss = tf.reduce_sum(tf.where(positive, box_sum, 0.0)) / (
      4.0 * _count(positive, global_normalizer))
  return score_loss, box_loss


def fast_rcnn_losses(class_logits, box_deltas, roi_classes, box_targets,
                     huber_delta=1.0, global_normalizer=True):
  """This replica's share of the Fast R-CNN class and box losses.

  Args:
    class_logits: float [B, R, C].
    box_deltas: float [B, R, 4 C] class-specific (or [B, R, 4]) deltas.
    roi_classes: int [B, R]: class of foregrounds, 0 background, -1 skipped.
    box_targets: float [B, R, 4] encoded targets (zeros off foreground).
    huber_delta: Huber threshold of the box loss.
    global_normalizer: count ROIs over all replicas (module docstring).
  Returns:
    (frcnn_class_loss, frcnn_box_loss), float32 scalars.
  """
  num_classes = class_logits.shape[-1]
  classes = tf.cast(roi_classes, tf.int32)
  if box_deltas.shape[-1] not in (4, 4 * num_classes):
    raise ValueError(
        f"maskrcnn_losses: box_deltas have {box_deltas.shape[-1]} columns; "
        f"expected 4 x {num_classes} classes (or 4, class-agnostic).")
  counted = classes >= 0
  foreground = classes > 0
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.maximum(classes, 0), logits=tf.cast(class_logits, tf.float32))
  class_loss = tf.reduce_sum(tf.where(counted, cross_entropy, 0.0)) / _count(
      counted, global_normalizer)

  deltas = tf.cast(box_deltas, tf.float32)
  if deltas.shape[-1] != 4:
    deltas = tf.reshape(deltas, tf.concat([tf.shape(deltas)[:-1],
                                           [num_classes, 4]], 0))
    deltas = tf.gather(deltas, tf.maximum(classes, 0), axis=2, batch_dims=2)
  box_sum = tf.reduce_sum(
      huber(deltas - tf.cast(box_targets, tf.float32), huber_delta), axis=-1)
  box_loss = tf.reduce_sum(tf.where(foreground, box_sum, 0.0)) / (
      4.0 * _count(foreground, global_normalizer))
  return class_loss, box_loss


def mask_loss(mask_logits, mask_targets, mask_classes,
              global_normalizer=True):
  """This replica's share of the mask loss.

  Args:
    mask_logits: float [B, F, m, m], logits of each ROI's class.
    mask_targets: float [B, F, m, m] in {0, 1}.
    mask_classes: int [B, F]; rows with class > 0 (foregrounds) count.
    global_normalizer: count rows over all replicas (module docstring).
  Returns:
    float32 scalar: cross-entropy sum / (m x m x foreground rows).
  """
  if mask_logits.shape[1:] != mask_targets.shape[1:]:
    raise ValueError(
        f"maskrcnn_losses: mask_logits {mask_logits.shape} and mask_targets "
        f"{mask_targets.shape} differ; the mask head's output size must be "
        "the mask target size.")
  foreground = tf.cast(mask_classes, tf.int32) > 0
  cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(
      labels=tf.cast(mask_targets, tf.float32),
      logits=tf.cast(mask_logits, tf.float32))
  per_row = tf.reduce_sum(cross_entropy, axis=[2, 3])
  pixels = float(mask_logits.shape[2] * mask_logits.shape[3])
  return tf.reduce_sum(tf.where(foreground, per_row, 0.0)) / (
      pixels * _count(foreground, global_normalizer))


def maskrcnn_losses(outputs, labels, global_batch_size,
                    rpn_batch_size_per_image=256, rpn_huber_delta=1.0 / 9.0,
                    frcnn_huber_delta=1.0, rpn_score_weight=1.0,
                    rpn_box_weight=1.0, frcnn_class_weight=1.0,
                    frcnn_box_weight=1.0, mask_weight=1.0,
                    global_normalizer=True, include_mask=True):
  """This replica's share of every Mask R-CNN (or Faster R-CNN) loss term.

  Args:
    outputs: the training outputs of MaskRCNNModel (rpn_scores, rpn_boxes,
      class_logits, box_deltas, roi_classes, box_targets, and with
      include_mask mask_logits, mask_classes, mask_targets).
    labels: dict with rpn_score_targets and rpn_box_targets (dicts per
      level, dataloaders/maskrcnn_input.py); other keys are ignored.
    global_batch_size: images in the global batch.
    rpn_batch_size_per_image: anchors the input pipeline samples per image.
    rpn_huber_delta, frcnn_huber_delta: Huber thresholds (1/9, 1).
    *_weight: weights of the terms in total_loss.
    global_normalizer: count over all replicas (module docstring); False:
      this replica's counts only.
    include_mask: True for Mask R-CNN; False for Faster R-CNN (a model
      without a mask head): no mask term, mask_weight unused.
  Returns:
    dict of float32 scalars: total_loss (weighted sum) and LOSS_NAMES, or
    BOX_LOSS_NAMES without include_mask.
  Raises:
    ValueError: for missing outputs or labels, mask outputs without
      include_mask, or mismatched shapes.
  """
  expected = ("rpn_scores", "rpn_boxes", "class_logits", "box_deltas",
              "roi_classes", "box_targets")
  if include_mask:
    expected += MASK_OUTPUTS
  missing = [k for k in expected if k not in outputs]
  if missing:
    raise ValueError(
        f"maskrcnn_losses: the model outputs lack {missing} (got "
        f"{sorted(outputs)}); call the model with training=True and "
        f"gt_boxes, gt_classes{' and gt_masks' if include_mask else ''}"
        f"{'' if include_mask else ' (include_mask=False: Faster R-CNN)'}.")
  unexpected = [k for k in MASK_OUTPUTS if k in outputs]
  if not include_mask and unexpected:
    # A model with a mask head trained without its loss would leave that
    # head at its initial weights; mask_weight=0 says so explicitly.
    raise ValueError(
        f"maskrcnn_losses: include_mask=False (Faster R-CNN) but the model "
        f"outputs hold {unexpected}: the model has a mask head. Build it "
        "with mask_head=None, or compute the losses with include_mask=True "
        "(mask_weight=0 to leave the masks untrained).")
  missing = [k for k in ("rpn_score_targets", "rpn_box_targets")
             if k not in labels]
  if missing:
    raise ValueError(f"maskrcnn_losses: labels lack {missing} (got "
                     f"{sorted(labels)}); see dataloaders/maskrcnn_input.py.")
  if int(global_batch_size) < 1:
    raise ValueError(f"maskrcnn_losses: global_batch_size must be >= 1, got "
                     f"{global_batch_size}.")
  rpn_score, rpn_box = rpn_losses(
      outputs["rpn_scores"], outputs["rpn_boxes"], labels["rpn_score_targets"],
      labels["rpn_box_targets"], int(global_batch_size),
      rpn_batch_size_per_image, rpn_huber_delta, global_normalizer)
  frcnn_class, frcnn_box = fast_rcnn_losses(
      outputs["class_logits"], outputs["box_deltas"], outputs["roi_classes"],
      outputs["box_targets"], frcnn_huber_delta, global_normalizer)
  total = (rpn_score_weight * rpn_score + rpn_box_weight * rpn_box +
           frcnn_class_weight * frcnn_class + frcnn_box_weight * frcnn_box)
  losses = {"rpn_score_loss": rpn_score, "rpn_box_loss": rpn_box,
            "frcnn_class_loss": frcnn_class, "frcnn_box_loss": frcnn_box}
  if include_mask:
    losses["mask_loss"] = mask_loss(
        outputs["mask_logits"], outputs["mask_targets"],
        outputs["mask_classes"], global_normalizer)
    total += mask_weight * losses["mask_loss"]
  return {"total_loss": total, **losses}
