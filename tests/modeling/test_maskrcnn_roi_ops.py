"""Tests for multi-level ROI Align and the Mask R-CNN mask ops."""

import math

import numpy as np
import pytest
import tensorflow as tf

from modeling.ops.mask_ops import mask_targets, paste_mask_numpy, paste_masks
from modeling.ops.roi_align import assign_levels, multilevel_roi_align

# --------------------------------------------------------------- ROI Align


def reference_bilinear(feature, y, x):
  """Detectron2's ROIAlign bilinear read of one point, written plainly."""
  height, width = feature.shape[:2]
  if y < -1.0 or y > height or x < -1.0 or x > width:
    return np.zeros(feature.shape[2])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_low = y_high = height - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_low = x_high = width - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  return ((1 - ly) * (1 - lx) * feature[y_low, x_low] +
          (1 - ly) * lx * feature[y_low, x_high] +
          ly * (1 - lx) * feature[y_high, x_low] +
          ly * lx * feature[y_high, x_high])


def reference_roi_align(features, boxes, output_size, ratio, canonical_size,
                        canonical_level, aligned):
  levels = sorted(int(k) for k in features)
  batch, count = boxes.shape[:2]
  channels = features[str(levels[0])].shape[-1]
  out = np.zeros((batch, count, output_size, output_size, channels))
  offset = 0.5 if aligned else 0.0
  for b in range(batch):
    for n in range(count):
      ymin, xmin, ymax, xmax = boxes[b, n].astype(np.float64)
      size = math.sqrt(max(ymax - ymin, 0) * max(xmax - xmin, 0))
      level = math.floor(canonical_level + math.log2(size / canonical_size))
      level = min(max(level, levels[0]), levels[-1])
      feature = features[str(level)][b].astype(np.float64)
      scale = 2.0 ** -level
      y0, x0 = ymin * scale - offset, xmin * scale - offset
      h, w = (ymax - ymin) * scale, (xmax - xmin) * scale
      if not aligned:
        h, w = max(h, 1.0), max(w, 1.0)
      bin_h, bin_w = h / output_size, w / output_size
      for i in range(output_size):
        for j in range(output_size):
          total = np.zeros(channels)
          for sy in range(ratio):
            for sx in range(ratio):
              y = y0 + i * bin_h + (sy + 0.5) * bin_h / ratio
              x = x0 + j * bin_w + (sx + 0.5) * bin_w / ratio
              total += reference_bilinear(feature, y, x)
          out[b, n, i, j] = total / ratio ** 2
  return out


def pyramid(batch=2, size=64, levels=(3, 4, 5), channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return {str(l): rng.normal(size=(batch, size >> l, size >> l, channels))
                  .astype(np.float32) for l in levels}


# Sizes sqrt(h * w) of 9.8 .. 70 px with canonical size 32 at level 4 reach
# levels 2 (clamped to 3), 3, 4 and 6 (clamped to 5); two boxes leave the
# image (the zero / clamped border reads) and one is thinner than a feature.
BOXES = np.array([[[3.2, 5.1, 13.0, 14.9], [10.5, 2.25, 30.7, 25.0],
                   [0.0, 0.0, 64.0, 64.0], [40.3, 44.4, 62.2, 63.1],
                   [-12.0, 50.0, 20.0, 75.0], [20.0, 20.0, 21.0, 52.0]],
                  [[30.1, 8.8, 47.7, 35.5], [1.0, 1.0, 63.0, 40.0],
                   [5.5, 5.5, 9.5, 9.5], [33.0, -4.0, 70.0, 20.0],
                   [12.6, 40.2, 52.9, 57.7], [8.0, 8.0, 40.0, 40.0]]],
                 np.float32)


# aligned=False is Model Garden's ROI Align, without the widening and the
# zero border of Detectron2's aligned=False that reference_roi_align
# implements: tests/modeling/test_roi_align_model_garden.py checks it.
@pytest.mark.parametrize("aligned", [True])
def test_roi_align_matches_reference(aligned):
  features = pyramid()
  out = multilevel_roi_align(features, BOXES, output_size=4, sampling_ratio=2,
                             canonical_size=32.0, aligned=aligned)
  assert out.shape == (2, 6, 4, 4, 3) and out.dtype == tf.float32
  expected = reference_roi_align(features, BOXES, 4, 2, 32.0, 4, aligned)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_roi_align_reads_the_assigned_level():
  # Each level constant = its level number: every bin reads its box's level.
  features = {str(l): np.full((2, 64 >> l, 64 >> l, 2), float(l), np.float32)
              for l in (3, 4, 5)}
  out = multilevel_roi_align(features, BOXES, output_size=2,
                             canonical_size=32.0).numpy()
  levels = assign_levels(BOXES, 3, 5, canonical_size=32.0).numpy()
  inside = np.all(BOXES >= 0, axis=-1) & np.all(BOXES <= 64, axis=-1)
  np.testing.assert_allclose(
      out[inside], np.broadcast_to(levels[inside][:, None, None, None],
                                   out[inside].shape), atol=1e-6)
  assert set(levels[inside].tolist()) == {3, 4, 5}


def test_assign_levels_follows_the_fpn_formula():
  def square(side):
    return [0.0, 0.0, side, side]
  boxes = np.array([square(224), square(112), square(448), square(223),
                    square(447.9), square(56), square(2000), square(1),
                    [5, 5, 5, 30], [0, 0, 112, 448]], np.float32)
  levels = assign_levels(boxes, 2, 6).numpy()
  np.testing.assert_array_equal(levels, [4, 3, 5, 3, 4, 2, 6, 2, 2, 4])
  rng = np.random.default_rng(0)
  sides = rng.uniform(1, 1500, size=(200, 2)).astype(np.float32)
  boxes = np.concatenate([np.zeros_like(sides), sides], axis=1)
  expected = np.clip(np.floor(4 + np.log2(np.sqrt(sides[:, 0] * sides[:, 1]) /
                                          224.0)), 3, 7)
  np.testing.assert_array_equal(assign_levels(boxes, 3, 7), expected)
  assert assign_levels(boxes[None], 3, 7).shape == (1, 200)


def test_roi_align_level_errors():
  features = pyramid(levels=(3, 4, 5, 6, 7), size=128)
  with pytest.raises(ValueError) as error:
    multilevel_roi_align(features, BOXES, min_level=2, max_level=6)
  message = str(error.value)
  assert "levels 2..6" in message and "[3, 4, 5, 6, 7]" in message
  gappy = {k: v for k, v in features.items() if k != "5"}
  with pytest.raises(ValueError, match=r"\[3, 4, 6, 7\] are not contiguous"):
    multilevel_roi_align(gappy, BOXES)
  mixed = dict(features, **{"4": features["4"][..., :2]})
  with pytest.raises(ValueError, match="same C on every level"):
    multilevel_roi_align(mixed, BOXES)
  # A narrower range that exists is fine: only levels 4..5 are read.
  out = multilevel_roi_align(features, BOXES, min_level=4, max_level=5)
  assert out.shape == (2, 6, 7, 7, 3)


def test_roi_align_xla_and_gradient():
  features = {k: tf.constant(v) for k, v in pyramid().items()}

  @tf.function(jit_compile=True)
  def align(features, boxes):
    return multilevel_roi_align(features, boxes, output_size=3,
                                canonical_size=32.0)

  np.testing.assert_allclose(
      align(features, BOXES),
      multilevel_roi_align(features, BOXES, output_size=3, canonical_size=32.0),
      atol=1e-5)
  with tf.GradientTape() as tape:
    tape.watch(features)
    total = tf.reduce_sum(multilevel_roi_align(features, BOXES, output_size=3,
                                               canonical_size=32.0))
  grads = tape.gradient(total, features)
  assert all(np.all(np.isfinite(g)) for g in grads.values())
  assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads.values())


def test_roi_align_bfloat16_features():
  features = {k: tf.cast(v, tf.bfloat16) for k, v in pyramid().items()}
  out = multilevel_roi_align(features, BOXES, output_size=3,
                             canonical_size=32.0)
  assert out.dtype == tf.bfloat16
  expected = multilevel_roi_align(pyramid(), BOXES, output_size=3,
                                  canonical_size=32.0)
  np.testing.assert_allclose(tf.cast(out, tf.float32), expected, atol=0.1)


# -------------------------------------------------------------- mask ops

GT_BOX = np.array([10.0, 20.0, 50.0, 100.0], np.float32)  # 40 x 80 px


def one_roi(values):
  return tf.constant(np.asarray(values, np.float32)[None, None])


def test_mask_target_of_roi_equal_to_box_is_the_mask():
  mask = np.ones((16, 16), np.float32)
  target = mask_targets(one_roi(GT_BOX), one_roi(GT_BOX), one_roi(mask),
                        output_size=28)
  assert target.shape == (1, 1, 28, 28) and target.dtype == tf.float32
  np.testing.assert_array_equal(target, 1.0)
  # A rectangle in the mask comes out as the same rectangle of the target.
  mask = np.zeros((16, 16), np.float32)
  mask[4:12, 8:16] = 1.0
  target = mask_targets(one_roi(GT_BOX), one_roi(GT_BOX), one_roi(mask),
                        output_size=8).numpy()[0, 0]
  expected = np.zeros((8, 8))
  expected[2:6, 4:8] = 1.0
  np.testing.assert_array_equal(target, expected)


def test_mask_target_of_right_half_roi():
  # Top-right quadrant of the object is foreground.
  mask = np.zeros((56, 56), np.float32)
  mask[:28, 28:] = 1.0
  ymin, xmin, ymax, xmax = GT_BOX
  right_half = [ymin, (xmin + xmax) / 2, ymax, xmax]
  target = mask_targets(one_roi(right_half), one_roi(GT_BOX), one_roi(mask),
                        output_size=28).numpy()[0, 0]
  expected = np.zeros((28, 28))
  expected[:14] = 1.0
  np.testing.assert_array_equal(target, expected)
  # An ROI sticking out of the box to the right: outside the box is 0.
  wider = [ymin, (xmin + xmax) / 2, ymax, xmax + 40]
  target = mask_targets(one_roi(wider), one_roi(GT_BOX), one_roi(mask),
                        output_size=28).numpy()[0, 0]
  expected = np.zeros((28, 28))
  expected[:14, :14] = 1.0
  np.testing.assert_array_equal(target, expected)


def test_mask_targets_batch_and_xla():
  rng = np.random.default_rng(0)
  masks = (rng.uniform(size=(2, 3, 12, 12)) > 0.5).astype(np.float32)
  gt = np.tile(GT_BOX, (2, 3, 1))
  rois = gt + rng.normal(scale=5, size=gt.shape).astype(np.float32)
  eager = mask_targets(rois, gt, masks, output_size=7)
  compiled = tf.function(mask_targets, jit_compile=True)(rois, gt, masks, 7)
  assert eager.shape == (2, 3, 7, 7)
  assert set(np.unique(eager)) <= {0.0, 1.0}
  np.testing.assert_array_equal(compiled, eager)
  # Each ROI is handled on its own: the batched result is per-row results.
  single = mask_targets(rois[1:2, 2:3], gt[1:2, 2:3], masks[1:2, 2:3], 7)
  np.testing.assert_array_equal(eager[1, 2], single[0, 0])


def test_paste_box_shaped_mask_at_the_right_pixels():
  masks = np.ones((1, 2, 8, 8), np.float32)
  boxes = np.array([[[2, 3, 6, 9], [0, 0, 0, 0]]], np.float32)
  pasted = paste_masks(masks, boxes, (10, 12)).numpy()
  assert pasted.shape == (1, 2, 10, 12)
  expected = np.zeros((10, 12))
  expected[2:6, 3:9] = 1.0
  np.testing.assert_array_equal(pasted[0, 0], expected)
  np.testing.assert_array_equal(pasted[0, 1], 0.0)  # empty box, empty mask
  np.testing.assert_array_equal(paste_mask_numpy(masks[0, 0], boxes[0, 0], 10,
                                                 12), expected)


def test_paste_then_target_round_trip_and_numpy_twin():
  rng = np.random.default_rng(1)
  masks = rng.uniform(size=(2, 3, 6, 6)).astype(np.float32)
  corners = rng.uniform(0, 30, size=(2, 3, 2)).astype(np.float32)
  sides = rng.uniform(5, 30, size=(2, 3, 2)).astype(np.float32)
  boxes = np.concatenate([corners, corners + sides], axis=-1)
  pasted = tf.function(paste_masks, jit_compile=True)(masks, boxes,
                                                      (48, 40)).numpy()
  for b in range(2):
    for n in range(3):
      np.testing.assert_allclose(
          pasted[b, n], paste_mask_numpy(masks[b, n], boxes[b, n], 48, 40),
          atol=1e-5)
  # A mask with one cell per pixel of an integer box is copied exactly.
  mask = rng.uniform(size=(4, 6)).astype(np.float32)
  pasted = paste_mask_numpy(mask, (4, 6, 8, 12), 12, 16)
  np.testing.assert_allclose(pasted[4:8, 6:12], mask, atol=1e-6)
  pasted[4:8, 6:12] = 0.0
  np.testing.assert_array_equal(pasted, 0.0)
