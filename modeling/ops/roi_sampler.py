"""Second-stage ROI sampling for Mask R-CNN training (Fast R-CNN §2.3).

Rules, per image (Fast R-CNN / Detectron2 / Model Garden):
- Candidates are the proposals, followed by the ground-truth boxes when
  mix_gt_boxes (so every object has at least one perfect foreground ROI,
  even early in training when the RPN proposes nothing useful).
- A ground truth is real when its class is >= 1 and its box has positive
  area; padded rows (class 0) never match anything. A candidate is real when
  it is a proposal with positive area (the zero rows of
  multilevel_proposals are not) or an appended real ground truth.
- Each real candidate is matched to the real ground truth of highest IoU
  (ties to the lowest index); with no real ground truth its IoU is 0.
  IoU >= foreground_iou: foreground; background_iou_low <= IoU <
  background_iou_high: background; anything else is never sampled as either.
- Exactly num_samples rows come out: up to floor(foreground_fraction *
  num_samples) foregrounds chosen at random, then backgrounds chosen at
  random for all the remaining rows; only when there are not enough
  backgrounds are the last rows filled with ignored rows (class -1, all-zero
  box), which every loss must skip. Rows are ordered foregrounds,
  backgrounds, ignored.

Static shapes throughout (top_k / argsort / gather only): XLA and TPU
friendly. The random choice comes from one uniform key per candidate; with a
seed the keys are stateless, so the same inputs and seed give the same
sample.
"""

import math
import numbers

import tensorflow as tf

from modeling.ops import box_ops


def _first_argmax(values):
  """argmax over the last axis, ties to the lowest index (int32)."""
  best = tf.reduce_max(values, axis=-1, keepdims=True)
  size = tf.shape(values)[-1]
  index = tf.range(size, dtype=tf.int32)
  return tf.reduce_min(tf.where(tf.equal(values, best), index, size), axis=-1)


def _uniform(shape, seed):
  """Uniform [0, 1) keys: stateless when seeded (int or shape-[2] seed)."""
  if seed is None:
    return tf.random.uniform(shape, dtype=tf.float32)
  if isinstance(seed, numbers.Integral):
    seed = [int(seed), 0]
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
  if seed.shape.rank != 1 or seed.shape[0] != 2:
    raise ValueError("seed must be None, an int or a shape-[2] integer tensor "
                     f"(a stateless seed), got shape {seed.shape}.")
  # Philox explicitly: "auto_select" picks another generator under XLA, and
  # the same seed would then sample differently with and without jit.
  return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32,
                                     alg="philox")


def _ranks(keys):
  """Rank of each entry when the last axis is sorted in decreasing order."""
  order = tf.argsort(keys, axis=-1, direction="DESCENDING", stable=True)
  return tf.argsort(order, axis=-1, stable=True)


def sample_rois(proposals, gt_boxes, gt_classes, num_samples=512,
                foreground_fraction=0.25, foreground_iou=0.5,
                background_iou_high=0.5, background_iou_low=0.0,
                mix_gt_boxes=True, seed=None):
  """Samples the ROIs the second stage trains on, with their targets.

  Args:
    proposals: float [B, N, 4] (ymin, xmin, ymax, xmax) pixels, e.g. the rois
      of multilevel_proposals; zero-area rows are padding.
    gt_boxes: float [B, M, 4] ground-truth boxes in the same frame.
    gt_classes: int [B, M] class ids 1..num_classes-1; 0 marks padding.
    num_samples: S, ROIs per image (Mask R-CNN: 512).
    foreground_fraction: at most floor(fraction * S) foregrounds (0.25).
    foreground_iou: IoU at or above which a candidate is foreground (0.5).
    background_iou_high, background_iou_low: a candidate with IoU in
      [low, high) is background ([0, 0.5)).
    mix_gt_boxes: append the ground truths to the candidates.
    seed: None (stateful random op), an int, or a shape-[2] int tensor used as
      a stateless seed; pass a per-step seed (e.g. [seed, step]) in training
      so the sample changes from step to step.
  Returns:
    dict with
      rois: float32 [B, S, 4] pixels; all-zero on ignored rows.
      classes: int32 [B, S]: the matched class for foregrounds, 0 for
        backgrounds, -1 for ignored rows.
      matched_gt_boxes: float32 [B, S, 4]: the matched ground-truth box for
        foregrounds, zeros elsewhere.
      matched_gt_indices: int32 [B, S]: row of gt_boxes matched to each
        foreground (use it to gather the ground-truth masks), -1 elsewhere.
      is_foreground: bool [B, S].
    No gradient flows through any output.
  Raises:
    ValueError: for bad counts, fractions, thresholds or shapes.
  """
  num_samples = int(num_samples)
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  if not 0.0 <= foreground_fraction <= 1.0:
    raise ValueError(f"foreground_fraction must be in [0, 1], got "
                     f"{foreground_fraction}.")
  if not (0.0 <= background_iou_low <= background_iou_high <= foreground_iou
          <= 1.0):
    raise ValueError(
        "Need 0 <= background_iou_low <= background_iou_high <= "
        f"foreground_iou <= 1, got background_iou_low={background_iou_low}, "
        f"background_iou_high={background_iou_high}, "
        f"foreground_iou={foreground_iou}.")
  proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))
  gt_boxes = tf.stop_gradient(tf.cast(gt_boxes, tf.float32))
  gt_classes = tf.cast(gt_classes, tf.int32)
  if proposals.shape.rank != 3 or proposals.shape[-1] != 4:
    raise ValueError(f"proposals must be [batch, N, 4], got {proposals.shape}.")
  if gt_boxes.shape.rank != 3 or gt_boxes.shape[-1] != 4:
    raise ValueError(f"gt_boxes must be [batch, M, 4], got {gt_boxes.shape}.")
  if gt_classes.shape.rank != 2:
    raise ValueError(f"gt_classes must be [batch, M], got {gt_classes.shape}.")
  batch = tf.shape(proposals)[0]

  # A dummy padded ground truth keeps M >= 1, so the reductions below are
  # defined for an image (or a batch) without any.
  gt_boxes = tf.concat([gt_boxes, tf.zeros([batch, 1, 4])], axis=1)
  gt_classes = tf.concat([gt_classes, tf.zeros([batch, 1], tf.int32)], axis=1)
  gt_real = (gt_classes > 0) & (box_ops.area(gt_boxes) > 0.0)

  candidates = proposals
  candidate_real = box_ops.area(proposals) > 0.0
  if mix_gt_boxes:
    candidates = tf.concat([proposals, gt_boxes], axis=1)
    candidate_real = tf.concat([candidate_real, gt_real], axis=1)
  count = candidates.shape[1]
  if count is None or count < num_samples:
    # Never sampled; they only give top_k enough rows.
    candidates = tf.pad(candidates, [[0, 0], [0, num_samples], [0, 0]])
    candidate_real = tf.pad(candidate_real, [[0, 0], [0, num_samples]])

  ious = tf.where(gt_real[:, None, :], box_ops.iou(candidates, gt_boxes),
                  -1.0)                                     # [B, N', M + 1]
  max_iou = tf.maximum(tf.reduce_max(ious, axis=-1), 0.0)
  matched = _first_argmax(ious)
  foreground = candidate_real & (max_iou >= foreground_iou)
  background = (candidate_real & ~foreground & (max_iou >= background_iou_low)
                & (max_iou < background_iou_high))

  keys = _uniform(tf.shape(max_iou), seed)
  max_foreground = int(math.floor(foreground_fraction * num_samples + 1e-6))
  foreground_rank = _ranks(tf.where(foreground, keys, -1.0))
  chosen_foreground = foreground & (foreground_rank < max_foreground)
  # Tiers 2 (chosen foreground), 1 (background), 0 (anything else), random
  # within a tier: the top S take every chosen foreground, then backgrounds.
  tier = (tf.cast(chosen_foreground, tf.float32) * 2.0 +
          tf.cast(background, tf.float32))
  _, index = tf.math.top_k(tier + keys, k=num_samples, sorted=True)

  is_foreground = tf.gather(chosen_foreground, index, batch_dims=1)
  is_background = tf.gather(background, index, batch_dims=1)
  rois = tf.gather(candidates, index, batch_dims=1)
  rois = tf.where((is_foreground | is_background)[..., None], rois, 0.0)
  gt_index = tf.gather(matched, index, batch_dims=1)
  classes = tf.where(is_foreground,
                     tf.gather(gt_classes, gt_index, batch_dims=1),
                     tf.where(is_background, 0, -1))
  matched_gt_boxes = tf.where(is_foreground[..., None],
                              tf.gather(gt_boxes, gt_index, batch_dims=1), 0.0)
  return {
      "rois": rois,
      "classes": classes,
      "matched_gt_boxes": matched_gt_boxes,
      "matched_gt_indices": tf.where(is_foreground, gt_index, -1),
      "is_foreground": is_foreground,
  }


def encode_box_targets(rois, matched_gt_boxes, classes,
                       weights=(10.0, 10.0, 5.0, 5.0)):
  """Fast R-CNN box-regression targets of sampled ROIs.

  Args:
    rois: float [B, S, 4] pixels (sample_rois()["rois"]).
    matched_gt_boxes: float [B, S, 4] pixels.
    classes: int [B, S]; rows with class >= 1 are foreground.
    weights: box coder weights (Mask R-CNN second stage: (10, 10, 5, 5)); the
      detection post-processing must decode with the same.
  Returns:
    float32 [B, S, 4] box_ops.encode_boxes(matched box, roi, weights) on
    foreground rows, zeros elsewhere.
  """
  rois = tf.cast(rois, tf.float32)
  foreground = (tf.cast(classes, tf.int32) > 0)[..., None]
  # Other rows (zero-area ignored rows among them) encode a unit box against
  # itself: finite zeros, never log(0) or a division by a zero side.
  unit = tf.constant([0.0, 0.0, 1.0, 1.0])
  deltas = box_ops.encode_boxes(
      tf.where(foreground, tf.cast(matched_gt_boxes, tf.float32), unit),
      tf.where(foreground, rois, unit), weights)
  return tf.where(foreground, deltas, 0.0)
