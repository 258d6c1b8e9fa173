"""mIoU evaluator against a confusion matrix counted by hand."""

import numpy as np
import pytest

from official.evaluation import miou_evaluator

# Two 3 x 4 images, 3 classes, 255 = ignored.
LABELS = np.array([
    [[0, 0, 1, 1],
     [0, 2, 1, 255],
     [255, 2, 2, 1]],
    [[1, 1, 1, 0],
     [0, 0, 255, 0],
     [2, 2, 0, 0]],
])
PREDICTIONS = np.array([
    [[0, 1, 1, 1],
     [0, 2, 2, 0],
     [1, 2, 0, 1]],
    [[1, 1, 0, 0],
     [0, 2, 2, 0],
     [2, 1, 0, 0]],
])
# Rows: label, columns: prediction, counted pixel by pixel (ignored pixels
# left out): image 0 then image 1.
IMAGE_0 = np.array([[2, 1, 0],
                    [0, 3, 1],
                    [1, 0, 2]])
IMAGE_1 = np.array([[5, 0, 1],
                    [1, 2, 0],
                    [0, 1, 1]])
EXPECTED = IMAGE_0 + IMAGE_1  # [[7, 1, 1], [1, 5, 1], [1, 1, 3]]


def test_confusion_matrix_by_hand():
  np.testing.assert_array_equal(
      miou_evaluator.confusion_matrix(PREDICTIONS[0], LABELS[0], 3), IMAGE_0)
  np.testing.assert_array_equal(
      miou_evaluator.confusion_matrix(PREDICTIONS, LABELS, 3), EXPECTED)


def test_tensorflow_per_image_matrices_match():
  matrices = miou_evaluator.batch_confusion_matrices(PREDICTIONS, LABELS, 3)
  np.testing.assert_array_equal(matrices.numpy(), np.stack([IMAGE_0,
                                                            IMAGE_1]))


def test_miou_and_per_class_iou():
  # IoU = TP / (row + column - TP): 7 / (9 + 9 - 7), 5 / (7 + 7 - 5), ...
  iou = [7 / 11, 5 / 9, 3 / 7]
  for outputs in (
      {"predictions": PREDICTIONS, "labels": LABELS, "valid": [True, True]},
      {"confusion_matrix": np.stack([IMAGE_0, IMAGE_1]),
       "valid": [True, True]}):
    evaluator = miou_evaluator.MIoUEvaluator(3, class_names=("bg", "a", "b"))
    evaluator.update(outputs)
    result = evaluator.result()
    assert result["mIoU"] == pytest.approx(np.mean(iou))
    assert result["IoU/bg"] == pytest.approx(iou[0])
    assert result["IoU/a"] == pytest.approx(iou[1])
    assert result["IoU/b"] == pytest.approx(iou[2])
    assert result["pixel_accuracy"] == pytest.approx(15 / 21)


def test_streaming_padding_and_reset():
  evaluator = miou_evaluator.MIoUEvaluator(3)
  # One image per update; a padding example (valid False) counts nothing.
  evaluator.update({"predictions": PREDICTIONS[:1], "labels": LABELS[:1],
                    "valid": [True]})
  evaluator.update({"predictions": np.stack([PREDICTIONS[1],
                                             PREDICTIONS[0]]),
                    "labels": np.stack([LABELS[1], LABELS[0]]),
                    "valid": [True, False]})
  np.testing.assert_array_equal(evaluator.matrix, EXPECTED)
  evaluator.reset()
  assert evaluator.matrix.sum() == 0


def test_ignored_pixels_and_absent_classes():
  # Class 2 occurs nowhere: it is left out of the mean (VOC convention).
  labels = np.array([[0, 0, 255, 1]])
  predictions = np.array([[0, 1, 2, 1]])
  evaluator = miou_evaluator.MIoUEvaluator(4)
  evaluator.update({"predictions": predictions[None],
                    "labels": labels[None], "valid": [True]})
  result = evaluator.result()
  assert result["IoU/class_0"] == pytest.approx(1 / 2)
  assert result["IoU/class_1"] == pytest.approx(1 / 2)
  assert "IoU/class_2" not in result and "IoU/class_3" not in result
  assert result["mIoU"] == pytest.approx(0.5)
  assert result["pixel_accuracy"] == pytest.approx(2 / 3)


def test_bad_inputs_say_what_was_expected():
  evaluator = miou_evaluator.MIoUEvaluator(3)
  with pytest.raises(ValueError, match=r"confusion_matrix of shape "
                     r"\(1, 2, 2\); expected \(1, 3, 3\)"):
    evaluator.update({"confusion_matrix": np.zeros([1, 2, 2]),
                      "valid": [True]})
  with pytest.raises(ValueError, match=r"predicted class ids 0..3 outside "
                     r"\[0, 3\)"):
    miou_evaluator.confusion_matrix([[0, 3]], [[0, 1]], 3)
  with pytest.raises(ValueError, match="2 class_names for num_classes=3"):
    miou_evaluator.MIoUEvaluator(3, class_names=("a", "b"))
