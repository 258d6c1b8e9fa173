"""Tests of mask AP in official.evaluation.coco_evaluator (vs pycocotools)."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

from official.evaluation import coco_evaluator

M = 4  # Detection mask side.
# Image id -> (height, width). 303 has no ground truth; 304 is in the JSON
# but never evaluated.
_IMAGES = {301: (100, 120), 302: (40, 40), 303: (50, 70), 304: (30, 30)}
_EVALUATED = (301, 302, 303)
_CATEGORIES = {1: "box", 2: "ell"}


def _rectangle(image_id, y0, x0, y1, x1):
  height, width = _IMAGES[image_id]
  mask = np.zeros((height, width), np.uint8)
  mask[y0:y1, x0:x1] = 1
  return mask


def _ell(image_id, y0, x0, y1, x1):
  """An L: the left half of the box and its bottom half."""
  mask = _rectangle(image_id, y0, x0, y1, (x0 + x1) // 2)
  mask[(y0 + y1) // 2:y1, x0:x1] = 1
  return mask


# (image id, category, mask, iscrowd); masks in full image pixels.
_GROUND_TRUTH = [
    (301, 1, _rectangle(301, 10, 10, 50, 60), 0),  # medium
    (301, 2, _ell(301, 50, 64, 98, 112), 0),  # medium
    (301, 1, _rectangle(301, 0, 90, 16, 120), 1),  # crowd region
    (302, 2, _ell(302, 4, 4, 36, 28), 0),  # small
    (302, 1, _rectangle(302, 20, 30, 28, 38), 0),  # small, never detected
    (304, 1, _rectangle(304, 2, 2, 20, 20), 0),  # not evaluated
]

_FULL = np.full((M, M), 0.8, np.float32)
_L = np.array([[0.8, 0.8, 0.2, 0.2]] * 2 + [[0.8] * 4] * 2, np.float32)
_U = np.array([[0.8, 0.2, 0.2, 0.8]] * 3 + [[0.8] * 4], np.float32)

# (image id, category, box (ymin, xmin, ymax, xmax) original pixels with
# sides multiple of M, mask [M, M] of probabilities 0.8 / 0.2, score). Some
# masks are off: a shifted box, a wrong shape, a box past the image border.
_DETECTIONS = [
    (301, 1, (8, 8, 52, 60), _FULL, 0.9),      # IoU 2000 / 2288
    (301, 1, (8, 8, 52, 60), _L, 0.3),         # duplicate, worse mask
    (301, 2, (50, 64, 98, 112), _L, 0.8),      # exact L
    (301, 2, (48, 60, 100, 116), _U, 0.6),     # wrong shape
    (301, 1, (0, 92, 12, 120), _FULL, 0.7),    # inside the crowd region
    (301, 1, (80, 100, 104, 124), _FULL, 0.2),  # past the border, a miss
    (302, 2, (4, 4, 36, 28), _U, 0.97),        # exact box, wrong mask
    (302, 2, (4, 4, 36, 28), _L, 0.95),        # exact
    (302, 2, (4, 8, 36, 32), _L, 0.5),         # shifted by 4 px
    (303, 1, (10, 10, 30, 30), _FULL, 0.4),    # no ground truth
]


def _expected_paste(image_id, box, mask):
  """The pasted mask built independently of the evaluator.

  With probabilities 0.8 / 0.2 (summing to 1), the bilinear mask crosses
  0.5 exactly on the cell borders, and a box with integer corners and sides
  a multiple of M covers whole pixels, so the paste is the nearest-neighbour
  enlargement of mask > 0.5, clipped to the image.
  """
  height, width = _IMAGES[image_id]
  y0, x0, y1, x1 = box
  block = np.kron(mask > 0.5, np.ones(((y1 - y0) // M, (x1 - x0) // M)))
  canvas = np.zeros((height + 64, width + 64), np.uint8)  # Room past edges.
  canvas[y0:y1, x0:x1] = block
  return canvas[:height, :width]


def _write_annotations(path, drop_segmentation=False):
  annotations = []
  for n, (image_id, category, mask, crowd) in enumerate(_GROUND_TRUTH):
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
            float(ys.max() + 1 - ys.min())]
    if n == 0:  # A polygon, as most COCO annotations.
      x, y, w, h = bbox
      segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    else:  # Compressed RLE.
      rle = mask_utils.encode(np.asfortranarray(mask))
      segmentation = {"size": rle["size"],
                      "counts": rle["counts"].decode("ascii")}
    annotation = {"id": n + 1, "image_id": image_id, "category_id": category,
                  "bbox": bbox, "area": float(mask.sum()), "iscrowd": crowd,
                  "segmentation": segmentation}
    if drop_segmentation and n == 3:
      del annotation["segmentation"]
    annotations.append(annotation)
  dataset = {
      "images": [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w}
                 for i, (h, w) in _IMAGES.items()],
      "annotations": annotations,
      "categories": [{"id": c, "name": n} for c, n in _CATEGORIES.items()],
  }
  with open(path, "w") as f:
    json.dump(dataset, f)
  return str(path)


@pytest.fixture(name="annotation_file")
def _annotation_file(tmp_path):
  return _write_annotations(tmp_path / "instances.json")


def _pycocotools_segm(annotation_file, detections):
  """COCOeval "segm" computed directly on independently pasted RLEs."""
  results = []
  for image_id, category, box, mask, score in detections:
    rle = mask_utils.encode(np.asfortranarray(
        _expected_paste(image_id, box, mask)))
    results.append({"image_id": image_id, "category_id": category,
                    "segmentation": rle, "score": score})
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = coco_api.COCO(annotation_file)
    evaluation = cocoeval.COCOeval(ground_truth,
                                   ground_truth.loadRes(results), "segm")
    evaluation.params.imgIds = list(_EVALUATED)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  return evaluation


def _batch(image_ids, detections, num_slots=6):
  """One padded update() batch; garbage beyond num_detections."""
  batch = len(image_ids)
  outputs = {
      "source_id": np.array(image_ids, np.int64),
      "detection_boxes": np.zeros([batch, num_slots, 4], np.float32),
      "detection_scores": np.zeros([batch, num_slots], np.float32),
      "detection_classes": np.zeros([batch, num_slots], np.int32),
      "detection_masks": np.zeros([batch, num_slots, M, M], np.float32),
      "num_detections": np.zeros([batch], np.int32),
      "height": np.array([_IMAGES[i][0] for i in image_ids], np.int32),
      "width": np.array([_IMAGES[i][1] for i in image_ids], np.int32),
  }
  for row, image_id in enumerate(image_ids):
    mine = [d for d in detections if d[0] == image_id]
    for k, (_, category, box, mask, score) in enumerate(mine):
      outputs["detection_boxes"][row, k] = box
      outputs["detection_scores"][row, k] = score
      outputs["detection_classes"][row, k] = category
      outputs["detection_masks"][row, k] = mask
    outputs["num_detections"][row] = len(mine)
    if len(mine) < num_slots:
      outputs["detection_boxes"][row, len(mine)] = [0, 0, 20, 20]
      outputs["detection_scores"][row, len(mine)] = 0.99
      outputs["detection_classes"][row, len(mine)] = 1
      outputs["detection_masks"][row, len(mine)] = 1.0
  return outputs


def test_mask_ap_matches_pycocotools(annotation_file):
  expected = _pycocotools_segm(annotation_file, _DETECTIONS)
  stats = expected.stats[:9].tolist()
  # Not a trivial case: imperfect masks, a crowd region, a missed object.
  assert 0.0 < stats[0] < 1.0 and 0.0 < stats[1] < 1.0
  assert stats[0] < stats[1] and stats[3] > 0.0 and stats[4] > 0.0
  evaluator = coco_evaluator.COCOEvaluator(
      annotation_file, include_mask=True, per_category_metrics=True)
  evaluator.update(_batch([301, 303], _DETECTIONS))
  evaluator.update(_batch([302], _DETECTIONS))
  metrics = evaluator.result()
  for name, value in zip(coco_evaluator.MASK_METRIC_NAMES, stats):
    assert isinstance(metrics[name], float)
    assert metrics[name] == pytest.approx(value, abs=1e-12), name
  # Box AP is still there, and differs: an exact box with a wrong mask.
  assert set(coco_evaluator.METRIC_NAMES) <= set(metrics)
  assert metrics["AP"] > metrics["mask_AP"] + 0.01
  # Per category, from the same COCOeval arrays.
  precision = expected.eval["precision"]
  for k, category in enumerate(expected.params.catIds):
    values = precision[:, :, k, 0, -1]
    assert metrics[f"mask_AP_ByCategory/{_CATEGORIES[category]}"] == (
        pytest.approx(values[values > -1].mean()))
  assert "AP_ByCategory/ell" in metrics
  assert evaluator.mask_summary.splitlines()[0].startswith(
      " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all")
  assert len(evaluator.mask_summary.splitlines()) == 12


def test_streaming_padding_and_reset(annotation_file):
  expected = _pycocotools_segm(annotation_file, _DETECTIONS).stats[0]
  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True)
  padded = _batch([303, 301, 304], _DETECTIONS, num_slots=8)
  padded["valid"] = np.array([True, True, False])
  evaluator.update(padded)
  evaluator.update(_batch([302], _DETECTIONS, num_slots=3))
  assert evaluator.result()["mask_AP"] == pytest.approx(expected, abs=1e-12)
  evaluator.reset()
  evaluator.update(_batch(list(_EVALUATED), _DETECTIONS))
  assert evaluator.result()["mask_AP"] == pytest.approx(expected, abs=1e-12)


def test_perfect_masks_and_no_detections(annotation_file):
  objects = [(i, c, m) for i, c, m, crowd in _GROUND_TRUTH
             if not crowd and i in _EVALUATED]
  # One mask cell per pixel: each object's bounding-box crop, padded at the
  # bottom and right to a common square size (the box grows with it).
  corners = [np.min(np.nonzero(m), axis=1) for _, _, m in objects]
  size = max(max(np.max(np.nonzero(m), axis=1) + 1 - corner)
             for (_, _, m), corner in zip(objects, corners))
  batch = _batch(list(_EVALUATED), [])
  batch["detection_masks"] = np.zeros([3, 6, size, size], np.float32)
  for (image_id, category, mask), (y0, x0) in zip(objects, corners):
    row = _EVALUATED.index(image_id)
    k = batch["num_detections"][row]
    cells = mask[y0:y0 + size, x0:x0 + size]
    batch["detection_masks"][row, k, :cells.shape[0], :cells.shape[1]] = cells
    batch["detection_boxes"][row, k] = [y0, x0, y0 + size, x0 + size]
    batch["detection_scores"][row, k] = 1.0
    batch["detection_classes"][row, k] = category
    batch["num_detections"][row] = k + 1
  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True)
  evaluator.update(batch)
  metrics = evaluator.result()
  assert metrics["mask_AP"] == pytest.approx(1.0)
  assert metrics["mask_ARmax100"] == pytest.approx(1.0)

  evaluator.reset()
  evaluator.update(_batch(list(_EVALUATED), []))
  metrics = evaluator.result()
  assert metrics["mask_AP"] == 0.0 and metrics["AP"] == 0.0


def _paste_reference(mask, box, height, width):
  """Pixel-by-pixel paste (the documented rule), for checking."""
  ymin, xmin, ymax, xmax = box
  size_y, size_x = mask.shape
  out = np.zeros((height, width), np.uint8)
  for r in range(height):
    for c in range(width):
      y, x = r + 0.5, c + 0.5
      if not (ymin <= y < ymax and xmin <= x < xmax):
        continue
      u = np.clip((y - ymin) / (ymax - ymin) * size_y - 0.5, 0, size_y - 1)
      v = np.clip((x - xmin) / (xmax - xmin) * size_x - 0.5, 0, size_x - 1)
      u0, v0 = int(u), int(v)
      u1, v1 = min(u0 + 1, size_y - 1), min(v0 + 1, size_x - 1)
      a, b = u - u0, v - v0
      value = ((1 - a) * ((1 - b) * mask[u0, v0] + b * mask[u0, v1]) +
               a * ((1 - b) * mask[u1, v0] + b * mask[u1, v1]))
      out[r, c] = value >= 0.5
  return out


def test_paste_mask_rule():
  rng = np.random.default_rng(0)
  height, width = 23, 31
  boxes = [(2.3, 4.7, 17.1, 20.2), (-5.5, -3.2, 9.9, 12.4),
           (10.0, 25.5, 40.0, 50.0), (5.0, 5.0, 5.0, 9.0),
           (30.0, 1.0, 40.0, 9.0), (0.0, 0.0, 23.0, 31.0)]
  for box in boxes:
    mask = rng.uniform(size=(7, 7))
    np.testing.assert_array_equal(
        coco_evaluator.paste_mask(mask, box, height, width),
        _paste_reference(mask, box, height, width), err_msg=str(box))
  # Degenerate and outside boxes paste nothing.
  assert not coco_evaluator.paste_mask(np.ones((3, 3)), boxes[3], height,
                                       width).any()
  assert not coco_evaluator.paste_mask(np.ones((3, 3)), boxes[4], height,
                                       width).any()
  assert not coco_evaluator.paste_mask(np.ones((3, 3)), (np.nan, 0, 5, 5),
                                       height, width).any()
  # A uniform mask fills exactly the pixels whose centres are in the box.
  filled = coco_evaluator.paste_mask(np.ones((5, 5)), (2.4, 3.6, 7.5, 9.5),
                                     height, width)
  expected = np.zeros((height, width), np.uint8)
  expected[2:7, 4:9] = 1
  np.testing.assert_array_equal(filled, expected)


def test_memory_stays_bounded(tmp_path):
  """Only compressed RLEs are kept, never full-size masks."""
  path = tmp_path / "big.json"
  height, width = 1500, 2000
  mask = np.zeros((height, width), np.uint8)
  mask[100:900, 200:1400] = 1
  rle = mask_utils.encode(np.asfortranarray(mask))
  with open(path, "w") as f:
    json.dump({"images": [{"id": 1, "height": height, "width": width,
                           "file_name": "1.jpg"}],
               "categories": [{"id": 1, "name": "box"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                "bbox": [200, 100, 1200, 800],
                                "area": float(mask.sum()), "iscrowd": 0,
                                "segmentation": {
                                    "size": rle["size"],
                                    "counts": rle["counts"].decode()}}]},
              f)
  evaluator = coco_evaluator.COCOEvaluator(str(path), include_mask=True)
  detections = 50
  # A disc of probability 0.9 on 0.1, as a trained mask head would give.
  ys, xs = np.mgrid[0:28, 0:28] + 0.5
  disc = np.where((ys - 14) ** 2 + (xs - 14) ** 2 < 100, 0.9, 0.1)
  outputs = {
      "source_id": np.array([1]),
      "detection_boxes": np.tile([[[100.0, 200.0, 900.0, 1400.0]]],
                                 [1, detections, 1]),
      "detection_scores": np.linspace(0.9, 0.1, detections)[None],
      "detection_classes": np.ones([1, detections], np.int32),
      "detection_masks": np.broadcast_to(disc, [1, detections, 28, 28]),
  }
  evaluator.update(outputs)

  def sizes(value):
    if isinstance(value, np.ndarray):
      yield value.nbytes
    elif isinstance(value, (list, tuple)):
      for item in value:
        yield from sizes(item)
    elif isinstance(value, dict):
      for item in value.values():
        yield from sizes(item)
    elif isinstance(value, (bytes, str)):
      yield len(value)

  stored = {k: v for k, v in vars(evaluator).items()
            if k != "_ground_truth"}
  assert max(sizes(stored)) < height * width // 10
  assert sum(sizes(stored)) < detections * 20_000
  assert evaluator.result()["mask_AP"] >= 0.0


def test_errors(tmp_path, annotation_file):
  with pytest.raises(ValueError, match=r"needs annotation_file"):
    coco_evaluator.COCOEvaluator(include_mask=True)
  no_segmentation = _write_annotations(tmp_path / "boxes.json",
                                       drop_segmentation=True)
  with pytest.raises(ValueError, match=r"annotation id 4 .*boxes\.json.*"
                     "no 'segmentation'"):
    coco_evaluator.COCOEvaluator(no_segmentation, include_mask=True)
  # Box AP alone does not need segmentations.
  coco_evaluator.COCOEvaluator(no_segmentation)

  evaluator = coco_evaluator.COCOEvaluator(annotation_file, include_mask=True)
  outputs = _batch([301], _DETECTIONS)
  del outputs["detection_masks"]
  with pytest.raises(KeyError, match="detection_masks"):
    evaluator.update(outputs)
  outputs = _batch([301], _DETECTIONS)
  outputs["detection_masks"] = outputs["detection_masks"][:, :3]
  with pytest.raises(ValueError, match=r"detection_masks \[B, D, m, m\]"):
    evaluator.update(outputs)
  outputs = _batch([301], _DETECTIONS)
  outputs["height"] = np.array([61])
  with pytest.raises(ValueError, match=r"image 301 is 61 x 120 .* 100 x 120"):
    evaluator.update(outputs)
  # Nothing of the failed batches was kept.
  evaluator.update(_batch([301], _DETECTIONS))
  with pytest.raises(ValueError, match="already added"):
    evaluator.update(_batch([301], _DETECTIONS))
