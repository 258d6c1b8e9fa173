"""ROI Align with aligned=False: Model Garden's sampling (modeling/ops/roi_align.py).

Model Garden's multilevel_crop_and_resize (`tensorflow/models/official/
vision/ops/spatial_transform_ops.py`, sample_offset 0.5) reads one bilinear
sample at the centre of each bin, at index = pixel / stride, for boxes of
any size; its neighbours are floor(index) clamped to the level, its weights
come from the unclamped index. The crops below are worked out by hand on a
feature that is linear in (y, x), where that rule reads 10 * min(y, H - 1) +
min(x, W - 1) at every index (the extrapolation below 0 continues the
line), and checked against a plain numpy version of the rule on random
features.
"""

import math

import numpy as np
import pytest

from modeling.ops.roi_align import multilevel_roi_align
from tests.modeling.test_maskrcnn_roi_ops import BOXES
from tests.modeling.test_maskrcnn_roi_ops import pyramid


def _linear_level3():
  """One level (3) of a 32-pixel image: feature[y, x] = 10 y + x, 4 x 4."""
  y, x = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
  return {"3": (10.0 * y + x)[None, :, :, None].astype(np.float32)}


def test_one_sample_per_bin_equals_the_hand_computed_crop():
  boxes = np.array([[
      # Level units (pixels / 8): y 0.5..2.5, x 1..3.5; 2 x 2 bins of
      # 1 x 1.25, centres y 1, 2 and x 1.625, 2.875.
      [4.0, 8.0, 20.0, 28.0],
      # 1/8 of a feature high: y 1..1.125, centres 1.03125 and 1.09375 (the
      # original Mask R-CNN kernel would widen it to y 1..2: 1.25, 1.75);
      # x 1..3, centres 1.5 and 2.5.
      [8.0, 8.0, 9.0, 24.0],
      # Leaves the image: y -1..1, centres -0.5 (extrapolated: -5) and 0.5;
      # x 2..5, centres 2.75 and 4.25 (beyond the last feature: reads x = 3).
      [-8.0, 16.0, 8.0, 40.0]]], np.float32)
  out = multilevel_roi_align(_linear_level3(), boxes, output_size=2,
                             sampling_ratio=1, aligned=False).numpy()
  expected = np.array([[[11.625, 12.875], [21.625, 22.875]],
                       [[11.8125, 12.8125], [12.4375, 13.4375]],
                       [[-2.25, -2.0], [7.75, 8.0]]], np.float32)
  np.testing.assert_allclose(out[0, ..., 0], expected, rtol=0, atol=1e-5)

  # Detectron2's convention (the default) reads elsewhere: half a cell
  # earlier, and zero below -1.
  aligned = multilevel_roi_align(_linear_level3(), boxes, output_size=2,
                                 sampling_ratio=1).numpy()
  np.testing.assert_allclose(aligned[0, 0, ..., 0],
                             expected[0] - 5.5, rtol=0, atol=1e-5)
  assert np.max(np.abs(aligned[0, 2, ..., 0] - expected[2])) > 1.0


def _model_garden_read(feature, y, x):
  """Model Garden's bilinear read at index (y, x): neighbours clamped,
  weights from the unclamped index."""
  height, width = feature.shape[:2]
  y0 = min(max(math.floor(y), 0), height - 1)
  x0 = min(max(math.floor(x), 0), width - 1)
  y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * feature[y0, x0] +
          (1 - ly) * lx * feature[y0, x1] +
          ly * (1 - lx) * feature[y1, x0] + ly * lx * feature[y1, x1])


def _model_garden_roi_align(features, boxes, output_size, ratio,
                            canonical_size):
  levels = sorted(int(k) for k in features)
  batch, count = boxes.shape[:2]
  channels = features[str(levels[0])].shape[-1]
  out = np.zeros((batch, count, output_size, output_size, channels))
  for b in range(batch):
    for n in range(count):
      ymin, xmin, ymax, xmax = boxes[b, n].astype(np.float64)
      size = math.sqrt(max(ymax - ymin, 0) * max(xmax - xmin, 0))
      level = math.floor(4 + math.log2(size / canonical_size))
      level = min(max(level, levels[0]), levels[-1])
      feature = features[str(level)][b].astype(np.float64)
      scale = 2.0 ** -level
      bin_h = (ymax - ymin) * scale / output_size
      bin_w = (xmax - xmin) * scale / output_size
      for i in range(output_size):
        for j in range(output_size):
          total = np.zeros(channels)
          for sy in range(ratio):
            for sx in range(ratio):
              total += _model_garden_read(
                  feature, ymin * scale + (i + (sy + 0.5) / ratio) * bin_h,
                  xmin * scale + (j + (sx + 0.5) / ratio) * bin_w)
          out[b, n, i, j] = total / ratio ** 2
  return out


@pytest.mark.parametrize("ratio", [1, 2])
def test_unaligned_matches_model_gardens_rule_on_every_level(ratio):
  # BOXES reach levels 3..5, two leave the image and one is thinner than a
  # feature (tests/modeling/test_maskrcnn_roi_ops.py).
  features = pyramid()
  out = multilevel_roi_align(features, BOXES, output_size=4,
                             sampling_ratio=ratio, canonical_size=32.0,
                             aligned=False).numpy()
  expected = _model_garden_roi_align(features, BOXES, 4, ratio, 32.0)
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
