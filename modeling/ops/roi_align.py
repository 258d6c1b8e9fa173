"""Multi-level ROI Align (Mask R-CNN; FPN level assignment).

Level assignment (FPN paper, eq. 1): a box of size sqrt(h * w) pixels reads
level floor(canonical_level + log2(sqrt(h * w) / canonical_size)), clamped to
the levels present; 224 and 4 are the ImageNet-sized box and its level.

ROI Align (He et al., 2017; the bilinear rules of Detectron2's ROIAlign
kernel, which also define the edge cases of aligned=True):
- the box, divided by the level's stride 2^level, is split into
  output_size x output_size bins; each bin averages sampling_ratio^2
  bilinear samples at the centres of a sampling_ratio x sampling_ratio grid
  of sub-bins;
- aligned=True (the default; Detectron2's aligned=True): feature (i, j) of a
  level holds the input pixels [j * 2^l, (j + 1) * 2^l), so its centre is at
  (j + 0.5) * 2^l pixels, the same convention as the anchor centres of
  modeling.ops.anchors; a point p in level units is read at index p - 0.5.
  A sample in index coordinates below -1 or above the size (H_l or W_l) of
  its axis reads 0; otherwise it is clamped to [0, size - 1] before the
  bilinear weights are taken.
- aligned=False is Model Garden's ROI Align, the one its Mask R-CNN
  checkpoints were trained with (`tensorflow/models/official/vision/ops/
  spatial_transform_ops.py`, multilevel_crop_and_resize and
  _compute_grid_positions, sample_offset 0.5): index = p, no half-cell
  shift, and boxes of any size (the original Mask R-CNN kernel of Detectron
  also widens boxes narrower than one feature to one; Model Garden does
  not, and neither does this). Its edges: the lower neighbour is
  floor(index) clamped to [0, size - 1], the upper one lower + 1 clamped to
  size - 1, and the bilinear weights are taken from the unclamped index,
  so a sample below 0 extrapolates linearly from features 0 and 1 and one
  at or beyond size - 1 reads feature size - 1; nothing reads 0 (Model
  Garden's last index is H_min / 2^(l - min) - 1, the same as size - 1
  when the input is a multiple of 2^max_level, as the detectors require).
  With sampling_ratio=1 this is Model Garden's function, its sample
  positions computed in its order of operations
  (tests/modeling/test_roi_align_model_garden.py; against Model Garden
  2.20's multilevel_crop_and_resize on 600 random boxes over levels 3..7,
  thin, empty and border boxes included: 4.8e-7 apart, float32 rounding).
  Model Garden assigns levels with eq. 1 too, but without _LEVEL_EPSILON:
  a box within 0.0007% below 224 * 2^k pixels can land one level apart.

Implemented with gathers into the concatenated levels and an einsum: static
shapes, XLA / TPU friendly, differentiable with respect to the features.
"""

import tensorflow as tf

# Added to the log2 size so that exact powers of two land on their level
# whatever the rounding of the backend's log (1e-5 in log2 units is a size
# change of 0.0007%).
_LEVEL_EPSILON = 1e-5


def assign_levels(boxes, min_level, max_level, canonical_size=224.0,
                  canonical_level=4):
  """FPN level of each box.

  Args:
    boxes: float [..., 4] (ymin, xmin, ymax, xmax) pixels of the input.
    min_level, max_level: the levels available.
    canonical_size: box size in pixels read at canonical_level (224).
    canonical_level: 4.
  Returns:
    int32 [...] in [min_level, max_level]:
    floor(canonical_level + log2(sqrt(h * w) / canonical_size)), clamped.
    Zero-area boxes get min_level.
  """
  if int(min_level) > int(max_level):
    raise ValueError(f"assign_levels: min_level={min_level} > "
                     f"max_level={max_level}.")
  if canonical_size <= 0:
    raise ValueError(f"canonical_size must be > 0, got {canonical_size}.")
  boxes = tf.cast(boxes, tf.float32)
  height = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  width = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  size = tf.maximum(tf.sqrt(height * width), 1e-8)
  level = tf.floor(float(canonical_level) + _LEVEL_EPSILON +
                   tf.math.log(size / float(canonical_size)) /
                   tf.math.log(2.0))
  level = tf.clip_by_value(level, float(min_level), float(max_level))
  return tf.cast(level, tf.int32)


def _check_levels(features, min_level, max_level):
  """The sorted int levels to use; ValueError when they cannot be served."""
  if not features:
    raise ValueError("multilevel_roi_align: features is empty.")
  present = sorted(int(k) for k in features)
  if present != list(range(present[0], present[-1] + 1)):
    raise ValueError(f"multilevel_roi_align: feature levels {present} are not "
                     "contiguous.")
  low = present[0] if min_level is None else int(min_level)
  high = present[-1] if max_level is None else int(max_level)
  wanted = list(range(low, high + 1))
  if not wanted or any(level not in present for level in wanted):
    raise ValueError(
        f"multilevel_roi_align: asked for levels {low}..{high} ({wanted}) but "
        f"the features have levels {present}.")
  return wanted


def _axis_weights(low, high, size, output_size, sampling_ratio, aligned):
  """Bilinear indices and weights of the samples along one axis.

  Args:
    low, high: float32 [B, N] box edges in level units (pixels / stride).
    size: float32 [B, N], the level's extent along this axis (H_l or W_l).
    output_size, sampling_ratio: see multilevel_roi_align.
    aligned: see the module docstring.
  Returns:
    index: int32 [B, N, output_size, sampling_ratio * 2], the lower and upper
      neighbour of every sample (sample major).
    weight: float32, same shape: bilinear weight / sampling_ratio (aligned:
      zero for samples outside [-1, size]).
  """
  offset = 0.5 if aligned else 0.0
  start = low - offset
  length = high - low
  count = output_size * sampling_ratio
  # Sample p = bin * ratio + sub lies (p + 0.5) / ratio bins from the start.
  # Multiplied before dividing by output_size, in Model Garden's order
  # ((i + 0.5) * length / output_size), so that with one sample per bin the
  # positions are its float32 values exactly.
  steps = (tf.range(count, dtype=tf.float32) + 0.5) / float(sampling_ratio)
  points = start[..., None] + steps * length[..., None] / float(output_size)
  size = size[..., None]                                      # [B, N, 1]
  if aligned:
    inside = tf.cast((points >= -1.0) & (points <= size), tf.float32)
    points = tf.clip_by_value(points, 0.0, size - 1.0)
    lower = tf.floor(points)
  else:
    # Model Garden clamps the neighbours, not the point: below 0 the weights
    # extrapolate, beyond size - 1 both neighbours are the last feature.
    inside = tf.ones_like(points)
    lower = tf.clip_by_value(tf.floor(points), 0.0, size - 1.0)
  upper = tf.minimum(lower + 1.0, size - 1.0)
  fraction = points - lower
  scale = inside / float(sampling_ratio)
  index = tf.stack([lower, upper], axis=-1)
  weight = tf.stack([(1.0 - fraction) * scale, fraction * scale], axis=-1)
  shape = tf.concat([tf.shape(low), [output_size, sampling_ratio * 2]], 0)
  return (tf.reshape(tf.cast(index, tf.int32), shape),
          tf.reshape(weight, shape))


def multilevel_roi_align(features, boxes, output_size=7, sampling_ratio=2,
                         canonical_size=224.0, canonical_level=4,
                         min_level=None, max_level=None, aligned=True):
  """ROI Align of each box on its FPN level.

  Args:
    features: dict str(level) -> [B, H_l, W_l, C], contiguous levels, the
      same C on every level; level l has stride 2^l pixels.
    boxes: float [B, N, 4] (ymin, xmin, ymax, xmax) pixels of the input.
    output_size: bins per side (Fast R-CNN head: 7, mask head: 14).
    sampling_ratio: samples per bin per side (2: 4 samples per bin).
    canonical_size, canonical_level: see assign_levels.
    min_level, max_level: the levels boxes may be assigned to; default: all
      levels of `features`.
    aligned: True: Detectron2's half-pixel convention; False: Model
      Garden's (see the module docstring).
  Returns:
    [B, N, output_size, output_size, C] in the features' dtype.
  Raises:
    ValueError: for non-contiguous or missing levels (naming the levels
      present and those asked for), differing channels, or bad sizes.
  """
  output_size = int(output_size)
  sampling_ratio = int(sampling_ratio)
  if output_size < 1 or sampling_ratio < 1:
    raise ValueError(f"output_size and sampling_ratio must be >= 1, got "
                     f"{output_size} and {sampling_ratio}.")
  levels = _check_levels(features, min_level, max_level)
  tensors = [tf.convert_to_tensor(features[str(level)]) for level in levels]
  shapes = {level: t.shape.as_list() for level, t in zip(levels, tensors)}
  if (any(len(shape) != 4 for shape in shapes.values()) or
      len({shape[-1] for shape in shapes.values()}) != 1):
    raise ValueError("multilevel_roi_align: features must be [B, H_l, W_l, C] "
                     f"with the same C on every level, got shapes {shapes}.")
  boxes = tf.cast(boxes, tf.float32)
  if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"multilevel_roi_align: boxes must be [B, N, 4], got "
                     f"{boxes.shape}.")
  if (boxes.shape[0] is not None and tensors[0].shape[0] is not None and
      boxes.shape[0] != tensors[0].shape[0]):
    raise ValueError(f"multilevel_roi_align: boxes have batch {boxes.shape[0]} "
                     f"but the features have batch {tensors[0].shape[0]}.")
  dtype = tensors[0].dtype
  batch = tf.shape(tensors[0])[0]
  num_boxes = tf.shape(boxes)[1]
  num_channels = tensors[0].shape[-1]

  # All levels in one [B, sum(H_l * W_l), C] table; per-level offsets/sizes.
  heights = tf.stack([tf.shape(t)[1] for t in tensors])
  widths = tf.stack([tf.shape(t)[2] for t in tensors])
  offsets = tf.concat([[0], tf.cumsum(heights * widths)[:-1]], axis=0)
  table = tf.concat(
      [tf.reshape(t, [batch, -1, num_channels]) for t in tensors], axis=1)

  level = assign_levels(boxes, levels[0], levels[-1], canonical_size,
                        canonical_level)
  slot = level - levels[0]                                     # [B, N]
  scale = tf.pow(2.0, -tf.cast(level, tf.float32))
  height = tf.cast(tf.gather(heights, slot), tf.float32)
  width = tf.cast(tf.gather(widths, slot), tf.float32)
  level_boxes = boxes * scale[..., None]
  y_index, y_weight = _axis_weights(level_boxes[..., 0], level_boxes[..., 2],
                                    height, output_size, sampling_ratio,
                                    aligned)
  x_index, x_weight = _axis_weights(level_boxes[..., 1], level_boxes[..., 3],
                                    width, output_size, sampling_ratio,
                                    aligned)
  # Flat position of every (row sample, column sample) neighbour pair:
  # [B, N, out, 2 * ratio, out, 2 * ratio].
  flat = (tf.gather(offsets, slot)[..., None, None, None, None] +
          y_index[..., :, :, None, None] *
          tf.gather(widths, slot)[..., None, None, None, None] +
          x_index[..., None, None, :, :])
  values = tf.gather(table, tf.reshape(flat, [batch, -1]), batch_dims=1)
  q = 2 * sampling_ratio
  values = tf.reshape(values, [batch, num_boxes, output_size, q, output_size,
                               q, num_channels])
  return tf.einsum("bniqjrc,bniq,bnjr->bnijc", values,
                   tf.cast(y_weight, dtype), tf.cast(x_weight, dtype))
