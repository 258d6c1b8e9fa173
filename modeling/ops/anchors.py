"""Multi-level anchor boxes for one-stage detectors (RetinaNet).

Anchor layout (the contract every user of the flat anchor list relies on):
- levels min_level..max_level; level l has stride 2^l and a grid of
  H_l = height / 2^l rows and W_l = width / 2^l columns;
- the anchor centres of cell (i, j) are ((i + 0.5) * stride, (j + 0.5) *
  stride) in pixels;
- every cell has A = num_scales * len(aspect_ratios) anchors, ordered scale
  major: anchor a = s * len(aspect_ratios) + r for scale s and ratio index r;
- anchor s, r has base side anchor_size * 2^l * 2^(s / num_scales), height
  side / sqrt(ratio) and width side * sqrt(ratio): an aspect ratio is
  width / height, and every anchor of one scale has the same area;
- boxes are (ymin, xmin, ymax, xmax) in pixels of the model input;
- the flat list is level major, then row, then column, then anchor, so a
  head output [B, H_l, W_l, A * k] reshaped to [B, H_l * W_l * A, k] and
  concatenated over levels lines up with `Anchors.boxes()`.
"""

import math

import numpy as np
import tensorflow as tf


class Anchors:
  """Anchors of an image of fixed size at levels min_level..max_level.

  The boxes are computed once in numpy at construction; the accessors return
  TensorFlow constants, so an Anchors object can be captured by a tf.data map
  function or a tf.function.

  Args:
    min_level, max_level: pyramid levels (1 <= min_level <= max_level).
    num_scales: scales per octave (RetinaNet: 3).
    aspect_ratios: sequence of width / height ratios (RetinaNet: 0.5, 1, 2).
    anchor_size: base side in units of the stride (SpineNet: 3 for 96 and
      smaller, 4 for 143 and larger).
    image_size: (height, width) in pixels; both must divide by 2^max_level.
  Raises:
    ValueError: for an impossible level range, non-positive scales/ratios/size,
      or an image size not divisible by 2^max_level.
  """

  def __init__(self, min_level, max_level, num_scales, aspect_ratios,
               anchor_size, image_size):
    if not 1 <= min_level <= max_level:
      raise ValueError(f"Anchors: impossible level range min_level="
                       f"{min_level}, max_level={max_level}; need 1 <= "
                       "min_level <= max_level.")
    if int(num_scales) < 1:
      raise ValueError(f"Anchors: num_scales must be >= 1, got {num_scales}.")
    aspect_ratios = tuple(float(r) for r in aspect_ratios)
    if not aspect_ratios or min(aspect_ratios) <= 0:
      raise ValueError("Anchors: aspect_ratios must be a non-empty sequence "
                       f"of positive width/height ratios, got {aspect_ratios}.")
    if anchor_size <= 0:
      raise ValueError(f"Anchors: anchor_size must be > 0, got {anchor_size}.")
    image_size = tuple(int(s) for s in image_size)
    stride = 2 ** max_level
    if len(image_size) != 2 or any(s <= 0 or s % stride for s in image_size):
      raise ValueError(
          f"Anchors: image_size {image_size} must be (height, width) with both "
          f"sides positive multiples of 2^max_level = {stride} "
          f"(max_level={max_level}).")
    self.min_level = int(min_level)
    self.max_level = int(max_level)
    self.num_scales = int(num_scales)
    self.aspect_ratios = aspect_ratios
    self.anchor_size = float(anchor_size)
    self.image_size = image_size
    self._levels = {}
    for level in range(self.min_level, self.max_level + 1):
      self._levels[str(level)] = self._level_boxes(level)

  @property
  def anchors_per_location(self):
    """A = num_scales * len(aspect_ratios)."""
    return self.num_scales * len(self.aspect_ratios)

  @property
  def levels(self):
    """The level keys, str(min_level)..str(max_level)."""
    return list(self._levels)

  def level_shape(self, level):
    """(H_l, W_l) of the level-`level` grid."""
    stride = 2 ** int(level)
    return (self.image_size[0] // stride, self.image_size[1] // stride)

  @property
  def num_anchors(self):
    """N, the total number of anchors over all levels."""
    return sum(b.shape[0] * b.shape[1] * self.anchors_per_location
               for b in self._levels.values())

  def _level_boxes(self, level):
    """numpy float32 [H_l, W_l, A * 4] boxes of one level."""
    stride = 2.0 ** level
    height, width = self.level_shape(level)
    sizes = []  # (half height, half width) per anchor, scale major.
    for scale in range(self.num_scales):
      side = self.anchor_size * stride * 2.0 ** (scale / self.num_scales)
      for ratio in self.aspect_ratios:
        sizes.append((side / math.sqrt(ratio) / 2.0,
                      side * math.sqrt(ratio) / 2.0))
    half = np.asarray(sizes, np.float64)                      # [A, 2]
    cy = (np.arange(height, dtype=np.float64) + 0.5) * stride  # [H]
    cx = (np.arange(width, dtype=np.float64) + 0.5) * stride   # [W]
    cy = cy[:, None, None]
    cx = cx[None, :, None]
    hh = half[None, None, :, 0]
    hw = half[None, None, :, 1]
    shape = (height, width, len(sizes))
    boxes = np.stack([np.broadcast_to(cy - hh, shape),
                      np.broadcast_to(cx - hw, shape),
                      np.broadcast_to(cy + hh, shape),
                      np.broadcast_to(cx + hw, shape)], axis=-1)
    return boxes.reshape(height, width, len(sizes) * 4).astype(np.float32)

  def multilevel_boxes_numpy(self):
    """dict str(level) -> numpy float32 [H_l, W_l, A * 4]."""
    return {k: v.copy() for k, v in self._levels.items()}

  def boxes_numpy(self):
    """numpy float32 [N, 4], the flat anchor list (see the module docstring)."""
    return np.concatenate([v.reshape(-1, 4) for v in self._levels.values()], 0)

  def multilevel_boxes(self):
    """dict str(level) -> float32 [H_l, W_l, A * 4] boxes, pixels."""
    return {k: tf.constant(v) for k, v in self._levels.items()}

  def boxes(self):
    """float32 tensor [N, 4]: level, row, column, anchor order; pixels."""
    return tf.constant(self.boxes_numpy())

  def unpack_labels(self, labels):
    """Splits per-anchor values in flat order into per-level grids.

    Args:
      labels: tensor [N, k] (or [N], treated as k = 1) in the flat anchor
        order of `boxes()`.
    Returns:
      dict str(level) -> [H_l, W_l, A * k] (for [N] input: [H_l, W_l, A]),
      same dtype as `labels`.
    Raises:
      ValueError: when the first dimension is not N.
    """
    labels = tf.convert_to_tensor(labels)
    n = labels.shape[0]
    if n is not None and n != self.num_anchors:
      raise ValueError(f"unpack_labels: labels have {n} rows, expected one "
                       f"per anchor ({self.num_anchors}).")
    if labels.shape.rank == 1:
      labels = labels[:, None]
    k = labels.shape[-1]
    outputs = {}
    start = 0
    for key in self._levels:
      height, width = self.level_shape(key)
      count = height * width * self.anchors_per_location
      outputs[key] = tf.reshape(labels[start:start + count],
                                [height, width, self.anchors_per_location * k])
      start += count
    return outputs

  def get_config(self):
    """Constructor arguments (plain Python values)."""
    return dict(min_level=self.min_level, max_level=self.max_level,
                num_scales=self.num_scales,
                aspect_ratios=list(self.aspect_ratios),
                anchor_size=self.anchor_size, image_size=list(self.image_size))


def flatten_levels(tensors, last_dim):
  """Concatenates per-level grids into the flat anchor order.

  Args:
    tensors: dict str(level) -> [batch, H_l, W_l, A * last_dim] (per-image
      [H_l, W_l, A * last_dim] also works if batch is absent: pass the dict of
      3-d tensors and read the result without the batch axis).
    last_dim: values per anchor (num_classes for class logits, 4 for boxes,
      1 for [B, H_l, W_l, A] class targets).
  Returns:
    [batch, N, last_dim] (or [N, last_dim]), levels in increasing order, then
    row, column, anchor: the order of Anchors.boxes().
  """
  flat = []
  for key in sorted(tensors, key=int):
    value = tf.convert_to_tensor(tensors[key])
    if value.shape[-1] is not None and value.shape[-1] % last_dim:
      raise ValueError(
          f"flatten_levels: level {key} has {value.shape[-1]} channels, not a "
          f"multiple of {last_dim} values per anchor.")
    if value.shape.rank == 4:
      batch = value.shape[0]
      if batch is None:
        batch = tf.shape(value)[0]
      per_image = -1  # Kept static when the grid is, for a dynamic batch.
      if value.shape[1:].is_fully_defined():
        per_image = value.shape[1:].num_elements() // last_dim
      flat.append(tf.reshape(value, [batch, per_image, last_dim]))
    elif value.shape.rank == 3:
      flat.append(tf.reshape(value, [-1, last_dim]))
    else:
      raise ValueError(f"flatten_levels: level {key} has shape {value.shape}; "
                       "expected [batch, H, W, A * k] or [H, W, A * k].")
  return tf.concat(flat, axis=-2)
