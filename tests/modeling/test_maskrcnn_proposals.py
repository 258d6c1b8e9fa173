"""Tests for the Mask R-CNN proposal and ROI-sampling ops."""

import numpy as np
import pytest
import tensorflow as tf

from modeling.ops import box_ops
from modeling.ops.anchors import Anchors
from modeling.ops.roi_sampler import encode_box_targets, sample_rois
from modeling.ops.rpn_proposals import multilevel_proposals


def np_iou(a, b):
  """[N, 4] x [M, 4] -> [N, M] IoU in numpy."""
  a = np.asarray(a, np.float64)[:, None]
  b = np.asarray(b, np.float64)[None]
  ih = np.maximum(np.minimum(a[..., 2], b[..., 2]) -
                  np.maximum(a[..., 0], b[..., 0]), 0)
  iw = np.maximum(np.minimum(a[..., 3], b[..., 3]) -
                  np.maximum(a[..., 1], b[..., 1]), 0)
  inter = ih * iw
  area = lambda x: (np.maximum(x[..., 2] - x[..., 0], 0) *
                    np.maximum(x[..., 3] - x[..., 1], 0))
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


# --------------------------------------------------------------- proposals


def rpn_anchors():
  # Levels 3..5 on 64 x 64: 8 x 8, 4 x 4, 2 x 2 cells, 3 anchors per cell.
  return Anchors(3, 5, 1, (0.5, 1.0, 2.0), 3.0, (64, 64))


def rpn_outputs(batch=2, seed=0, delta_scale=0.3):
  rng = np.random.default_rng(seed)
  scores, boxes = {}, {}
  for level in range(3, 6):
    side = 64 >> level
    scores[str(level)] = rng.normal(size=(batch, side, side, 3)).astype(
        np.float32) * 3
    boxes[str(level)] = rng.normal(size=(batch, side, side, 12)).astype(
        np.float32) * delta_scale
  return scores, boxes


def reference_proposals(scores, deltas, anchors, image_shape, pre, post, iou,
                        min_size):
  """Per-level top-k, decode, clip, filter, greedy NMS; merge; top post."""
  batch = next(iter(scores.values())).shape[0]
  out_boxes = np.zeros((batch, post, 4), np.float32)
  out_scores = np.zeros((batch, post), np.float32)
  for b in range(batch):
    height, width = image_shape[b]
    kept = []  # (score, box)
    for level in sorted(scores, key=int):
      logits = scores[level][b].reshape(-1)
      level_deltas = deltas[level][b].reshape(-1, 4)
      level_anchors = anchors[level].reshape(-1, 4)
      order = np.argsort(-logits, kind="stable")[:pre]
      boxes = box_ops.decode_boxes(level_deltas[order],
                                   level_anchors[order]).numpy()
      boxes = np.stack([np.clip(boxes[:, 0], 0, height),
                        np.clip(boxes[:, 1], 0, width),
                        np.clip(boxes[:, 2], 0, height),
                        np.clip(boxes[:, 3], 0, width)], axis=1)
      probs = 1 / (1 + np.exp(-logits[order].astype(np.float64)))
      h = boxes[:, 2] - boxes[:, 0]
      w = boxes[:, 3] - boxes[:, 1]
      ok = (h >= min_size) & (w >= min_size) & (h > 0) & (w > 0)
      chosen = []
      for i in np.flatnonzero(ok):
        if len(chosen) == min(post, len(order)):
          break
        if all(np_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] < iou
               for j in chosen):
          chosen.append(i)
      kept += [(probs[i], boxes[i], level) for i in chosen]
    kept.sort(key=lambda item: -item[0])
    kept = kept[:post]
    for row, (score, box, _) in enumerate(kept):
      out_boxes[b, row] = box
      out_scores[b, row] = score
  return out_boxes, out_scores


def test_proposals_match_reference_and_are_sorted_clipped():
  anchors = rpn_anchors()
  scores, deltas = rpn_outputs()
  image_shape = np.array([[64, 64], [48, 40]], np.float32)
  rois, roi_scores = multilevel_proposals(
      scores, deltas, anchors, image_shape, pre_nms_top_k=40,
      post_nms_top_k=50, nms_iou_threshold=0.5)
  assert rois.shape == (2, 50, 4) and roi_scores.shape == (2, 50)
  assert rois.dtype == tf.float32 and roi_scores.dtype == tf.float32
  rois, roi_scores = rois.numpy(), roi_scores.numpy()
  expected_boxes, expected_scores = reference_proposals(
      scores, deltas, anchors.multilevel_boxes_numpy(), image_shape, 40, 50,
      0.5, 0.0)
  np.testing.assert_allclose(rois, expected_boxes, atol=1e-4)
  np.testing.assert_allclose(roi_scores, expected_scores, atol=1e-6)
  for b, (height, width) in enumerate(image_shape):
    assert np.all(np.diff(roi_scores[b]) <= 0)  # decreasing
    assert np.all(rois[b, :, 0::2] <= height) and np.all(rois[b, :, 1::2] <=
                                                          width)
    assert np.all(rois[b] >= 0)
    real = box_ops.area(rois[b]).numpy() > 0
    assert real.sum() > 10


def test_proposals_nms_within_one_level():
  anchors = Anchors(3, 3, 1, (0.5, 1.0, 2.0), 3.0, (64, 64))
  scores, deltas = rpn_outputs(batch=1, seed=1)
  rois, _ = multilevel_proposals({"3": scores["3"]}, {"3": deltas["3"]},
                                 anchors, [64, 64], pre_nms_top_k=150,
                                 post_nms_top_k=150, nms_iou_threshold=0.7)
  rois = rois.numpy()[0]
  real = rois[box_ops.area(rois).numpy() > 0]
  ious = np_iou(real, real)
  np.fill_diagonal(ious, 0)
  assert ious.max() <= 0.7 + 1e-6
  # Without suppression many more boxes survive: NMS really removed some.
  loose, _ = multilevel_proposals({"3": scores["3"]}, {"3": deltas["3"]},
                                  anchors, [64, 64], pre_nms_top_k=150,
                                  post_nms_top_k=150, nms_iou_threshold=1.0)
  assert (box_ops.area(loose[0]).numpy() > 0).sum() > len(real)


def test_proposals_min_size_and_padding():
  anchors = rpn_anchors()
  scores, deltas = rpn_outputs(batch=1, delta_scale=0.0)  # boxes = anchors
  # 252 anchors in all, fewer than post_nms_top_k: the tail is padding.
  # (NMS at 1.0 only removes exact duplicates, the large anchors clipped to
  # the same box.)
  kwargs = dict(pre_nms_top_k=1000, post_nms_top_k=300, nms_iou_threshold=1.0)
  rois, roi_scores = multilevel_proposals(scores, deltas, anchors, [64, 64],
                                          **kwargs)
  assert rois.shape == (1, 300, 4)
  rois, roi_scores = rois.numpy()[0], roi_scores.numpy()[0]
  sides = np.minimum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1])
  count = np.sum(sides > 0)
  assert 200 < count < 252
  assert np.all(sides[:count] > 0)
  np.testing.assert_array_equal(rois[count:], 0.0)
  np.testing.assert_array_equal(roi_scores[count:], 0.0)
  assert sides[:count].min() < 15.0  # ratio-2 24-px anchors: width 17, clipped

  rois, roi_scores = multilevel_proposals(scores, deltas, anchors, [64, 64],
                                          min_size=15.0, **kwargs)
  rois, roi_scores = rois.numpy()[0], roi_scores.numpy()[0]
  sides = np.minimum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1])
  real = sides > 0
  assert 0 < real.sum() < count
  assert sides[real].min() >= 15.0
  np.testing.assert_array_equal(roi_scores[~real], 0.0)


def test_proposals_static_shapes_and_xla():
  anchors = rpn_anchors()
  scores, deltas = rpn_outputs()
  image_shape = tf.constant([[64, 64], [48, 40]], tf.float32)

  @tf.function(jit_compile=True)
  def propose(scores, deltas, image_shape):
    return multilevel_proposals(scores, deltas, anchors, image_shape,
                                pre_nms_top_k=40, post_nms_top_k=50)

  spec = propose.get_concrete_function(
      {k: tf.TensorSpec([None] + list(v.shape[1:])) for k, v in scores.items()},
      {k: tf.TensorSpec([None] + list(v.shape[1:])) for k, v in deltas.items()},
      tf.TensorSpec([None, 2])).structured_outputs
  assert spec[0].shape.as_list() == [None, 50, 4]
  assert spec[1].shape.as_list() == [None, 50]
  compiled = propose(scores, deltas, image_shape)
  eager = multilevel_proposals(scores, deltas, anchors, image_shape,
                               pre_nms_top_k=40, post_nms_top_k=50)
  np.testing.assert_allclose(compiled[0], eager[0], atol=1e-4)
  np.testing.assert_allclose(compiled[1], eager[1], atol=1e-6)


def test_proposals_accept_anchor_dicts():
  anchors = rpn_anchors()
  scores, deltas = rpn_outputs()
  kwargs = dict(pre_nms_top_k=30, post_nms_top_k=40)
  expected = multilevel_proposals(scores, deltas, anchors, [64, 64], **kwargs)
  shared = anchors.multilevel_boxes()
  per_image = {k: tf.stack([v, v]) for k, v in shared.items()}
  for given in (shared, per_image):
    got = multilevel_proposals(scores, deltas, given, [64, 64], **kwargs)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_proposals_errors():
  scores, deltas = rpn_outputs()
  anchors = rpn_anchors()
  with pytest.raises(ValueError, match=r"anchors cover levels \['3', '4'\]"):
    multilevel_proposals(scores, deltas, Anchors(3, 4, 1, (0.5, 1, 2), 3.0,
                                                 (64, 64)), [64, 64])
  bad = dict(deltas, **{"4": deltas["4"][..., :8]})
  with pytest.raises(ValueError, match="rpn_boxes need 12 channels, got 8"):
    multilevel_proposals(scores, bad, anchors, [64, 64])
  with pytest.raises(ValueError, match="anchor grid"):
    multilevel_proposals(scores, deltas, Anchors(3, 5, 1, (0.5, 1, 2), 3.0,
                                                 (128, 128)), [64, 64])
  with pytest.raises(ValueError, match="nms_iou_threshold"):
    multilevel_proposals(scores, deltas, anchors, [64, 64],
                         nms_iou_threshold=1.5)


# ------------------------------------------------------------- ROI sampler

GT_BOXES = np.array([[[10, 10, 50, 50], [60, 70, 100, 120], [0, 0, 0, 0],
                      [10, 10, 50, 50]],
                     [[20, 30, 80, 90], [0, 0, 0, 0], [0, 0, 0, 0],
                      [0, 0, 0, 0]]], np.float32)
# Row 3 of image 0 is padding (class 0) with the same box as row 0.
GT_CLASSES = np.array([[3, 7, 0, 0], [5, 0, 0, 0]], np.int32)


def jittered_proposals(n=300, seed=0):
  """Random boxes: many near the ground truths, many elsewhere."""
  rng = np.random.default_rng(seed)
  out = np.zeros((2, n, 4), np.float32)
  for b in range(2):
    real = GT_BOXES[b][GT_CLASSES[b] > 0]
    for i in range(n):
      if i % 2:
        box = real[i % len(real)] + rng.normal(scale=6, size=4)
      else:
        y, x = rng.uniform(0, 100, size=2)
        box = [y, x, y + rng.uniform(4, 28), x + rng.uniform(4, 28)]
      box = np.clip(box, 0, 128)
      out[b, i] = [min(box[0], box[2]), min(box[1], box[3]),
                   max(box[0], box[2]) + 1, max(box[1], box[3]) + 1]
  return out


def candidate_ious(proposals, b, mix=True):
  real = GT_CLASSES[b] > 0
  cands = proposals[b]
  if mix:
    cands = np.concatenate([cands, GT_BOXES[b][real]], 0)
  return np_iou(cands, GT_BOXES[b][real]).max(axis=1)


def test_sampler_counts_fraction_and_targets():
  proposals = jittered_proposals()
  out = {k: v.numpy() for k, v in sample_rois(
      proposals, GT_BOXES, GT_CLASSES, num_samples=64, seed=3).items()}
  assert out["rois"].shape == (2, 64, 4)
  assert out["matched_gt_boxes"].shape == (2, 64, 4)
  assert out["classes"].dtype == np.int32
  assert out["matched_gt_indices"].dtype == np.int32
  for b in range(2):
    best = candidate_ious(proposals, b)
    num_fg = min(np.sum(best >= 0.5), 16)
    num_bg = min(np.sum(best < 0.5), 64 - num_fg)
    fg = out["is_foreground"][b]
    assert fg.sum() == num_fg == 16  # more candidates than the quota
    assert np.sum(out["classes"][b] == 0) == num_bg == 48
    assert np.all(out["classes"][b] >= 0)
    rois = out["rois"][b]
    ious = np_iou(rois, GT_BOXES[b][GT_CLASSES[b] > 0]).max(axis=1)
    assert np.all(ious[fg] >= 0.5) and np.all(ious[~fg] < 0.5)
    index = out["matched_gt_indices"][b]
    np.testing.assert_array_equal(index[~fg], -1)
    np.testing.assert_array_equal(out["classes"][b][fg],
                                  GT_CLASSES[b][index[fg]])
    np.testing.assert_array_equal(out["matched_gt_boxes"][b][fg],
                                  GT_BOXES[b][index[fg]])
    np.testing.assert_array_equal(out["matched_gt_boxes"][b][~fg], 0.0)
    # Each foreground is matched to its best ground truth.
    np.testing.assert_array_equal(
        index[fg], np.argmax(np_iou(rois[fg], GT_BOXES[b][:2] if b == 0 else
                                    GT_BOXES[b][:1]), axis=1))


def test_sampler_appends_ground_truths():
  # Proposals far from every ground truth: the only foregrounds are the
  # appended ground truths themselves.
  proposals = np.tile(np.array([[[100, 0, 120, 8]]], np.float32), (2, 20, 1))
  proposals[:, :, 1] += np.arange(20)
  proposals[:, :, 3] += np.arange(20)
  out = sample_rois(proposals, GT_BOXES, GT_CLASSES, num_samples=16, seed=0)
  fg = out["is_foreground"].numpy()
  assert fg.sum(axis=1).tolist() == [2, 1]
  rois = out["rois"].numpy()
  np.testing.assert_array_equal(
      sorted(map(tuple, rois[0][fg[0]])), sorted(map(tuple, GT_BOXES[0][:2])))
  np.testing.assert_array_equal(rois[1][fg[1]], GT_BOXES[1][:1])
  assert np.all(out["classes"].numpy()[~fg] == 0)  # 20 backgrounds available
  without = sample_rois(proposals, GT_BOXES, GT_CLASSES, num_samples=16,
                        mix_gt_boxes=False, seed=0)
  assert not np.any(without["is_foreground"])


def test_sampler_never_matches_padded_ground_truths():
  # Proposals equal to the padded row 3 (same box as row 0, class 0) and to
  # a padded row with a box but class 0.
  gt_boxes = GT_BOXES.copy()
  gt_boxes[1, 1] = [0, 0, 40, 40]  # class 0: padding despite its box
  proposals = np.zeros((2, 8, 4), np.float32)
  proposals[0, :] = GT_BOXES[0, 3]
  proposals[1, :] = gt_boxes[1, 1]
  out = sample_rois(proposals, gt_boxes, GT_CLASSES, num_samples=8,
                    foreground_fraction=1.0, mix_gt_boxes=False, seed=0)
  index = out["matched_gt_indices"].numpy()
  assert 3 not in index[0] and 1 not in index[1]
  # Image 0: the boxes equal real row 0 and match it; image 1: background.
  np.testing.assert_array_equal(index[0], 0)
  np.testing.assert_array_equal(out["classes"][1], 0)


def test_sampler_fills_with_ignored_rows_and_handles_no_ground_truth():
  proposals = np.zeros((2, 6, 4), np.float32)
  proposals[:, :3] = [[10, 10, 50, 50], [100, 100, 120, 110], [0, 0, 0, 0]]
  gt_classes = GT_CLASSES.copy()
  gt_classes[1] = 0  # image 1 has no ground truth at all
  out = {k: v.numpy() for k, v in sample_rois(
      proposals, GT_BOXES, gt_classes, num_samples=12, seed=1).items()}
  # Image 0: candidates = 2 real proposals + 2 appended ground truths.
  assert np.sum(out["classes"][0] > 0) == 3   # proposal 0 + both gts
  assert np.sum(out["classes"][0] == 0) == 1
  assert np.sum(out["classes"][0] == -1) == 8
  ignored = out["classes"] == -1
  np.testing.assert_array_equal(out["rois"][ignored], 0.0)
  np.testing.assert_array_equal(out["matched_gt_indices"][ignored], -1)
  # Rows come foreground first, then background, then ignored.
  assert out["is_foreground"][0, :3].all()
  assert out["classes"][0, 3] == 0 and np.all(out["classes"][0, 4:] == -1)
  # Image 1: its two real proposals are backgrounds, the rest ignored.
  assert out["classes"][1].tolist() == [0, 0] + [-1] * 10
  assert not out["is_foreground"][1].any()


def test_sampler_is_deterministic_with_a_seed():
  proposals = jittered_proposals(seed=2)
  run = lambda seed: sample_rois(proposals, GT_BOXES, GT_CLASSES,
                                 num_samples=32, seed=seed)
  first, again, other = run(7), run(7), run(8)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert not np.array_equal(first["rois"], other["rois"])
  tensor_seed = run(tf.constant([7, 0]))
  np.testing.assert_array_equal(tensor_seed["rois"], first["rois"])


def test_sampler_compiles_with_xla():

  @tf.function(jit_compile=True)
  def sample(proposals, gt_boxes, gt_classes):
    return sample_rois(proposals, gt_boxes, gt_classes, num_samples=32,
                       seed=5)

  proposals = jittered_proposals(n=40)
  compiled = sample(proposals, GT_BOXES, GT_CLASSES)
  eager = sample_rois(proposals, GT_BOXES, GT_CLASSES, num_samples=32, seed=5)
  for key in eager:
    np.testing.assert_array_equal(compiled[key], eager[key])


def test_encode_box_targets():
  proposals = jittered_proposals(n=60)
  out = sample_rois(proposals, GT_BOXES, GT_CLASSES, num_samples=32, seed=0)
  targets = encode_box_targets(out["rois"], out["matched_gt_boxes"],
                               out["classes"]).numpy()
  fg = out["is_foreground"].numpy()
  expected = box_ops.encode_boxes(out["matched_gt_boxes"], out["rois"],
                                  (10, 10, 5, 5)).numpy()
  np.testing.assert_allclose(targets[fg], expected[fg], atol=1e-5)
  np.testing.assert_array_equal(targets[~fg], 0.0)
  assert np.all(np.isfinite(targets))


def test_sampler_errors():
  proposals = jittered_proposals(n=10)
  with pytest.raises(ValueError, match="background_iou_high <= foreground"):
    sample_rois(proposals, GT_BOXES, GT_CLASSES, foreground_iou=0.4)
  with pytest.raises(ValueError, match="foreground_fraction"):
    sample_rois(proposals, GT_BOXES, GT_CLASSES, foreground_fraction=1.5)
  with pytest.raises(ValueError, match=r"gt_boxes must be \[batch, M, 4\]"):
    sample_rois(proposals, GT_BOXES[0], GT_CLASSES)
