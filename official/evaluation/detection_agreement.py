"""How closely two detectors' outputs agree on the same image.

Used to check an exported model against its source (TFLite against the
SavedModel; a quantized model against the float one). Detections of the
reference above `min_score` are matched one to one, greedily by IoU (same
class first), to the other's detections (any score); a pair agrees when IoU
>= iou_threshold and the classes are equal.
"""

import numpy as np


def box_iou(a, b):
  """IoU matrix of boxes a [n, 4] and b [m, 4] (ymin, xmin, ymax, xmax)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  top = np.maximum(a[:, None, 0], b[None, :, 0])
  left = np.maximum(a[:, None, 1], b[None, :, 1])
  bottom = np.minimum(a[:, None, 2], b[None, :, 2])
  right = np.minimum(a[:, None, 3], b[None, :, 3])
  inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _valid(detections):
  n = int(np.asarray(detections["num_detections"]).reshape(-1)[0])
  return (np.asarray(detections["detection_boxes"]).reshape(-1, 4)[:n],
          np.asarray(detections["detection_scores"]).reshape(-1)[:n],
          np.asarray(detections["detection_classes"]).reshape(-1)[:n])


def match_detections(reference, other, min_score=0.3, iou_threshold=0.9,
                     max_checked=None):
  """Matches one image's detections; returns agreement statistics.

  Args:
    reference, other: dicts with num_detections [1], detection_boxes
      [1, N, 4], detection_scores [1, N], detection_classes [1, N] (a
      serving signature's outputs for one image), boxes in the same pixels.
    min_score: reference detections below this are not checked.
    iou_threshold: a pair agrees when its IoU reaches this.
    max_checked: check at most this many of the best reference detections
      (None: all above min_score).
  Returns:
    dict: "checked" (reference detections >= min_score), "agreed" (of
    those, matched with IoU >= iou_threshold and the same class), "ious"
    (IoU of each checked detection with its match, 0 when unmatched),
    "same_class" (bool per checked detection), "score_diffs" (absolute
    score difference per matched detection).
  """
  ref_boxes, ref_scores, ref_classes = _valid(reference)
  boxes, scores, classes = _valid(other)
  checked = np.flatnonzero(ref_scores >= min_score)[:max_checked]
  ious = box_iou(ref_boxes[checked], boxes)
  taken = np.zeros(len(boxes), bool)
  best_ious, same_class, score_diffs = [], [], []
  for row, index in enumerate(checked):  # Best-scoring reference first.
    candidates = np.where(taken, -1.0, ious[row]) if len(boxes) else []
    if len(candidates) and candidates.max() > 0:
      # Among overlapping detections, one of the same class is preferred.
      same = np.where(classes == ref_classes[index], candidates, -1.0)
      match = int(np.argmax(same if same.max() > 0 else candidates))
      taken[match] = True
      best_ious.append(float(ious[row, match]))
      same_class.append(bool(classes[match] == ref_classes[index]))
      score_diffs.append(float(abs(scores[match] - ref_scores[index])))
    else:
      best_ious.append(0.0)
      same_class.append(False)
  best_ious = np.asarray(best_ious)
  same_class = np.asarray(same_class, bool)
  return {
      "checked": len(checked),
      "agreed": int(np.sum((best_ious >= iou_threshold) & same_class)),
      "ious": best_ious,
      "same_class": same_class,
      "score_diffs": np.asarray(score_diffs),
  }
