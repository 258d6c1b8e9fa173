"""Region proposals from RPN outputs (Mask R-CNN stage 1; Faster R-CNN §3.3).

Steps, per image and with static shapes throughout:
1. per level: the pre_nms_top_k anchors with the highest objectness logit;
2. decode their deltas against their anchors, clip to the valid image;
3. drop boxes with a side below min_size (or of zero area);
4. NMS per level at nms_iou_threshold, keeping at most post_nms_top_k;
5. merge the levels and keep the post_nms_top_k best scores overall.

Per-level top-k and per-level NMS follow the Model Garden / TPU Mask R-CNN
that the SpineNet results were trained with (`_multilevel_propose_rois`:
pre_nms_top_k and NMS per level, then an overall top num_proposals), and
Detectron2's RPN (`find_top_rpn_proposals`: per-level top-k, NMS with the
level as the category, so boxes of different levels never suppress each
other). Suppressing across levels instead would let the many large boxes of
the coarse levels remove small boxes of the fine ones.

The proposals are constants for the second stage, as in both of those
implementations: no gradient flows back through them into the RPN.
"""

import tensorflow as tf

from modeling.ops import box_ops
from modeling.ops.anchors import Anchors

# NMS scores of dropped boxes. Kept boxes score a sigmoid in [0, 1], so any
# threshold in between separates them.
_DROPPED_SCORE = -1.0
_NMS_SCORE_THRESHOLD = -0.5


def _anchor_dict(anchors):
  if isinstance(anchors, Anchors):
    return anchors.multilevel_boxes()
  if isinstance(anchors, dict):
    return anchors
  raise ValueError("anchors must be an Anchors or a dict str(level) -> "
                   f"[H_l, W_l, A * 4] boxes, got {type(anchors).__name__}.")


def multilevel_proposals(rpn_scores, rpn_boxes, anchors, image_shape,
                         pre_nms_top_k=2000, post_nms_top_k=1000,
                         nms_iou_threshold=0.7, min_size=0.0,
                         box_coder_weights=None):
  """Proposals (rois) for the second stage from multi-level RPN outputs.

  Args:
    rpn_scores: dict str(level) -> [B, H_l, W_l, A] objectness logits.
    rpn_boxes: dict str(level) -> [B, H_l, W_l, A * 4] box deltas, in the
      anchor order of modeling.ops.anchors.
    anchors: an Anchors for the model input, or its multilevel boxes: dict
      str(level) -> [H_l, W_l, A * 4] (shared by the batch) or
      [B, H_l, W_l, A * 4], pixels.
    image_shape: [B, 2] (or [2] for all images) valid (height, width) of each
      image in pixels; the proposals are clipped to it.
    pre_nms_top_k: highest-scoring anchors kept per level before NMS
      (Mask R-CNN: 2000 in training, 1000 at test).
    post_nms_top_k: proposals kept per level after NMS and per image overall
      (Mask R-CNN: 1000).
    nms_iou_threshold: NMS removes a box whose IoU with a better kept box of
      its level is at or above this (0.7; the rule of
      tf.image.non_max_suppression_padded, so even 1.0 removes duplicates).
    min_size: boxes with a side below this many pixels (after clipping) are
      dropped; boxes of zero area always are.
    box_coder_weights: the weights the RPN targets were encoded with (None:
      plain Faster R-CNN coding).
  Returns:
    rois: float32 [B, post_nms_top_k, 4] (ymin, xmin, ymax, xmax) pixels,
      clipped, in decreasing score order.
    scores: float32 [B, post_nms_top_k] sigmoid objectness, decreasing.
    When fewer than post_nms_top_k boxes survive, the remaining rows are
    padding: an all-zero box with score 0. Every real proposal has a
    positive area, so `box_ops.area(rois) > 0` marks the real rows.
  Raises:
    ValueError: for mismatched levels or channels, or bad thresholds.
  """
  if int(pre_nms_top_k) < 1 or int(post_nms_top_k) < 1:
    raise ValueError(f"pre_nms_top_k and post_nms_top_k must be >= 1, got "
                     f"{pre_nms_top_k} and {post_nms_top_k}.")
  if not 0.0 <= nms_iou_threshold <= 1.0:
    raise ValueError(f"nms_iou_threshold must be in [0, 1], got "
                     f"{nms_iou_threshold}.")
  if min_size < 0:
    raise ValueError(f"min_size must be >= 0 pixels, got {min_size}.")
  anchors = _anchor_dict(anchors)
  levels = sorted(rpn_scores, key=int)
  for name, value in (("rpn_boxes", rpn_boxes), ("anchors", anchors)):
    if sorted(value, key=int) != levels:
      raise ValueError(f"rpn_scores cover levels {levels} but {name} cover "
                       f"levels {sorted(value, key=int)}.")
  height, width = box_ops.image_hw(image_shape)
  pre_nms_top_k = int(pre_nms_top_k)
  post_nms_top_k = int(post_nms_top_k)

  level_rois, level_scores = [], []
  for level in levels:
    logits = tf.cast(rpn_scores[level], tf.float32)
    deltas = rpn_boxes[level]
    level_anchors = tf.convert_to_tensor(anchors[level], tf.float32)
    num_anchors = logits.shape[-1]
    if deltas.shape[-1] != 4 * num_anchors:
      raise ValueError(
          f"Level {level}: rpn_scores have {num_anchors} anchors per "
          f"location, so rpn_boxes need {4 * num_anchors} channels, got "
          f"{deltas.shape[-1]}.")
    if level_anchors.shape[-1] != 4 * num_anchors:
      raise ValueError(
          f"Level {level}: the anchors have {level_anchors.shape[-1]} channels "
          f"but the RPN predicts {num_anchors} anchors per location "
          f"({4 * num_anchors} channels).")
    if (logits.shape[1:3].is_fully_defined() and
        level_anchors.shape[-3:-1].as_list() != logits.shape[1:3].as_list()):
      raise ValueError(
          f"Level {level}: rpn_scores grid {logits.shape[1:3]} differs from "
          f"the anchor grid {level_anchors.shape[-3:-1]}; the anchors must be "
          "built for the same input size.")
    if not logits.shape[1:].is_fully_defined():
      raise ValueError(f"Level {level}: rpn_scores need static spatial "
                       f"dimensions, got shape {logits.shape}.")
    count = logits.shape[1:].num_elements()
    batch = tf.shape(logits)[0]
    logits = tf.reshape(logits, [batch, count])
    deltas = tf.reshape(deltas, [batch, count, 4])

    k = min(pre_nms_top_k, count)
    top_logits, top_index = tf.math.top_k(logits, k=k, sorted=True)
    top_deltas = tf.gather(deltas, top_index, batch_dims=1)
    if level_anchors.shape.rank == 4:  # per-image anchors
      level_anchors = tf.reshape(level_anchors, [batch, -1, 4])
      top_anchors = tf.gather(level_anchors, top_index, batch_dims=1)
    else:
      top_anchors = tf.gather(tf.reshape(level_anchors, [-1, 4]), top_index)
    boxes = box_ops.decode_boxes(top_deltas, top_anchors, box_coder_weights)
    boxes = box_ops.clip_boxes(boxes, height, width)       # [B, k, 4]
    probs = tf.sigmoid(top_logits)

    box_h = boxes[..., 2] - boxes[..., 0]
    box_w = boxes[..., 3] - boxes[..., 1]
    keep = ((box_h >= min_size) & (box_w >= min_size) & (box_h > 0.0) &
            (box_w > 0.0))
    nms_scores = tf.where(keep, probs, _DROPPED_SCORE)
    # Dropped boxes keep their place in the sorted order but are zeroed by
    # the score threshold, which excludes them from NMS and from the output.
    max_output = min(k, post_nms_top_k)
    selected, num_valid = tf.image.non_max_suppression_padded(
        boxes, nms_scores, max_output, iou_threshold=nms_iou_threshold,
        score_threshold=_NMS_SCORE_THRESHOLD, pad_to_max_output_size=True,
        sorted_input=True, canonicalized_coordinates=True)
    valid = tf.range(max_output)[None, :] < num_valid[:, None]
    level_rois.append(tf.gather(boxes, selected, batch_dims=1))
    level_scores.append(
        tf.where(valid, tf.gather(probs, selected, batch_dims=1),
                 _DROPPED_SCORE))

  rois = tf.concat(level_rois, axis=1)
  scores = tf.concat(level_scores, axis=1)
  k = min(post_nms_top_k, scores.shape[1])
  scores, index = tf.math.top_k(scores, k=k, sorted=True)
  rois = tf.gather(rois, index, batch_dims=1)
  valid = scores > _NMS_SCORE_THRESHOLD
  rois = tf.where(valid[..., None], rois, 0.0)
  scores = tf.where(valid, scores, 0.0)
  if k < post_nms_top_k:
    rois = tf.pad(rois, [[0, 0], [0, post_nms_top_k - k], [0, 0]])
    scores = tf.pad(scores, [[0, 0], [0, post_nms_top_k - k]])
  return tf.stop_gradient(rois), tf.stop_gradient(scores)
