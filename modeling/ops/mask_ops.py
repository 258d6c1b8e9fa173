"""Mask R-CNN mask resampling: training targets and pasting into the image.

Both directions read a mask stored as a k_h x k_w grid over a box with one
rule: cell (p, q) of the grid holds the value at the cell centre
(ymin + (p + 0.5) * h / k_h, xmin + (q + 0.5) * w / k_w); between centres the
value is bilinear; between the outermost centres and the box edge it is the
edge value; outside the box it is 0. Resampling reads that function at the
centres of the output cells (ROI bins or image pixels), so a target computed
for an ROI equal to the box reproduces the mask, and pasting a mask back
reproduces it on the pixels of its box.

The reads are written as two interpolation matrices, out = R M C^T, each
row of R (C) holding the two bilinear weights of one output row (column):
pure matmuls with static shapes. tf.image.crop_and_resize would give the
same values inside the box but has no XLA kernel (checked with TF 2.21 on
XLA_CPU_JIT), and its extrapolation value cannot express the edge rule.
"""

import numpy as np
import tensorflow as tf


def _interpolation_matrix(points, start, length, cells):
  """Bilinear weights reading a `cells`-cell grid over [start, start + length].

  Args:
    points: float32 [..., P] positions to read, pixels.
    start, length: float32 [...], the box edge and side along this axis.
    cells: int, cells of the grid along this axis.
  Returns:
    float32 [..., P, cells]; all-zero rows for points outside the box (and
    for boxes of zero length).
  """
  start = start[..., None]
  length = length[..., None]
  inside = (points >= start) & (points <= start + length) & (length > 0.0)
  safe_length = tf.where(length > 0.0, length, 1.0)
  index = (points - start) / safe_length * float(cells) - 0.5
  index = tf.clip_by_value(index, 0.0, float(cells - 1))
  lower = tf.floor(index)
  fraction = index - lower
  lower = tf.cast(lower, tf.int32)
  upper = tf.minimum(lower + 1, cells - 1)
  weights = (tf.one_hot(lower, cells) * (1.0 - fraction)[..., None] +
             tf.one_hot(upper, cells) * fraction[..., None])
  return weights * tf.cast(inside, tf.float32)[..., None]


def _cell_centres(start, length, count):
  """[..., count] centres of `count` equal cells of [start, start + length]."""
  steps = (tf.range(count, dtype=tf.float32) + 0.5) / float(count)
  return start[..., None] + length[..., None] * steps


def _static_cells(masks, name):
  rank = masks.shape.rank
  if rank is None or rank < 2 or None in masks.shape[-2:]:
    raise ValueError(f"{name} must end in two static dimensions (mask rows, "
                     f"columns), got shape {masks.shape}.")
  return masks.shape[-2], masks.shape[-1]


def mask_targets(rois, matched_gt_boxes, matched_gt_masks, output_size=28):
  """Binary mask targets of sampled ROIs.

  Args:
    rois: float [B, S, 4] (ymin, xmin, ymax, xmax) pixels.
    matched_gt_boxes: float [B, S, 4] pixels, each ROI's ground-truth box.
    matched_gt_masks: float [B, S, K_h, K_w] each ROI's ground-truth mask,
      already cropped to its own ground-truth box and resized to K_h x K_w
      (the input pipeline's contract; e.g. 112 x 112), values in [0, 1].
      Gather them from the per-image masks with
      tf.gather(masks, tf.maximum(matched_gt_indices, 0), batch_dims=1).
    output_size: target side (Mask R-CNN: 28).
  Returns:
    float32 [B, S, output_size, output_size] in {0, 1}: the ground-truth mask
    read at the ROI's bin centres (see the module docstring), >= 0.5. Rows of
    background or ignored ROIs are meaningless; the loss must mask them.
  """
  output_size = int(output_size)
  if output_size < 1:
    raise ValueError(f"output_size must be >= 1, got {output_size}.")
  masks = tf.cast(matched_gt_masks, tf.float32)
  rows, cols = _static_cells(masks, "matched_gt_masks")
  rois = tf.cast(rois, tf.float32)
  gt = tf.cast(matched_gt_boxes, tf.float32)
  ys = _cell_centres(rois[..., 0], rois[..., 2] - rois[..., 0], output_size)
  xs = _cell_centres(rois[..., 1], rois[..., 3] - rois[..., 1], output_size)
  row_weights = _interpolation_matrix(ys, gt[..., 0], gt[..., 2] - gt[..., 0],
                                      rows)
  col_weights = _interpolation_matrix(xs, gt[..., 1], gt[..., 3] - gt[..., 1],
                                      cols)
  values = tf.matmul(tf.matmul(row_weights, masks), col_weights,
                     transpose_b=True)
  return tf.cast(values >= 0.5, tf.float32)


def paste_masks(masks, boxes, image_size):
  """Pastes box-relative masks into full-image masks.

  Args:
    masks: float [B, N, m_h, m_w] probabilities over each box (e.g. the
      28 x 28 mask head output of the detection's class, after sigmoid).
    boxes: float [B, N, 4] (ymin, xmin, ymax, xmax) pixels of the image.
    image_size: static (height, width) of the output in pixels.
  Returns:
    float32 [B, N, height, width] probabilities; pixel (r, c) reads the mask
    at its centre (r + 0.5, c + 0.5); 0 for pixels whose centre is outside
    the box.
  """
  height, width = (int(s) for s in image_size)
  if height < 1 or width < 1:
    raise ValueError(f"image_size must be two positive ints, got "
                     f"{image_size}.")
  masks = tf.cast(masks, tf.float32)
  rows, cols = _static_cells(masks, "masks")
  boxes = tf.cast(boxes, tf.float32)
  leading = tf.shape(boxes)[:-1]
  ys = tf.broadcast_to(tf.range(height, dtype=tf.float32) + 0.5,
                       tf.concat([leading, [height]], 0))
  xs = tf.broadcast_to(tf.range(width, dtype=tf.float32) + 0.5,
                       tf.concat([leading, [width]], 0))
  row_weights = _interpolation_matrix(ys, boxes[..., 0],
                                      boxes[..., 2] - boxes[..., 0], rows)
  col_weights = _interpolation_matrix(xs, boxes[..., 1],
                                      boxes[..., 3] - boxes[..., 1], cols)
  return tf.matmul(tf.matmul(row_weights, masks), col_weights,
                   transpose_b=True)


def _numpy_weights(points, start, length, cells):
  """numpy twin of _interpolation_matrix for one box: [P, cells]."""
  weights = np.zeros((points.shape[0], cells), np.float32)
  if length <= 0:
    return weights
  inside = (points >= start) & (points <= start + length)
  index = np.clip((points - start) / length * cells - 0.5, 0.0, cells - 1)
  lower = np.floor(index).astype(np.int64)
  upper = np.minimum(lower + 1, cells - 1)
  fraction = (index - lower).astype(np.float32)
  rows = np.arange(points.shape[0])
  np.add.at(weights, (rows, lower), (1.0 - fraction) * inside)
  np.add.at(weights, (rows, upper), fraction * inside)
  return weights


def paste_mask_numpy(mask, box, height, width):
  """Host-side paste of one mask (same values as paste_masks).

  For evaluation, where the image size varies from image to image.

  Args:
    mask: numpy [m_h, m_w] probabilities over the box.
    box: (ymin, xmin, ymax, xmax) pixels of the image.
    height, width: the image size in pixels.
  Returns:
    numpy float32 [height, width] probabilities, 0 outside the box.
  """
  mask = np.asarray(mask, np.float32)
  if mask.ndim != 2:
    raise ValueError(f"paste_mask_numpy: mask must be [rows, columns], got "
                     f"shape {mask.shape}.")
  ymin, xmin, ymax, xmax = (float(v) for v in box)
  row_weights = _numpy_weights(np.arange(height, dtype=np.float32) + 0.5,
                               ymin, ymax - ymin, mask.shape[0])
  col_weights = _numpy_weights(np.arange(width, dtype=np.float32) + 0.5,
                               xmin, xmax - xmin, mask.shape[1])
  return row_weights @ mask @ col_weights.T
