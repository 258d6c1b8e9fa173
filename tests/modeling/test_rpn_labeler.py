"""Tests of the RPN anchor labeler (modeling/ops/target_assigner.py)."""

import numpy as np
import pytest
import tensorflow as tf

from modeling.ops import box_ops
from modeling.ops.anchors import Anchors
from modeling.ops.anchors import flatten_levels
from modeling.ops.target_assigner import RpnAnchorLabeler

# Hand-made anchors with known IoUs against the ground truth [0, 0, 10, 10].
ANCHORS = tf.constant([
    [0, 0, 10, 10],          # 0: IoU 1.0
    [0, 0, 10, 13],          # 1: IoU 10/13 = 0.77
    [0, 0, 10, 20],          # 2: IoU 0.5
    [0, 0, 10, 40],          # 3: IoU 0.25
    [50, 50, 60, 60],        # 4: IoU 0
    [100, 100, 110, 110],    # 5: the best anchor of a small box
], tf.float32)


def _rpn_anchors(size=128):
  # The public Mask R-CNN layout: levels 3..7, 1 scale, 3 ratios, size 3.
  return Anchors(3, 7, 1, (0.5, 1.0, 2.0), 3.0, (size, size))


def test_thresholds_ignore_band_and_force_match():
  labeler = RpnAnchorLabeler()  # 256 per image: every anchor here is kept.
  gt = [[0, 0, 10, 10], [100, 100, 104, 104], [0, 0, 0, 0]]
  out = labeler(ANCHORS, gt, valid=[True, True, True], seed=[1, 2])
  # The small box reaches IoU 0.16 at best: positive only by force match.
  # The zero-area third row is padding and matches nothing.
  np.testing.assert_array_equal(out["score_targets"], [1, 1, -1, 0, 0, 1])
  np.testing.assert_array_equal(out["matched_gt"], [0, 0, -1, -1, -1, 1])
  np.testing.assert_array_equal(out["positive"], [1, 1, 0, 0, 0, 1])
  np.testing.assert_array_equal(out["negative"], [0, 0, 0, 1, 1, 0])
  np.testing.assert_allclose(out["box_targets"][0], np.zeros(4), atol=1e-6)
  np.testing.assert_allclose(
      out["box_targets"][5],
      box_ops.encode_boxes(tf.constant(gt[1], tf.float32), ANCHORS[5]),
      atol=1e-6)
  np.testing.assert_array_equal(out["box_targets"][2:5], np.zeros((3, 4)))

  no_force = RpnAnchorLabeler(force_match=False)(ANCHORS, gt, seed=[1, 2])
  assert int(no_force["score_targets"][5]) == 0


def test_thresholds_are_configurable():
  out = RpnAnchorLabeler(0.5, 0.2)(ANCHORS, [[0, 0, 10, 10]], seed=[3, 4])
  np.testing.assert_array_equal(out["score_targets"], [1, 1, 1, -1, 0, 0])


def _many_boxes(count, rng):
  """count random boxes of 24..64 px inside a 256 x 256 image."""
  side = rng.uniform(24, 64, size=(count, 2))
  corner = rng.uniform(0, 256 - side)
  return np.concatenate([corner, corner + side], axis=1).astype(np.float32)


@pytest.mark.parametrize("num_boxes", [0, 1, 3, 150])
def test_minibatch_counts(num_boxes):
  anchors = _rpn_anchors(256)
  rng = np.random.default_rng(num_boxes)
  if num_boxes > 100:
    # Square level-3 anchors of every other cell as ground truths: one
    # positive each, enough to hit the cap, and plenty of negatives left.
    squares = anchors.multilevel_boxes_numpy()["3"][::2, ::2, 4:8]
    boxes = squares.reshape(-1, 4)[
        rng.choice(16 * 16, num_boxes, replace=False)]
  else:
    boxes = _many_boxes(num_boxes, rng)
  labeler = RpnAnchorLabeler()
  out = labeler(anchors.boxes(), boxes, seed=[7, num_boxes])
  scores = out["score_targets"].numpy()
  positive, negative = out["positive"].numpy(), out["negative"].numpy()
  num_positive = positive.sum()
  if num_boxes > 100:
    assert num_positive >= 150  # The cap of 128 is exercised.
  sampled_positive = scores == 1
  sampled_negative = scores == 0
  assert sampled_positive.sum() == min(num_positive, 128)
  assert sampled_positive.sum() + sampled_negative.sum() == 256
  # Samples come from the right pools, everything else is ignored.
  assert positive[sampled_positive].all()
  assert negative[sampled_negative].all()
  assert set(np.unique(scores)) <= {-1, 0, 1}
  assert (scores == -1).sum() == anchors.num_anchors - 256
  # Box targets only on the sampled positives; they decode to their boxes.
  deltas = out["box_targets"].numpy()
  assert (deltas[~sampled_positive] == 0).all()
  matched = out["matched_gt"].numpy()[sampled_positive]
  decoded = box_ops.decode_boxes(deltas[sampled_positive],
                                 anchors.boxes_numpy()[sampled_positive])
  np.testing.assert_allclose(decoded, boxes.reshape(-1, 4)[matched],
                             atol=1e-3)


def test_few_negatives_gives_a_smaller_minibatch():
  # 6 anchors: 3 positives, 2 negatives, 1 ignored; nothing to pad with.
  out = RpnAnchorLabeler(batch_size_per_image=4, positive_fraction=0.5)(
      ANCHORS, [[0, 0, 10, 10], [100, 100, 104, 104]], seed=[5, 6])
  scores = out["score_targets"].numpy()
  assert (scores == 1).sum() == 2  # Capped at 4 * 0.5.
  assert (scores == 0).sum() == 2
  assert scores[2] == -1


def test_sampling_is_seeded_and_uniform():
  anchors = _rpn_anchors(256)
  boxes = _many_boxes(3, np.random.default_rng(0))
  labeler = RpnAnchorLabeler()
  first = labeler(anchors.boxes(), boxes, seed=[1, 1])["score_targets"]
  again = labeler(anchors.boxes(), boxes, seed=[1, 1])["score_targets"]
  other = labeler(anchors.boxes(), boxes, seed=[1, 2])["score_targets"]
  np.testing.assert_array_equal(first, again)
  assert (first.numpy() != other.numpy()).any()
  # Negatives are drawn from the whole image and every level, not from the
  # start of the flat anchor list.
  sampled = np.zeros(anchors.num_anchors, int)
  for seed in range(20):
    out = labeler(anchors.boxes(), boxes, seed=[seed, 0])
    sampled += out["score_targets"].numpy() == 0
  negative = out["negative"].numpy()
  num_positive = out["positive"].numpy().sum()
  assert 3 <= num_positive < 128
  levels = anchors.unpack_labels(tf.constant(sampled))
  assert all(int(tf.reduce_sum(v)) > 0 for v in levels.values())
  # About 20 * 256 / #negatives draws each; no anchor is always chosen.
  assert sampled[negative].max() < 20
  expected = 20 * (256 - num_positive) / negative.sum()
  assert abs(sampled[negative].mean() - expected) < 0.1 * expected + 1


def test_multilevel_targets_in_tf_data():
  anchors = _rpn_anchors()
  labeler = RpnAnchorLabeler()
  boxes = np.zeros((2, 4, 4), np.float32)
  boxes[0, :2] = [[20, 30, 60, 90], [70, 10, 100, 30]]
  valid = np.array([[True, True, False, False], [False] * 4])
  seeds = np.array([[1, 2], [3, 4]], np.int64)

  def parse(b, v, s):
    return labeler.multilevel_targets(anchors, b, v, s)

  dataset = tf.data.Dataset.from_tensor_slices((boxes, valid, seeds))
  dataset = dataset.map(parse).batch(2)
  spec = dataset.element_spec
  assert spec["score_targets"]["3"].shape.as_list() == [None, 16, 16, 3]
  assert spec["score_targets"]["7"].dtype == tf.int32
  assert spec["box_targets"]["7"].shape.as_list() == [None, 1, 1, 12]
  batch = next(iter(dataset))
  eager = labeler(anchors.boxes(), boxes[0], valid[0], seeds[0])
  np.testing.assert_array_equal(
      flatten_levels(batch["score_targets"], 1)[0, :, 0],
      eager["score_targets"])
  np.testing.assert_allclose(flatten_levels(batch["box_targets"], 4)[0],
                             eager["box_targets"])
  # The image without ground truth: 256 sampled negatives, no positive.
  second = flatten_levels(batch["score_targets"], 1)[1].numpy()
  assert (second == 0).sum() == 256 and (second == 1).sum() == 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="unmatched_threshold <= match"):
    RpnAnchorLabeler(match_threshold=0.3, unmatched_threshold=0.7)
  with pytest.raises(ValueError, match="batch_size_per_image"):
    RpnAnchorLabeler(batch_size_per_image=0)
  with pytest.raises(ValueError, match="positive_fraction"):
    RpnAnchorLabeler(positive_fraction=1.5)
