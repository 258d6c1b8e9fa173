"""Box arithmetic: IoU, Faster R-CNN box coding, clipping, normalisation.

Every box is (ymin, xmin, ymax, xmax) in the last dimension, float32. A box
with ymax <= ymin or xmax <= xmin has zero area; it overlaps nothing (IoU 0
with every box, itself included), which is what padded ground truths rely on.
"""

import math

import tensorflow as tf

# Largest log-scale delta decode_boxes accepts: a box at most 1000/16 times
# its anchor's side (Faster R-CNN / Detectron), so exp() never overflows.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Smallest side used by encode_boxes, keeping log() finite for degenerate
# boxes (callers should only encode boxes of positive size).
_MIN_SIDE = 1e-6


def _unstack(boxes):
  return tf.unstack(boxes, 4, axis=-1)


def area(boxes):
  """[..., 4] -> [...] area; zero for empty or inverted boxes."""
  ymin, xmin, ymax, xmax = _unstack(boxes)
  return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou(boxes_a, boxes_b):
  """Pairwise intersection over union.

  Args:
    boxes_a: float [..., N, 4].
    boxes_b: float [..., M, 4], same leading dimensions as boxes_a (or
      broadcastable to them).
  Returns:
    float32 [..., N, M] in [0, 1]. A pair whose union is empty (two zero-area
    boxes) has IoU 0, and a zero-area box has IoU 0 with any box.
  """
  boxes_a = tf.cast(boxes_a, tf.float32)
  boxes_b = tf.cast(boxes_b, tf.float32)
  a_ymin, a_xmin, a_ymax, a_xmax = [t[..., :, None] for t in _unstack(boxes_a)]
  b_ymin, b_xmin, b_ymax, b_xmax = [t[..., None, :] for t in _unstack(boxes_b)]
  inter_h = tf.maximum(tf.minimum(a_ymax, b_ymax) - tf.maximum(a_ymin, b_ymin),
                       0.0)
  inter_w = tf.maximum(tf.minimum(a_xmax, b_xmax) - tf.maximum(a_xmin, b_xmin),
                       0.0)
  intersection = inter_h * inter_w
  union = (area(boxes_a)[..., :, None] + area(boxes_b)[..., None, :] -
           intersection)
  # divide_no_nan: 0 / 0 (two empty boxes) is 0, not NaN.
  return tf.math.divide_no_nan(intersection, union)


def _check_weights(weights):
  if weights is None:
    return None
  weights = [float(w) for w in weights]
  if len(weights) != 4 or min(weights) <= 0:
    raise ValueError(f"Box coder weights must be 4 positive numbers (ty, tx, "
                     f"th, tw), e.g. (10, 10, 5, 5), got {weights}.")
  return weights


def _centre_size(boxes):
  ymin, xmin, ymax, xmax = _unstack(boxes)
  return ((ymin + ymax) * 0.5, (xmin + xmax) * 0.5, ymax - ymin, xmax - xmin)


def encode_boxes(boxes, anchors, weights=None):
  """Faster R-CNN box encoding of `boxes` relative to `anchors`.

  (ty, tx, th, tw) = ((cy - cya) / ha, (cx - cxa) / wa, log(h / ha),
  log(w / wa)), each multiplied by its weight.

  Args:
    boxes: float [..., 4] target boxes (ymin, xmin, ymax, xmax), positive size.
      Sides below 1e-6 are raised to 1e-6 so the result stays finite.
    anchors: float [..., 4], broadcastable to boxes, positive size.
    weights: None (all 1; RetinaNet) or 4 positive scales for (ty, tx, th, tw)
      (Mask R-CNN's second stage uses (10, 10, 5, 5)).
  Returns:
    float32 [..., 4] deltas (ty, tx, th, tw).
  """
  weights = _check_weights(weights)
  boxes = tf.cast(boxes, tf.float32)
  anchors = tf.cast(anchors, tf.float32)
  cy, cx, h, w = _centre_size(boxes)
  cya, cxa, ha, wa = _centre_size(anchors)
  h = tf.maximum(h, _MIN_SIDE)
  w = tf.maximum(w, _MIN_SIDE)
  deltas = tf.stack([(cy - cya) / ha, (cx - cxa) / wa, tf.math.log(h / ha),
                     tf.math.log(w / wa)], axis=-1)
  if weights is not None:
    deltas = deltas * tf.constant(weights, tf.float32)
  return deltas


def decode_boxes(deltas, anchors, weights=None):
  """Inverse of encode_boxes.

  Args:
    deltas: float [..., 4] (ty, tx, th, tw) as produced by encode_boxes with
      the same weights.
    anchors: float [..., 4], broadcastable to deltas.
    weights: see encode_boxes.
  Returns:
    float32 [..., 4] boxes (ymin, xmin, ymax, xmax) in the anchors' units.
    The log-scale deltas are clipped at log(1000 / 16) before exp().
  """
  weights = _check_weights(weights)
  deltas = tf.cast(deltas, tf.float32)
  anchors = tf.cast(anchors, tf.float32)
  if weights is not None:
    deltas = deltas / tf.constant(weights, tf.float32)
  ty, tx, th, tw = _unstack(deltas)
  th = tf.minimum(th, BBOX_XFORM_CLIP)
  tw = tf.minimum(tw, BBOX_XFORM_CLIP)
  cya, cxa, ha, wa = _centre_size(anchors)
  cy = ty * ha + cya
  cx = tx * wa + cxa
  h = tf.exp(th) * ha
  w = tf.exp(tw) * wa
  return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w],
                  axis=-1)


def clip_boxes(boxes, height, width):
  """Clips boxes to the image [0, height] x [0, width] (continuous pixels).

  Args:
    boxes: float [..., 4].
    height, width: numbers or tensors broadcastable to boxes[..., 0] (e.g.
      [batch, 1] for per-image sizes of boxes [batch, n, 4]).
  Returns:
    float32 [..., 4].
  """
  boxes = tf.cast(boxes, tf.float32)
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  ymin, xmin, ymax, xmax = _unstack(boxes)
  clip = lambda v, high: tf.maximum(tf.minimum(v, high), 0.0)
  return tf.stack([clip(ymin, height), clip(xmin, width), clip(ymax, height),
                   clip(xmax, width)], axis=-1)


def _scale(height, width):
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  return tf.stack([height, width, height, width], axis=-1)


def normalize_boxes(boxes, height, width):
  """Pixels -> [0, 1] coordinates: y / height, x / width. boxes [..., 4]."""
  scale = _scale(height, width)
  return tf.cast(boxes, tf.float32) / scale


def denormalize_boxes(boxes, height, width):
  """[0, 1] coordinates -> pixels: y * height, x * width. boxes [..., 4]."""
  scale = _scale(height, width)
  return tf.cast(boxes, tf.float32) * scale


def image_hw(image_size):
  """(height, width) float32, broadcastable against [batch, k] box columns.

  Args:
    image_size: (height, width), or [batch, 2] per-image sizes.
  Raises:
    ValueError: another rank.
  """
  size = tf.cast(tf.convert_to_tensor(image_size), tf.float32)
  if size.shape.rank == 2:  # [batch, 2]: one size per image.
    return size[:, 0:1], size[:, 1:2]
  if size.shape.rank == 1:
    return size[0], size[1]
  raise ValueError(f"image size must be [batch, 2] or [2] (height, width), "
                   f"got shape {size.shape}.")

