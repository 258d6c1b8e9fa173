"""Anchor labelling for RetinaNet and the Mask R-CNN RPN.

Thresholds and sampling: docs/model_garden_conventions.md ("Anchors,
targets and losses").

Rules, for one image:
- A ground truth takes part only if it is valid: `valid` is True, its box has
  positive area and its class id is >= 1 (class 0 is background, so a class
  <= 0 marks padding too). Invalid ground truths never match anything.
- Each anchor is compared with every valid ground truth by IoU; its best one
  (highest IoU, ties to the lowest ground-truth index) is its candidate.
  IoU >= match_threshold: positive; IoU < unmatched_threshold: negative
  (background); in between: ignored. With no valid ground truth every anchor
  is negative.
- force_match: every valid ground truth with a non-zero best IoU also claims
  the anchor(s) where it reaches that best IoU (all of them when several tie,
  as Detectron2's low-quality matching does), even below match_threshold. A
  claimed anchor becomes positive and is assigned to its claimant, overriding
  its own candidate (as the Model Garden / TPU matchers do); an anchor
  claimed by several ground truths goes to the one it overlaps most, ties to
  the lowest ground-truth index.

`RpnAnchorLabeler` applies these rules class-agnostically with the RPN
thresholds, then samples a fixed-size minibatch of anchors per image.

Everything is graph-mode TensorFlow with static output shapes [N, ...]; it
runs inside tf.data map functions. K (the number of ground-truth rows) may be
padded and may be 0 or unknown.
"""

import tensorflow as tf

from modeling.ops import box_ops


def _first_argmax(values, axis):
  """argmax along `axis` with ties resolved to the lowest index (int32)."""
  best = tf.reduce_max(values, axis=axis, keepdims=True)
  size = tf.shape(values)[axis]
  shape = [1] * values.shape.rank
  shape[axis] = -1
  index = tf.reshape(tf.range(size, dtype=tf.int32), shape)
  return tf.reduce_min(tf.where(tf.equal(values, best), index, size),
                       axis=axis)


class AnchorLabeler:
  """Assigns classification and box-regression targets to anchors.

  Args:
    match_threshold: IoU at or above which an anchor is positive.
    unmatched_threshold: IoU below which an anchor is negative; anchors with
      IoU in [unmatched_threshold, match_threshold) are ignored.
    force_match: also match each valid ground truth to its best anchor(s)
      (see the module docstring for ties and conflicts).
    box_coder_weights: None or 4 weights of box_ops.encode_boxes; the
      post-processing must decode with the same weights.
  Raises:
    ValueError: when the thresholds are outside [0, 1] or
      unmatched_threshold > match_threshold.
  """

  def __init__(self, match_threshold=0.5, unmatched_threshold=0.5,
               force_match=True, box_coder_weights=None):
    if not (0.0 <= unmatched_threshold <= match_threshold <= 1.0):
      raise ValueError(
          "AnchorLabeler: need 0 <= unmatched_threshold <= match_threshold <= "
          f"1, got unmatched_threshold={unmatched_threshold}, "
          f"match_threshold={match_threshold}.")
    self.match_threshold = float(match_threshold)
    self.unmatched_threshold = float(unmatched_threshold)
    self.force_match = bool(force_match)
    self.box_coder_weights = (None if box_coder_weights is None
                              else tuple(float(w) for w in box_coder_weights))

  def __call__(self, anchors, gt_boxes, gt_classes, valid=None):
    """Labels the anchors of one image.

    Args:
      anchors: float32 [N, 4] (ymin, xmin, ymax, xmax) pixels, e.g.
        Anchors.boxes().
      gt_boxes: float [K, 4] (ymin, xmin, ymax, xmax) pixels, same frame as
        the anchors; K may be padded, 0, or unknown.
      gt_classes: int [K] class ids, 1..num_classes-1 (0 = background).
      valid: bool [K] marking real rows, or None (all rows real). Rows with
        zero area or class <= 0 are treated as padding either way.
    Returns:
      dict with
        cls_targets: int32 [N]: the matched class id for positives, 0 for
          negatives (background), -1 for ignored anchors.
        box_targets: float32 [N, 4]: encode_boxes(matched box, anchor) for
          positives, zeros elsewhere.
        positive: bool [N].
        ignore: bool [N].
        matched_gt: int32 [N], row of gt_boxes matched to each positive
          anchor, -1 elsewhere.
        num_positives: float32 scalar, the number of positive anchors.
    """
    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4])
    gt_classes = tf.reshape(tf.cast(gt_classes, tf.int32), [-1])
    if valid is None:
      valid = tf.ones_like(gt_classes, tf.bool)
    valid = tf.reshape(tf.cast(valid, tf.bool), [-1])
    # A dummy invalid row keeps K >= 1, so every reduction over ground truths
    # is defined even for an image without any.
    gt_boxes = tf.concat([gt_boxes, tf.zeros([1, 4], tf.float32)], 0)
    gt_classes = tf.concat([gt_classes, tf.zeros([1], tf.int32)], 0)
    valid = tf.concat([valid, tf.zeros([1], tf.bool)], 0)
    valid &= (box_ops.area(gt_boxes) > 0.0) & (gt_classes > 0)

    # [N, K + 1]; invalid columns at -1, below any real IoU.
    ious = tf.where(valid[None, :], box_ops.iou(anchors, gt_boxes), -1.0)
    max_iou = tf.reduce_max(ious, axis=1)
    matched = _first_argmax(ious, axis=1)
    positive = max_iou >= self.match_threshold
    negative = max_iou < self.unmatched_threshold

    if self.force_match:
      best_per_gt = tf.reduce_max(ious, axis=0)
      claims = (tf.equal(ious, best_per_gt[None, :]) &
                (valid & (best_per_gt > 0.0))[None, :])
      forced = tf.reduce_any(claims, axis=1)
      claimant = _first_argmax(tf.where(claims, ious, -2.0), axis=1)
      matched = tf.where(forced, claimant, matched)
      positive |= forced
      negative &= ~forced

    ignore = ~positive & ~negative
    matched_boxes = tf.gather(gt_boxes, matched)
    # Non-positive anchors encode themselves (exact zeros, never log(0)).
    matched_boxes = tf.where(positive[:, None], matched_boxes, anchors)
    box_targets = box_ops.encode_boxes(matched_boxes, anchors,
                                       self.box_coder_weights)
    box_targets = tf.where(positive[:, None], box_targets, 0.0)
    cls_targets = tf.where(
        positive, tf.gather(gt_classes, matched),
        tf.where(ignore, tf.constant(-1, tf.int32), tf.constant(0, tf.int32)))
    return {
        "cls_targets": cls_targets,
        "box_targets": box_targets,
        "positive": positive,
        "ignore": ignore,
        "matched_gt": tf.where(positive, matched, -1),
        "num_positives": tf.reduce_sum(tf.cast(positive, tf.float32)),
    }

  def multilevel_targets(self, anchors, gt_boxes, gt_classes, valid=None):
    """Labels one image and splits the targets per level.

    Args:
      anchors: a modeling.ops.anchors.Anchors.
      gt_boxes, gt_classes, valid: as in __call__.
    Returns:
      dict with
        cls_targets: dict str(level) -> int32 [H_l, W_l, A] (-1/0/class id);
        box_targets: dict str(level) -> float32 [H_l, W_l, A * 4];
        num_positives: float32 scalar.
      Batched by tf.data, this is the `labels` format of
      modeling.losses.retinanet.retinanet_losses.
    """
    out = self(anchors.boxes(), gt_boxes, gt_classes, valid)
    return {
        "cls_targets": anchors.unpack_labels(out["cls_targets"]),
        "box_targets": anchors.unpack_labels(out["box_targets"]),
        "num_positives": out["num_positives"],
    }


class RpnAnchorLabeler:
  """Class-agnostic anchor targets of a region proposal network (Mask R-CNN).

  Matching follows `AnchorLabeler` with Faster R-CNN's RPN thresholds (§3.1.2):
  IoU >= match_threshold (0.7) positive, < unmatched_threshold (0.3)
  negative, in between ignored, and each valid ground truth force-matched
  to its best anchor(s). Then a minibatch of `batch_size_per_image` anchors
  is sampled uniformly at random: min(#positives, round(batch_size *
  positive_fraction)) positives, and negatives for the rest of the
  minibatch (fewer when there are not enough of them). Unsampled anchors are
  ignored, so the score loss sees at most batch_size_per_image anchors.

  Shapes are static and sampling is stateless: the same seed gives the same
  minibatch.

  Args:
    match_threshold: IoU at or above which an anchor is positive.
    unmatched_threshold: IoU below which an anchor is negative.
    batch_size_per_image: anchors sampled per image (256).
    positive_fraction: largest share of positives in the minibatch (0.5).
    force_match: force-match each ground truth to its best anchor(s).
    box_coder_weights: None or 4 weights of box_ops.encode_boxes.
  Raises:
    ValueError: for thresholds outside [0, 1] or unordered, a
      batch_size_per_image < 1, or a positive_fraction outside [0, 1].
  """

  def __init__(self, match_threshold=0.7, unmatched_threshold=0.3,
               batch_size_per_image=256, positive_fraction=0.5,
               force_match=True, box_coder_weights=None):
    if int(batch_size_per_image) < 1:
      raise ValueError("RpnAnchorLabeler: batch_size_per_image must be >= 1, "
                       f"got {batch_size_per_image}.")
    if not 0.0 <= positive_fraction <= 1.0:
      raise ValueError("RpnAnchorLabeler: positive_fraction must lie in "
                       f"[0, 1], got {positive_fraction}.")
    self.matcher = AnchorLabeler(match_threshold, unmatched_threshold,
                                 force_match, box_coder_weights)
    self.batch_size_per_image = int(batch_size_per_image)
    self.positive_fraction = float(positive_fraction)
    self.max_positives = int(round(self.batch_size_per_image *
                                   self.positive_fraction))

  def _sample(self, positive, negative, seed):
    """bool [N] masks of the sampled positives and negatives."""
    num_anchors = positive.shape[0]
    if num_anchors is None:
      num_anchors = tf.shape(positive)[0]
    if seed is None:
      priority = tf.random.uniform([num_anchors])
    else:
      priority = tf.random.stateless_uniform([num_anchors], seed)

    def pick(candidates, k, count):
      """The `count` (<= k) candidates of highest priority, as bool [N]."""
      if isinstance(num_anchors, int):
        k = min(k, num_anchors)
      else:
        k = tf.minimum(k, num_anchors)
      scores = tf.where(candidates, priority, -1.0)
      values, indices = tf.math.top_k(scores, k=k)
      chosen = (values >= 0.0) & (tf.range(k) < count)
      chosen = tf.scatter_nd(indices[:, None], tf.cast(chosen, tf.int32),
                             [num_anchors])
      return chosen > 0

    sampled_positive = pick(positive, self.max_positives, self.max_positives)
    num_sampled_positive = tf.reduce_sum(tf.cast(sampled_positive, tf.int32))
    sampled_negative = pick(negative, self.batch_size_per_image,
                            self.batch_size_per_image - num_sampled_positive)
    return sampled_positive, sampled_negative

  def __call__(self, anchors, gt_boxes, valid=None, seed=None):
    """Labels and samples the anchors of one image.

    Args:
      anchors: float32 [N, 4] (ymin, xmin, ymax, xmax) pixels.
      gt_boxes: float [K, 4] pixels, same frame; K may be padded, 0 or
        unknown. Rows with zero area are padding.
      valid: optional bool [K] marking real rows (None: all rows real).
      seed: optional [2] int32/int64 stateless seed of the sampling; random
        when None.
    Returns:
      dict with
        score_targets: int32 [N]: 1 sampled positive, 0 sampled negative,
          -1 ignored or not sampled.
        box_targets: float32 [N, 4]: encode_boxes(matched box, anchor) for
          the sampled positives, zeros elsewhere.
        positive: bool [N], every positive anchor before sampling.
        negative: bool [N], every negative anchor before sampling.
        matched_gt: int32 [N], matched gt_boxes row of positives, else -1.
    """
    gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4])
    # Class-agnostic: every real row is "class 1" for the matcher.
    classes = tf.ones(tf.shape(gt_boxes)[:1], tf.int32)
    matched = self.matcher(anchors, gt_boxes, classes, valid)
    positive = matched["positive"]
    negative = ~positive & ~matched["ignore"]
    sampled_positive, sampled_negative = self._sample(positive, negative, seed)
    score_targets = tf.where(
        sampled_positive, tf.constant(1, tf.int32),
        tf.where(sampled_negative, tf.constant(0, tf.int32),
                 tf.constant(-1, tf.int32)))
    box_targets = tf.where(sampled_positive[:, None], matched["box_targets"],
                           0.0)
    return {
        "score_targets": score_targets,
        "box_targets": box_targets,
        "positive": positive,
        "negative": negative,
        "matched_gt": matched["matched_gt"],
    }

  def multilevel_targets(self, anchors, gt_boxes, valid=None, seed=None):
    """Labels one image and splits the targets per level.

    Args:
      anchors: a modeling.ops.anchors.Anchors.
      gt_boxes, valid, seed: as in __call__.
    Returns:
      dict with
        score_targets: dict str(level) -> int32 [H_l, W_l, A] (1/0/-1);
        box_targets: dict str(level) -> float32 [H_l, W_l, A * 4].
    """
    out = self(anchors.boxes(), gt_boxes, valid, seed)
    return {
        "score_targets": anchors.unpack_labels(out["score_targets"]),
        "box_targets": anchors.unpack_labels(out["box_targets"]),
    }
