"""RetinaNet post-processing: decode, top-k, class-aware NMS, static shapes.

Class convention (shared with the losses and the labeler): the head predicts
num_classes columns per anchor and column c is class id c. Column 0 is
background: it is never trained as a class and never output, so detections
have class ids 1..num_classes-1. For COCO, num_classes = 91 and the ids are
COCO's own category ids (1..90, some unused).

Steps, per image, with static shapes throughout:
1. sigmoid scores of columns 1..C-1 for all N anchors of all levels;
2. top pre_nms_top_k (anchor, class) pairs over all levels, anchors and
   classes together;
3. decode only those boxes, clip them to the image;
4. class-aware NMS (IoU nms_iou_threshold, score > score_threshold), keep the
   best max_detections, pad the rest with zeros (class 0).

Three NMS implementations give the same detections:
- "combined": tf.image.combined_non_max_suppression (CPU/GPU kernels);
- "batched": classes separated by shifting each box by class_id * offset,
  then one tf.image.non_max_suppression_padded over the batch. Pure TF ops
  with static shapes: XLA / TPU compatible.
- "tflite": the same class shift, then one NonMaxSuppressionV5 per image,
  a TFLite builtin op (needs a static batch size; exports use batch 1).
"""

import tensorflow as tf

from modeling.ops import box_ops
from modeling.ops.anchors import Anchors, flatten_levels

NMS_METHODS = ("combined", "batched", "tflite")


def multilevel_detections(cls_logits, box_deltas, anchors, image_size,
                          num_classes=None, pre_nms_top_k=5000,
                          score_threshold=0.05, nms_iou_threshold=0.5,
                          max_detections=100, box_coder_weights=None,
                          nms_method="combined"):
  """Detections from RetinaNet head outputs.

  Args:
    cls_logits: dict str(level) -> [B, H_l, W_l, A * num_classes] logits.
    box_deltas: dict str(level) -> [B, H_l, W_l, A * 4] encoded boxes.
    anchors: an Anchors for the model input, or float32 [N, 4] anchors in the
      flat order of Anchors.boxes().
    image_size: (height, width) of the model input in pixels (the boxes are
      clipped to it), or int/float [B, 2] per-image sizes (e.g. the unpadded
      part of each image).
    num_classes: columns per anchor including background; inferred from the
      channels when None.
    pre_nms_top_k: (anchor, class) candidates kept per image before NMS.
    score_threshold: detections need a score above this.
    nms_iou_threshold: NMS suppresses a box overlapping a better one of the
      same class with IoU above this.
    max_detections: detections per image (output size).
    box_coder_weights: the weights the targets were encoded with.
    nms_method: "combined" or "batched" (see the module docstring).
  Returns:
    dict with
      boxes: float32 [B, max_detections, 4] (ymin, xmin, ymax, xmax), pixels
        of the model input, clipped to image_size;
      scores: float32 [B, max_detections], sigmoid probabilities, descending;
      classes: int32 [B, max_detections], 1..num_classes-1;
      num_detections: int32 [B].
    Entries at and after num_detections are zero (class 0).
  Raises:
    ValueError: for mismatched levels, channels or anchor counts.
  """
  if nms_method not in NMS_METHODS:
    raise ValueError(f"nms_method must be one of {NMS_METHODS}, got "
                     f"{nms_method!r}.")
  levels = sorted(cls_logits, key=int)
  if sorted(box_deltas, key=int) != levels:
    raise ValueError(f"cls_logits levels {levels} and box_deltas levels "
                     f"{sorted(box_deltas, key=int)} differ.")
  if isinstance(anchors, Anchors):
    if anchors.levels != levels:
      raise ValueError(f"The head outputs levels {levels} but the anchors "
                       f"cover levels {anchors.levels}.")
    anchors = anchors.boxes()
  anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)

  first = levels[0]
  num_anchors_per_location = box_deltas[first].shape[-1] // 4
  channels = cls_logits[first].shape[-1]
  if channels % num_anchors_per_location:
    raise ValueError(
        f"cls_logits level {first} has {channels} channels, not a multiple of "
        f"the {num_anchors_per_location} anchors per location implied by "
        f"box_deltas ({box_deltas[first].shape[-1]} channels).")
  inferred = channels // num_anchors_per_location
  if num_classes is None:
    num_classes = inferred
  elif num_classes != inferred:
    raise ValueError(
        f"num_classes={num_classes} but cls_logits level {first} has "
        f"{channels} channels = {num_anchors_per_location} anchors x "
        f"{inferred} classes.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2 (column 0 is background), "
                     f"got {num_classes}.")

  logits = flatten_levels(cls_logits, num_classes)   # [B, N, C]
  deltas = flatten_levels(box_deltas, 4)             # [B, N, 4]
  if (logits.shape[1] is not None and anchors.shape[0] is not None and
      logits.shape[1] != anchors.shape[0]):
    raise ValueError(f"The head outputs {logits.shape[1]} anchors per image "
                     f"but {anchors.shape[0]} anchors were given.")
  num_real = num_classes - 1
  scores = tf.sigmoid(tf.cast(logits[..., 1:], tf.float32))
  batch = logits.shape[0]
  if batch is None:
    batch = tf.shape(logits)[0]
  per_image = -1 if logits.shape[1] is None else logits.shape[1] * num_real
  scores = tf.reshape(scores, [batch, per_image])       # [B, N * (C - 1)]
  k = min(int(pre_nms_top_k), int(scores.shape[1]))
  top_scores, top_index = tf.math.top_k(scores, k=k, sorted=True)
  anchor_index = top_index // num_real
  class_index = top_index % num_real                     # 0-based real class

  top_deltas = tf.gather(deltas, anchor_index, batch_dims=1)
  boxes = box_ops.decode_boxes(top_deltas, tf.gather(anchors, anchor_index),
                               box_coder_weights)
  height, width = box_ops.image_hw(image_size)
  boxes = box_ops.clip_boxes(boxes, height, width)       # [B, k, 4]

  if nms_method == "combined":
    out_boxes, out_scores, out_classes, num = _combined_nms(
        boxes, top_scores, class_index, num_real, score_threshold,
        nms_iou_threshold, max_detections)
  elif nms_method == "batched":
    out_boxes, out_scores, out_classes, num = _batched_nms(
        boxes, top_scores, class_index, score_threshold, nms_iou_threshold,
        max_detections)
  else:
    out_boxes, out_scores, out_classes, num = _tflite_nms(
        boxes, top_scores, class_index, score_threshold, nms_iou_threshold,
        max_detections)
  keep = tf.range(max_detections)[None, :] < num[:, None]
  return {
      "boxes": tf.where(keep[..., None], out_boxes, 0.0),
      "scores": tf.where(keep, out_scores, 0.0),
      "classes": tf.where(keep, out_classes + 1, 0),
      "num_detections": num,
  }


def _combined_nms(boxes, scores, class_index, num_real, score_threshold,
                  iou_threshold, max_detections):
  # Each candidate scores only in its own class column; the zeros elsewhere
  # fall below any positive threshold.
  per_class = tf.one_hot(class_index, num_real) * scores[..., None]
  out_boxes, out_scores, out_classes, num = (
      tf.image.combined_non_max_suppression(
          boxes[:, :, None, :], per_class,
          max_output_size_per_class=max_detections,
          max_total_size=max_detections, iou_threshold=iou_threshold,
          score_threshold=max(float(score_threshold), 1e-8),
          pad_per_class=False, clip_boxes=False))
  return (out_boxes, out_scores, tf.cast(out_classes, tf.int32),
          tf.cast(num, tf.int32))


def _shift_by_class(boxes, class_index):
  # Boxes are clipped to [0, size], so shifting class c by c * (largest
  # coordinate + 1) makes boxes of different classes disjoint: one
  # class-agnostic NMS is then class-aware.
  offset = tf.reduce_max(boxes) + 1.0
  return boxes + tf.cast(class_index, tf.float32)[..., None] * offset


def _batched_nms(boxes, scores, class_index, score_threshold, iou_threshold,
                 max_detections):
  shifted = _shift_by_class(boxes, class_index)
  selected, num = tf.image.non_max_suppression_padded(
      shifted, scores, max_detections, iou_threshold=iou_threshold,
      score_threshold=float(score_threshold), pad_to_max_output_size=True,
      sorted_input=True, canonicalized_coordinates=True)
  selected = tf.cast(selected, tf.int32)
  return (tf.gather(boxes, selected, batch_dims=1),
          tf.gather(scores, selected, batch_dims=1),
          tf.gather(class_index, selected, batch_dims=1),
          tf.cast(num, tf.int32))


def _tflite_nms(boxes, scores, class_index, score_threshold, iou_threshold,
                max_detections):
  if boxes.shape[0] is None:
    raise ValueError("nms_method='tflite' needs a static batch size (TFLite "
                     "exports use batch 1).")
  shifted = _shift_by_class(boxes, class_index)
  outputs = [[], [], [], []]
  for i in range(boxes.shape[0]):
    selected, _, num = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted[i], scores=scores[i], max_output_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=float(score_threshold), soft_nms_sigma=0.0,
        pad_to_max_output_size=True)
    # Padding slots point at index 0; the caller zeroes them by `num`.
    for values, out in zip((boxes[i], scores[i], class_index[i]), outputs):
      out.append(tf.gather(values, selected))
    outputs[3].append(num)
  out_boxes, out_scores, out_classes, num = (tf.stack(o) for o in outputs)
  return out_boxes, out_scores, out_classes, tf.cast(num, tf.int32)
