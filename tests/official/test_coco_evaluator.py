"""Tests of official.evaluation.coco_evaluator against pycocotools itself."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from official.evaluation import coco_evaluator

_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1", "ARmax10",
          "ARmax100")

# Image id -> (height, width).
_IMAGES = {101: (200, 300), 102: (100, 100), 103: (120, 160), 104: (50, 50)}
_EVALUATED = (101, 102, 103)  # 104 is in the JSON but never evaluated.

# (image id, category id, [x, y, w, h] pixels, area, iscrowd)
_GROUND_TRUTH = [
    (101, 1, [10, 20, 40, 30], 1100.0, 0),   # medium
    (101, 3, [100, 50, 120, 100], 11000.0, 0),  # large
    (101, 1, [200, 120, 80, 60], 3000.0, 1),  # crowd region
    (101, 7, [250, 10, 20, 20], 380.0, 0),  # small
    (102, 3, [5, 5, 50, 50], 2400.0, 0),  # no detection on this image
    (104, 7, [1, 1, 10, 10], 100.0, 0),  # not evaluated
]

# (image id, category id, [x, y, w, h] pixels, score); image 103 has no
# ground truth, so its detections are false positives.
_DETECTIONS = [
    (101, 1, [12, 22, 38, 29], 0.9),
    (101, 1, [205, 125, 30, 20], 0.8),  # inside the crowd region: ignored
    (101, 1, [10, 20, 40, 30], 0.3),  # duplicate: false positive
    (101, 3, [110, 60, 100, 90], 0.7),
    (101, 7, [252, 12, 18, 18], 0.6),
    (101, 7, [0, 0, 5, 5], 0.2),
    (103, 1, [50, 50, 20, 20], 0.5),
    (103, 3, [10, 10, 30, 30], 0.4),
]


def _write_annotations(path):
  dataset = {
      "info": {}, "licenses": [],
      "images": [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w}
                 for i, (h, w) in _IMAGES.items()],
      "annotations": [
          {"id": n + 1, "image_id": i, "category_id": c, "bbox": b,
           "area": a, "iscrowd": crowd,
           "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2],
                             b[1] + b[3], b[0], b[1] + b[3]]]}
          for n, (i, c, b, a, crowd) in enumerate(_GROUND_TRUTH)],
      "categories": [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"},
                     {"id": 7, "name": "triangle"}],
  }
  with open(path, "w") as f:
    json.dump(dataset, f)
  return str(path)


def _pycocotools_stats(annotation_file, detections):
  """COCOeval stats[0:9] computed directly, on the evaluated images."""
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = coco_api.COCO(annotation_file)
    results = ground_truth.loadRes(
        [{"image_id": i, "category_id": c, "bbox": b, "score": s}
         for i, c, b, s in detections])
    evaluation = cocoeval.COCOeval(ground_truth, results, "bbox")
    evaluation.params.imgIds = list(_EVALUATED)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  return dict(zip(_NAMES, evaluation.stats[:9].tolist()))


def _yxyx(box):
  x, y, w, h = box
  return [y, x, y + h, x + w]


def _batch(image_ids, detections, num_slots=8, num_gt_slots=6,
           with_num_groundtruths=True, source_id_type=int):
  """One padded update() batch of the given images."""
  batch = len(image_ids)
  outputs = {
      "source_id": np.array([source_id_type(i) if source_id_type is int
                             else str(i).encode() for i in image_ids],
                            dtype=object if source_id_type is not int
                            else np.int64),
      "detection_boxes": np.zeros([batch, num_slots, 4], np.float32),
      "detection_scores": np.zeros([batch, num_slots], np.float32),
      "detection_classes": np.zeros([batch, num_slots], np.int32),
      "num_detections": np.zeros([batch], np.int32),
      "groundtruth_boxes": np.zeros([batch, num_gt_slots, 4], np.float32),
      "groundtruth_classes": np.full([batch, num_gt_slots], -1, np.int32),
      "groundtruth_is_crowd": np.zeros([batch, num_gt_slots], bool),
      "groundtruth_area": np.zeros([batch, num_gt_slots], np.float32),
      "num_groundtruths": np.zeros([batch], np.int32),
      "height": np.array([_IMAGES[i][0] for i in image_ids], np.int32),
      "width": np.array([_IMAGES[i][1] for i in image_ids], np.int32),
  }
  for row, image_id in enumerate(image_ids):
    mine = [d for d in detections if d[0] == image_id]
    for k, (_, c, b, s) in enumerate(mine):
      outputs["detection_boxes"][row, k] = _yxyx(b)
      outputs["detection_scores"][row, k] = s
      outputs["detection_classes"][row, k] = c
    outputs["num_detections"][row] = len(mine)
    if len(mine) < num_slots:
      # Garbage beyond num_detections must be ignored.
      outputs["detection_boxes"][row, len(mine)] = [0, 0, 50, 50]
      outputs["detection_scores"][row, len(mine)] = 0.99
      outputs["detection_classes"][row, len(mine)] = 1
    gts = [g for g in _GROUND_TRUTH if g[0] == image_id]
    for k, (_, c, b, a, crowd) in enumerate(gts):
      outputs["groundtruth_boxes"][row, k] = _yxyx(b)
      outputs["groundtruth_classes"][row, k] = c
      outputs["groundtruth_is_crowd"][row, k] = bool(crowd)
      outputs["groundtruth_area"][row, k] = a
    outputs["num_groundtruths"][row] = len(gts)
  if not with_num_groundtruths:
    del outputs["num_groundtruths"]
  return outputs


def _assert_same(ours, expected):
  assert set(ours) == set(_NAMES)
  for name in _NAMES:
    assert isinstance(ours[name], float)
    assert ours[name] == pytest.approx(expected[name], abs=1e-12), name


@pytest.fixture(name="annotation_file")
def _annotation_file(tmp_path):
  return _write_annotations(tmp_path / "instances.json")


@pytest.mark.parametrize("use_file", [True, False])
def test_matches_pycocotools(annotation_file, use_file):
  expected = _pycocotools_stats(annotation_file, _DETECTIONS)
  # The case is not trivial: every figure between 0 and 1, crowd ignored.
  assert 0.0 < expected["AP"] < 1.0 and expected["APs"] > 0.0
  evaluator = coco_evaluator.COCOEvaluator(
      annotation_file if use_file else None)
  evaluator.update(_batch(list(_EVALUATED), _DETECTIONS))
  _assert_same(evaluator.result(), expected)
  assert evaluator.summary.splitlines()[0].startswith(
      " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all")
  assert len(evaluator.summary.splitlines()) == 12
  if not use_file:
    # The crowd flags are used: without them the crowd region is a missed
    # object and the detection inside it a false positive.
    evaluator.reset()
    outputs = _batch(list(_EVALUATED), _DETECTIONS)
    del outputs["groundtruth_is_crowd"]
    evaluator.update(outputs)
    assert evaluator.result()["AP"] < expected["AP"] - 0.1


@pytest.mark.parametrize("use_file", [True, False])
def test_streaming_equals_one_batch(annotation_file, use_file):
  expected = _pycocotools_stats(annotation_file, _DETECTIONS)
  evaluator = coco_evaluator.COCOEvaluator(
      annotation_file if use_file else None)
  evaluator.update(_batch([102], _DETECTIONS, num_slots=3,
                          source_id_type=bytes))
  batch = _batch([103, 101], _DETECTIONS, num_slots=10,
                 with_num_groundtruths=False)
  # A padding image of the last batch, marked invalid, is skipped.
  padded = _batch([103, 101, 104], _DETECTIONS, num_slots=10,
                  with_num_groundtruths=False)
  padded["valid"] = np.array([True, True, False])
  evaluator.update(padded)
  _assert_same(evaluator.result(), expected)

  # reset() forgets everything; the same batches then give the same result.
  evaluator.reset()
  evaluator.update(batch)
  evaluator.update(_batch([102], _DETECTIONS))
  _assert_same(evaluator.result(), expected)


@pytest.mark.parametrize("use_file", [True, False])
def test_perfect_detections(annotation_file, use_file):
  perfect = [(i, c, b, 1.0) for i, c, b, _, crowd in _GROUND_TRUTH
             if not crowd and i in _EVALUATED]
  evaluator = coco_evaluator.COCOEvaluator(
      annotation_file if use_file else None, per_category_metrics=True)
  evaluator.update(_batch(list(_EVALUATED), perfect))
  metrics = evaluator.result()
  for name in _NAMES:
    assert metrics[name] == pytest.approx(1.0), name
  if use_file:
    assert metrics["AP_ByCategory/triangle"] == pytest.approx(1.0)
    assert metrics["AP50_ByCategory/square"] == pytest.approx(1.0)
  else:
    assert metrics["AP_ByCategory/category_7"] == pytest.approx(1.0)
    assert metrics["ARmax100_ByCategory/category_1"] == pytest.approx(1.0)


def test_no_detections_gives_zero(annotation_file):
  evaluator = coco_evaluator.COCOEvaluator(annotation_file)
  evaluator.update(_batch(list(_EVALUATED), []))
  metrics = evaluator.result()
  assert metrics["AP"] == 0.0 and metrics["ARmax100"] == 0.0


def test_string_source_ids_without_annotation_file():
  evaluator = coco_evaluator.COCOEvaluator()
  outputs = _batch([101], _DETECTIONS[:1])
  outputs["source_id"] = np.array([b"image_a.jpg"], dtype=object)
  evaluator.update(outputs)
  assert evaluator.result()["AP"] > 0.0


def test_errors(annotation_file):
  with pytest.raises(ValueError, match="include_mask=True.*annotation_file"):
    coco_evaluator.COCOEvaluator(include_mask=True)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    coco_evaluator.COCOEvaluator("/nonexistent/missing.json")

  evaluator = coco_evaluator.COCOEvaluator(annotation_file)
  with pytest.raises(ValueError, match="no image was added"):
    evaluator.result()
  with pytest.raises(ValueError, match=r"image id 999 is not in the "
                     r"annotation file"):
    outputs = _batch([101], [])
    outputs["source_id"] = np.array([999])
    evaluator.update(outputs)
  evaluator.update(_batch([101], _DETECTIONS))
  with pytest.raises(ValueError, match="image id 101 was already added"):
    evaluator.update(_batch([101], _DETECTIONS))
  with pytest.raises(KeyError, match="detection_scores"):
    evaluator.update({"source_id": np.array([102]),
                      "detection_boxes": np.zeros([1, 1, 4]),
                      "detection_classes": np.zeros([1, 1])})

  without_file = coco_evaluator.COCOEvaluator()
  with pytest.raises(KeyError, match="groundtruth_boxes"):
    outputs = _batch([101], _DETECTIONS)
    del outputs["groundtruth_boxes"]
    without_file.update(outputs)
