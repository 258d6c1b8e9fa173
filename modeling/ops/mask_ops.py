"""Mask R-CNN mask resampling: training targets and pasting into the image.

Both directions read a mask stored as a k_h x k_w grid over a box with one
rule: cell (p, q) of the grid holds the value at the cell centre
(ymin + (p + 0.5) * h / k_h, xmin + (q + 0.5) * w / k_w); between centres the
value is bilinear; between the outermost centres and the box edge it is the
edge value; outside the box it is 0. Resampling reads that function at the
centres of the output cells (ROI bins or image pixels), so a target computed
for an ROI equal to the box reproduces the mask, and pasting a mask back
reproduces it on the pixels of its box.

Pasting rule (one implementation for serving and evaluation). Image pixel
(r, c) covers [r, r + 1) x [c, c + 1) in continuous coordinates and is
read at its centre (r + 0.5, c + 0.5); a box (ymin, xmin, ymax, xmax) covers
[ymin, ymax) x [xmin, xmax), so a pixel belongs to the box when its centre
does, and two boxes sharing an edge never both claim a pixel. The pasted
value is the mask's value at the pixel centre, binarised at MASK_THRESHOLD
= 0.5 (He et al., "Mask R-CNN", 2017, Sec. 3.1, Inference: the m x m mask
is resized to the RoI size and binarised at 0.5; pixel centres at
i + 0.5 with continuous box edges as Detectron2 pastes). `paste_masks` (the
served masks, in the graph) and `paste_mask_window` (the evaluated masks,
on the host, official/evaluation/coco_evaluator.py) compute it with the
same float32 operations in the same order (`_axis_sampling` and
`_bilinear`), so served and evaluated masks are the same pixels
(tests/official/test_mask_pasting.py).

The reads are written as two interpolation matrices, out = R M C^T, each
row of R (C) holding the two bilinear weights of one output row (column):
pure matmuls with static shapes. tf.image.crop_and_resize would give the
same values inside the box but has no XLA kernel (checked with TF 2.21 on
XLA_CPU_JIT), and its extrapolation value cannot express the edge rule.
"""

import numpy as np
import tensorflow as tf


# A pasted mask probability at or above this is foreground (Mask R-CNN,
# Sec. 3.1).
MASK_THRESHOLD = 0.5


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


class _NumpyOps:
  """The array operations _axis_sampling needs, on numpy arrays."""
  where = staticmethod(np.where)
  clip = staticmethod(np.clip)
  floor = staticmethod(np.floor)
  minimum = staticmethod(np.minimum)
  ones_like = staticmethod(np.ones_like)
  cast = staticmethod(lambda x, dtype: x.astype(dtype))


class _TensorOps:
  """The same operations on TF tensors (graph and XLA compatible)."""
  where = staticmethod(tf.where)
  clip = staticmethod(tf.clip_by_value)
  floor = staticmethod(tf.floor)
  minimum = staticmethod(tf.minimum)
  ones_like = staticmethod(tf.ones_like)
  cast = staticmethod(tf.cast)


def _axis_sampling(xp, centres, start, end, cells):
  """Where pixel centres read a mask along one axis; numpy or TF, float32.

  The one place of the pasting rule (module docstring). Written against an
  operation namespace so that the host (numpy) and graph (TF) versions run
  the same float32 operations in the same order.

  Args:
    xp: _NumpyOps or _TensorOps.
    centres: float32 [..., P] pixel centres (pixel index + 0.5).
    start, end: float32 [..., 1] the box edges along this axis, pixels.
    cells: int, mask cells along this axis.
  Returns:
    (low, high, fraction, inside): int32 [..., P] the two cells read,
    float32 [..., P] the weight of `high`, float32 [..., P] 1 for centres in
    [start, end) of a non-empty box, else 0.
  """
  length = end - start
  inside = (centres >= start) & (centres < end) & (length > 0.0)
  safe_length = xp.where(length > 0.0, length, xp.ones_like(length))
  position = (centres - start) / safe_length * np.float32(cells) - np.float32(
      0.5)
  position = xp.clip(position, np.float32(0.0), np.float32(cells - 1))
  low = xp.floor(position)
  fraction = position - low
  low = xp.cast(low, np.int32)
  high = xp.minimum(low + 1, np.int32(cells - 1))
  return low, high, fraction, xp.cast(inside, np.float32)


def _bilinear(rows_low, rows_high, fy, fx_take, fx):
  """(1 - fy) * rows_low + fy * rows_high, then the same along columns.

  rows_low/high: [..., H, m_w] mask rows read at each pixel row; fy
  [..., H, 1]; fx_take(rows) -> (columns low, columns high) [..., H, W];
  fx [..., 1, W]. Shared by the numpy and TF pastes (module docstring).
  """
  rows = (1.0 - fy) * rows_low + fy * rows_high
  low, high = fx_take(rows)
  return (1.0 - fx) * low + fx * high


def paste_masks(masks, boxes, image_size):
  """Pastes box-relative masks into full-image masks (the served masks).

  The pasting rule of the module docstring: pixel (r, c) reads the mask at
  its centre (r + 0.5, c + 0.5) when that centre is in [ymin, ymax) x
  [xmin, xmax); threshold the result at MASK_THRESHOLD for binary masks.

  Args:
    masks: float [B, N, m_h, m_w] probabilities over each box (e.g. the
      28 x 28 mask head output of the detection's class, after sigmoid).
    boxes: float [B, N, 4] (ymin, xmin, ymax, xmax) pixels of the image.
    image_size: (height, width) of the output in pixels: ints, or int32
      scalar tensors (the sizes of a served batch).
  Returns:
    float32 [B, N, height, width] probabilities; 0 for pixels whose centre
    is outside the box.
  Raises:
    ValueError: for static sizes < 1, or masks without static m_h, m_w.
  """
  height, width = image_size
  for name, size in (("height", height), ("width", width)):
    if isinstance(size, (int, np.integer)) and size < 1:
      raise ValueError(f"paste_masks: image_size must be positive, got "
                       f"{name} {size} in {image_size}.")
  masks = tf.cast(masks, tf.float32)
  rows, cols = _static_cells(masks, "masks")
  boxes = tf.cast(boxes, tf.float32)
  ys = tf.range(height, dtype=tf.float32) + 0.5
  xs = tf.range(width, dtype=tf.float32) + 0.5
  low_y, high_y, fy, in_y = _axis_sampling(
      _TensorOps, ys, boxes[..., 0:1], boxes[..., 2:3], rows)     # [B, N, H]
  low_x, high_x, fx, in_x = _axis_sampling(
      _TensorOps, xs, boxes[..., 1:2], boxes[..., 3:4], cols)     # [B, N, W]

  def take_columns(values):                                 # [B, N, H, m_w]
    take = lambda index: tf.gather(values, index, axis=3, batch_dims=2)
    return take(low_x), take(high_x)

  values = _bilinear(
      tf.gather(masks, low_y, axis=2, batch_dims=2),
      tf.gather(masks, high_y, axis=2, batch_dims=2), fy[..., None],
      take_columns, fx[..., None, :])
  return values * in_y[..., :, None] * in_x[..., None, :]


def _window(start, end, length):
  """Pixels [first, last) that can have their centre in [start, end)."""
  first = min(max(int(np.floor(start)) - 1, 0), length)
  last = max(min(int(np.ceil(end)) + 1, length), first)
  return first, last


def paste_mask_window(mask, box, height, width):
  """Host-side paste of one mask into the part of the image its box covers.

  The same pixels and float32 values as paste_masks (module docstring),
  computed only on a window around the box, so the memory is that of the
  box, not of the image (the COCO evaluator pastes every detection).

  Args:
    mask: [m_h, m_w] probabilities over the box.
    box: 4 numbers (ymin, xmin, ymax, xmax), pixels of the image; it may
      extend beyond the image; non-finite or empty boxes paste nothing.
    height, width: ints, the image size in pixels.
  Returns:
    (top, left, values): the window's first pixel row and column and
    float32 [rows, columns] probabilities of the pixels from there (0
    outside the box; rows or columns may be 0).
  Raises:
    ValueError: for a mask that is not 2-D.
  """
  mask = np.asarray(mask, np.float32)
  if mask.ndim != 2:
    raise ValueError(f"paste_mask_window: mask must be [rows, columns], got "
                     f"shape {mask.shape}.")
  box = np.asarray(box, np.float32).reshape(4)
  if not np.all(np.isfinite(box)):  # A diverged model's NaN box.
    return 0, 0, np.zeros([0, 0], np.float32)
  top, bottom = _window(box[0], box[2], int(height))
  left, right = _window(box[1], box[3], int(width))
  ys = np.arange(top, bottom, dtype=np.float32) + np.float32(0.5)
  xs = np.arange(left, right, dtype=np.float32) + np.float32(0.5)
  low_y, high_y, fy, in_y = _axis_sampling(_NumpyOps, ys, box[0:1], box[2:3],
                                           mask.shape[0])
  low_x, high_x, fx, in_x = _axis_sampling(_NumpyOps, xs, box[1:2], box[3:4],
                                           mask.shape[1])
  values = _bilinear(mask[low_y], mask[high_y], fy[:, None],
                     lambda rows: (rows[:, low_x], rows[:, high_x]),
                     fx[None, :])
  return top, left, values * in_y[:, None] * in_x[None, :]


def paste_mask_numpy(mask, box, height, width):
  """Host-side paste of one mask into a full image (same values as paste_masks).

  Args:
    mask: numpy [m_h, m_w] probabilities over the box.
    box: (ymin, xmin, ymax, xmax) pixels of the image.
    height, width: the image size in pixels.
  Returns:
    numpy float32 [height, width] probabilities, 0 outside the box.
  Raises:
    ValueError: for a mask that is not 2-D.
  """
  top, left, values = paste_mask_window(mask, box, height, width)
  pasted = np.zeros([int(height), int(width)], np.float32)
  pasted[top:top + values.shape[0], left:left + values.shape[1]] = values
  return pasted
