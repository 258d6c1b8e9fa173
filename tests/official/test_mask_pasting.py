"""Served and evaluated Mask R-CNN masks are the same pixels.

The served masks come from MaskRCNNTask.serving_outputs (traced in a
tf.function, as in an exported SavedModel); the evaluated ones are the RLEs
COCOEvaluator stores for mask AP, decoded. Both paste with the rule of
modeling/ops/mask_ops.py; this test feeds them the same detections (boxes
in original-image pixels and 28 x 28 mask probabilities) and requires the
same pixels, including fractional box edges, edges exactly on a pixel
centre (the half-open rule) and boxes touching or crossing the border.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from modeling.ops import mask_ops
from official.evaluation.coco_evaluator import COCOEvaluator
from official.tasks.maskrcnn import MaskRCNNTask

HEIGHT, WIDTH = 37, 53
IMAGE_SIZE = 128
# (ymin, xmin, ymax, xmax) in original pixels.
BOXES = np.array([
    [2.3, 4.7, 17.1, 20.2],      # fractional edges
    [0.0, 0.0, 12.5, 9.5],       # top-left corner; far edges on centres
    [20.25, 30.5, 37.0, 53.0],   # bottom-right corner, near edge on a centre
    [5.0, 40.0, 30.0, 53.0],     # touches the right border
    [0.0, 10.0, 37.0, 11.4],     # full height, under two pixels wide
    [14.0, 14.0, 22.0, 30.0],    # integer edges
], np.float32)


def _masks(rng):
  """28 x 28 probabilities: random, 0/1 steps (0.5 ties in between), ones."""
  masks = rng.uniform(size=(len(BOXES), 28, 28)).astype(np.float32)
  masks[1] = (np.arange(28)[:, None] + np.arange(28)[None, :] < 28)
  masks[2:4] = 1.0
  masks[4] = np.arange(28)[None, :] % 2
  return masks


class _FixedDetections:
  """A stand-in model returning the given detections (model-input pixels)."""

  def __init__(self, boxes, masks):
    self.boxes, self.masks = boxes, masks

  def __call__(self, inputs, training=False):
    del training
    count = self.boxes.shape[1]
    return {"num_detections": tf.constant([count], tf.int32),
            "detection_boxes": tf.constant(self.boxes),
            "detection_scores": tf.linspace(0.9, 0.4, count)[None],
            "detection_classes": tf.ones([1, count], tf.int32),
            "detection_masks": tf.constant(self.masks)}


def _annotation_file(tmp_path):
  path = tmp_path / "instances.json"
  with open(path, "w") as f:
    json.dump({"images": [{"id": 7, "height": HEIGHT, "width": WIDTH}],
               "categories": [{"id": 1, "name": "thing"}],
               "annotations": [{"id": 1, "image_id": 7, "category_id": 1,
                                "bbox": [1, 1, 5, 5], "area": 25.0,
                                "iscrowd": 0, "segmentation": [
                                    [1, 1, 6, 1, 6, 6, 1, 6]]}]}, f)
  return str(path)


def test_served_and_evaluated_masks_are_identical(tmp_path):
  rng = np.random.default_rng(0)
  masks = _masks(rng)
  task = MaskRCNNTask(backbone=None, data=lambda: {}, num_classes=2,
                      image_size=IMAGE_SIZE, max_detections=len(BOXES))
  image = tf.zeros([HEIGHT, WIDTH, 3], tf.uint8)
  model_input, image_info = task.serving_preprocess(image)
  # The detections in model-input pixels, as the model would give them.
  scale = np.tile(image_info[2].numpy(), 2)
  model = _FixedDetections((BOXES * scale)[None], masks[None])
  serve = tf.function(lambda x, info: task.serving_outputs(model, x, info))
  served = {k: v.numpy() for k, v in
            serve(model_input[None], image_info[None]).items()}
  boxes = served["detection_boxes"][0]
  np.testing.assert_allclose(boxes, BOXES, atol=1e-4)
  image_masks = served["detection_image_masks"][0]
  assert image_masks.shape == (len(BOXES), HEIGHT, WIDTH)
  assert image_masks.dtype == np.uint8

  evaluator = COCOEvaluator(_annotation_file(tmp_path), include_mask=True)
  evaluator.update({
      "source_id": np.array([b"7"]),
      "detection_boxes": served["detection_boxes"],
      "detection_scores": served["detection_scores"],
      "detection_classes": served["detection_classes"],
      "detection_masks": served["detection_masks"],
      "num_detections": served["num_detections"]})
  # The evaluator keeps only the RLEs it scores (one per kept detection,
  # in detection order); decode them back to pixels.
  evaluated = mask_utils.decode(evaluator._mask_rles)  # pylint: disable=protected-access
  assert evaluated.shape == (HEIGHT, WIDTH, len(BOXES))
  for k in range(len(BOXES)):
    np.testing.assert_array_equal(image_masks[k], evaluated[..., k],
                                  err_msg=f"box {BOXES[k]}")
    # Box 4's single pixel column reads its mask halfway between a 1 and
    # a 0 column: a tie at the threshold, decided alike on both sides.
    assert k == 4 or image_masks[k].any(), BOXES[k]

  # The half-open rule itself: box 1 ends at 12.5 and 9.5, exactly on the
  # centres of row 12 and column 9, which are therefore outside; box 2
  # starts at 30.5, so column 30 is inside. Boxes reaching the border
  # (ymax = 37 = HEIGHT, xmax = 53 = WIDTH) cover the last row and column.
  assert not image_masks[1][12:].any() and not image_masks[1][:, 9:].any()
  assert image_masks[1][0, 0] == 1
  for k, (rows, columns) in ((2, (slice(20, 37), slice(30, 53))),
                             (3, (slice(5, 30), slice(40, 53)))):
    expected = np.zeros((HEIGHT, WIDTH), np.uint8)
    expected[rows, columns] = 1  # uniform masks fill their box's pixels
    np.testing.assert_array_equal(image_masks[k], expected, err_msg=str(k))


def test_paste_window_matches_the_graph_paste_bit_for_bit():
  """Host and graph pastes give the same float32 values, not just pixels."""
  rng = np.random.default_rng(1)
  masks = _masks(rng)
  graph = tf.function(mask_ops.paste_masks)(masks[None], BOXES[None],
                                            (HEIGHT, WIDTH)).numpy()[0]
  for k, box in enumerate(BOXES):
    np.testing.assert_array_equal(
        graph[k], mask_ops.paste_mask_numpy(masks[k], box, HEIGHT, WIDTH))


def test_uniform_mask_fills_the_pixels_with_centres_in_the_box():
  pasted = mask_ops.paste_mask_numpy(np.ones((5, 5)), (2.4, 3.5, 7.5, 9.5),
                                     12, 12)
  expected = np.zeros((12, 12), np.float32)
  expected[2:7, 3:9] = 1.0  # centres 2.5..6.5, 3.5..8.5: 7.5, 9.5 are out
  np.testing.assert_array_equal(pasted, expected)
  with pytest.raises(ValueError, match="mask must be"):
    mask_ops.paste_mask_window(np.ones(5), (0, 0, 1, 1), 4, 4)
  with pytest.raises(ValueError, match="image_size must be positive"):
    mask_ops.paste_masks(np.ones((1, 1, 2, 2)), np.ones((1, 1, 4)), (0, 3))
