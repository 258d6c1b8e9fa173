"""Mean intersection over union of semantic segmentation, streamed.

The evaluator keeps one int64 confusion matrix [num_classes, num_classes]
(rows: ground-truth class, columns: predicted class) and nothing else, so
its memory does not grow with the evaluation set. Pixels whose label is
`ignore_label` (255 in PASCAL VOC: object borders, difficult objects, and
the padding of the input pipeline) are not counted.

IoU of class c = TP / (TP + FP + FN) = M[c, c] / (row c sum + column c sum -
M[c, c]). mIoU is the mean over the classes that occur in the ground truth
or the predictions (the PASCAL VOC convention: a class absent from both has
no IoU and is left out of the mean, instead of counting as 0 or 1).

The matrix can be filled from per-image confusion matrices computed on the
accelerator (`batch_confusion_matrices`, what SegmentationTask sends: a
few hundred integers per image instead of two label maps) or from
predicted and ground-truth label maps on the host.
"""

import numpy as np
import tensorflow as tf

from official.core import task


def batch_confusion_matrices(predictions, labels, num_classes,
                             ignore_label=255):
  """Per-image confusion matrices, computed with TensorFlow ops.

  Static shapes, no host round trip: runs on TPU (XLA) as well.

  Args:
    predictions: int [batch, H, W] predicted class ids in [0, num_classes).
    labels: int [batch, H, W] ground-truth class ids; ignore_label (or any
      id outside [0, num_classes)) is not counted.
    num_classes: int C.
    ignore_label: int, the id of pixels to leave out.

  Returns:
    int32 [batch, C, C], entry [b, i, j] = pixels of image b with label i
    predicted as j.
  """
  predictions = tf.cast(predictions, tf.int32)
  labels = tf.cast(labels, tf.int32)
  batch = tf.shape(labels)[0]
  valid = tf.logical_and(
      tf.logical_and(labels >= 0, labels < num_classes),
      labels != ignore_label)
  cells = num_classes * num_classes
  index = (tf.range(batch)[:, None, None] * cells + labels * num_classes +
           tf.clip_by_value(predictions, 0, num_classes - 1))
  index = tf.where(valid, index, 0)
  counts = tf.math.unsorted_segment_sum(
      tf.reshape(tf.cast(valid, tf.int32), [-1]), tf.reshape(index, [-1]),
      batch * cells)
  return tf.reshape(counts, [batch, num_classes, num_classes])


def confusion_matrix(predictions, labels, num_classes, ignore_label=255):
  """int64 [C, C] confusion matrix of numpy label maps (rows: labels).

  Args:
    predictions: int array, predicted class ids (any shape).
    labels: int array of the same shape; ignore_label (or any id outside
      [0, num_classes)) is not counted.
    num_classes: int C.
    ignore_label: int.

  Raises:
    ValueError: when the shapes differ or a prediction is outside
      [0, num_classes).
  """
  predictions = np.asarray(predictions).astype(np.int64).ravel()
  labels_arr = np.asarray(labels)
  if labels_arr.size != predictions.size:
    raise ValueError(f"confusion_matrix: {predictions.size} predictions but "
                     f"{labels_arr.size} labels (shape {labels_arr.shape}); "
                     "expected label maps of the same shape.")
  labels = labels_arr.astype(np.int64).ravel()
  valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
  predictions, labels = predictions[valid], labels[valid]
  if predictions.size and (predictions.min() < 0 or
                           predictions.max() >= num_classes):
    raise ValueError(f"confusion_matrix: predicted class ids "
                     f"{predictions.min()}..{predictions.max()} outside "
                     f"[0, {num_classes}).")
  counts = np.bincount(labels * num_classes + predictions,
                       minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(matrix):
  """(IoU float64 [C] with NaN for absent classes, present bool [C])."""
  matrix = np.asarray(matrix, np.float64)
  true_positives = np.diag(matrix)
  union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
  present = union > 0
  iou = np.full(len(matrix), np.nan)
  iou[present] = true_positives[present] / union[present]
  return iou, present


class MIoUEvaluator(task.Evaluator):
  """Streaming mIoU and per-class IoU (official.core.task.Evaluator).

  `update` takes the numpy outputs of one global evaluation batch: a bool
  "valid" [batch] (padding examples are skipped) and either
  "confusion_matrix" int [batch, C, C] (per image, from
  `batch_confusion_matrices`) or "predictions" and "labels" int [batch, H, W]
  label maps.

  `result` returns floats: "mIoU", "pixel_accuracy" (correct / counted
  pixels) and "IoU/<class name>" for every class that occurs (see the module
  docstring).

  Args:
    num_classes: int C, background included.
    ignore_label: int, label id that is not counted.
    class_names: optional sequence of C names for the per-class keys
      (default "class_<id>").
  """

  def __init__(self, num_classes, ignore_label=255, class_names=None):
    if int(num_classes) < 2:
      raise ValueError(f"MIoUEvaluator: num_classes must be >= 2, got "
                       f"{num_classes}.")
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f"MIoUEvaluator: {len(class_names)} class_names for "
                       f"num_classes={num_classes}; expected one per class.")
    self.num_classes = int(num_classes)
    self.ignore_label = int(ignore_label)
    self.class_names = (list(class_names) if class_names is not None else
                        [f"class_{i}" for i in range(self.num_classes)])
    self.reset()

  def reset(self):
    self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, outputs):
    valid = np.asarray(outputs["valid"], bool)
    if "confusion_matrix" in outputs:
      matrices = np.asarray(outputs["confusion_matrix"], np.int64)
      expected = (len(valid), self.num_classes, self.num_classes)
      if matrices.shape != expected:
        raise ValueError(f"MIoUEvaluator: confusion_matrix of shape "
                         f"{matrices.shape}; expected {expected}.")
      self.matrix += matrices[valid].sum(axis=0)
      return
    predictions = np.asarray(outputs["predictions"])
    labels = np.asarray(outputs["labels"])
    for i in np.flatnonzero(valid):
      self.matrix += confusion_matrix(predictions[i], labels[i],
                                      self.num_classes, self.ignore_label)

  def result(self):
    iou, present = iou_from_confusion(self.matrix)
    counted = self.matrix.sum()
    metrics = {
        "mIoU": float(np.mean(iou[present])) if present.any() else 0.0,
        "pixel_accuracy": float(np.trace(self.matrix) / max(counted, 1)),
    }
    for name, value, occurs in zip(self.class_names, iou, present):
      if occurs:
        metrics[f"IoU/{name}"] = float(value)
    return metrics
