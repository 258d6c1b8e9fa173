"""Real-data quirks that gave wrong answers (issue 11, cases 1-5).

1. annotation ids that are 0 or repeat (COCO evaluator);
2. image ids that are strings, end to end: converter, input pipeline,
   evaluator;
3. JPEGs with an EXIF orientation (all three converters);
4. polygons of fewer than 3 points (converter and mask evaluator alike);
5. images above Pillow's decompression-bomb limit (all three converters).

Each test builds its own small data and asserts the right value.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataloaders import classification
from dataloaders import detection_decoder
from dataloaders import retinanet_input
from dataloaders import segmentation_input
from dataloaders.datasets import coco_records
from dataloaders.datasets import image_folder_records
from dataloaders.datasets import pascal_records
from official.evaluation import coco_evaluator

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_CATEGORIES = [{"id": 1, "name": "block"}, {"id": 2, "name": "bar"}]
# The EXIF Orientation tag.
_ORIENTATION_TAG = 0x0112


def _write_json(path, dataset):
  with open(path, "w") as f:
    json.dump(dataset, f)
  return str(path)


def _jpeg(array, orientation=None, quality=95):
  """JPEG bytes of uint8 [h, w] or [h, w, 3], optionally EXIF-tagged."""
  buffer = io.BytesIO()
  extra = {}
  if orientation is not None:
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    extra["exif"] = exif.tobytes()
  Image.fromarray(array).save(buffer, format="JPEG", quality=quality, **extra)
  return buffer.getvalue()


def _evaluate(annotation_file, detections, include_mask=False):
  """Metrics of detections {image id: [(category, [x, y, w, h], score)]}."""
  evaluator = coco_evaluator.COCOEvaluator(annotation_file,
                                           include_mask=include_mask)
  ids = sorted(detections)
  count = max(len(d) for d in detections.values())
  boxes = np.zeros([len(ids), count, 4])
  scores = np.zeros([len(ids), count])
  classes = np.zeros([len(ids), count])
  for row, image_id in enumerate(ids):
    for k, (category, (x, y, w, h), score) in enumerate(detections[image_id]):
      boxes[row, k] = [y, x, y + h, x + w]
      scores[row, k] = score
      classes[row, k] = category
  outputs = {"source_id": np.array(ids), "detection_boxes": boxes,
             "detection_scores": scores, "detection_classes": classes}
  if include_mask:  # A full mask in every box: mask AP = box AP here.
    outputs["detection_masks"] = np.ones([len(ids), count, 8, 8])
  evaluator.update(outputs)
  return evaluator.result()


# Case 1 -------------------------------------------------------------------

# (image id, category, [x, y, w, h]) of the ground truth of case 1.
_BOXES = [(1, 1, [10, 10, 20, 20]), (1, 2, [50, 10, 30, 20]),
          (1, 1, [10, 60, 40, 30]), (2, 1, [5, 5, 30, 30]),
          (2, 2, [60, 60, 20, 30]), (3, 1, [40, 40, 20, 20])]


def _case1_file(path, restart):
  """Instances JSON of _BOXES; annotation ids 1..N or restarting at 0."""
  annotations, per_image = [], {}
  for n, (image_id, category, box) in enumerate(_BOXES):
    ann_id = per_image.get(image_id, 0) if restart else n + 1
    per_image[image_id] = per_image.get(image_id, 0) + 1
    annotations.append({"id": ann_id, "image_id": image_id,
                        "category_id": category, "bbox": box,
                        "area": box[2] * box[3], "iscrowd": 0})
  return _write_json(path, {
      "images": [{"id": i, "file_name": f"{i}.jpg", "height": 100,
                  "width": 100} for i in (1, 2, 3)],
      "annotations": annotations, "categories": _CATEGORIES})


def test_annotation_ids_restarting_at_zero_score_as_unique_ones(tmp_path):
  unique = _case1_file(tmp_path / "unique.json", restart=False)
  restart = _case1_file(tmp_path / "restart.json", restart=True)
  with open(restart) as f:
    assert [a["id"] for a in json.load(f)["annotations"]] == [0, 1, 2, 0, 1,
                                                              0]
  perfect = {}
  for image_id, category, box in _BOXES:
    perfect.setdefault(image_id, []).append((category, box, 0.9))
  # Before: 0.028 (id 0 read as "unmatched", ids colliding across images).
  assert _evaluate(restart, perfect)["AP"] == pytest.approx(1.0)
  assert _evaluate(unique, perfect)["AP"] == pytest.approx(1.0)

  # Imperfect detections: every metric equals that of the unique ids.
  imperfect = {1: [(1, [12, 10, 20, 20], 0.9), (2, [0, 0, 10, 10], 0.8),
                   (1, [10, 62, 38, 30], 0.7)],
               2: [(1, [5, 8, 30, 30], 0.6), (2, [60, 60, 20, 30], 0.5)],
               3: [(2, [40, 40, 20, 20], 0.4)]}
  expected = _evaluate(unique, imperfect)
  assert 0.2 < expected["AP"] < 0.9
  assert _evaluate(restart, imperfect) == expected


# Case 2 -------------------------------------------------------------------


def _string_id_coco(root):
  """Two images with string ids, one object each; (image_dir, json)."""
  image_dir = root / "images"
  os.makedirs(image_dir)
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for k, (name, box) in enumerate([("img_000001", [8, 6, 30, 20]),
                                   ("img_000002", [20, 24, 24, 30])]):
    pixels = rng.integers(0, 60, size=(64, 80, 3), dtype=np.uint8)
    (image_dir / f"{name}.jpg").write_bytes(_jpeg(pixels))
    images.append({"id": name, "file_name": f"{name}.jpg", "height": 64,
                   "width": 80})
    annotations.append({"id": k + 1, "image_id": name, "category_id": 1,
                        "bbox": box, "area": box[2] * box[3],
                        "iscrowd": 0})
  annotation_file = _write_json(root / "instances.json", {
      "images": images, "annotations": annotations,
      "categories": _CATEGORIES})
  return str(image_dir), annotation_file


def test_string_image_ids_score_a_perfect_detection_one(tmp_path):
  image_dir, annotation_file = _string_id_coco(tmp_path)
  summary = coco_records.convert_coco(
      image_dir, annotation_file, str(tmp_path / "records" / "val"),
      num_shards=1, num_processes=1, show_progress=False)
  parser = dict(output_size=64, min_level=3, max_level=5, num_scales=1,
                aspect_ratios=(1.0,), anchor_size=4.0, num_classes=3)
  dataset = retinanet_input.retinanet_dataset(
      summary["files"][0], training=False, global_batch_size=2,
      parser=parser)
  (_, labels), = list(dataset.as_numpy_iterator())
  gt = labels["groundtruths"]
  # The pipeline's int64 ids are the hashes of the strings, above 2^62.
  assert (gt["source_id"] >= 1 << 62).all()
  count = gt["num_groundtruths"]
  outputs = {
      "source_id": gt["source_id"], "valid": labels["valid"],
      "detection_boxes": gt["boxes"].astype(np.float64),
      "detection_scores": np.where(np.arange(gt["boxes"].shape[1])[None]
                                   < count[:, None], 0.9, 0.0),
      "detection_classes": gt["classes"], "num_detections": count,
      "groundtruth_boxes": gt["boxes"], "groundtruth_classes": gt["classes"],
      "num_groundtruths": count, "groundtruth_area": gt["areas"],
      "height": gt["height"], "width": gt["width"]}
  # Before: -1.0 without the file (ids through float64), and "image id ...
  # is not in the annotation file" with it.
  for evaluator in (coco_evaluator.COCOEvaluator(annotation_file),
                    coco_evaluator.COCOEvaluator()):
    evaluator.update(outputs)
    metrics = evaluator.result()
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["ARmax100"] == pytest.approx(1.0)

  # The string form of an id (the records' bytes) is the same image.
  evaluator = coco_evaluator.COCOEvaluator(annotation_file)
  outputs["source_id"] = np.array([b"img_000001", b"img_000002"],
                                  dtype=object)
  evaluator.update(outputs)
  assert evaluator.result()["AP"] == pytest.approx(1.0)


def test_image_ids_that_would_arrive_as_one_number_are_refused(tmp_path):
  image_dir, annotation_file = _string_id_coco(tmp_path)
  with open(annotation_file) as f:
    dataset = json.load(f)
  dataset["images"][0]["id"] = 7
  dataset["images"][1]["id"] = "007"
  dataset["annotations"][0]["image_id"] = 7
  dataset["annotations"][1]["image_id"] = "007"
  _write_json(annotation_file, dataset)
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"image ids 7 and '007' both become "
                     r"image id 7"):
    coco_records.convert_coco(image_dir, annotation_file, str(out / "val"),
                              num_shards=1, num_processes=1,
                              show_progress=False)
  assert not out.exists() or not os.listdir(out)
  with pytest.raises(ValueError, match=r"7 and '007' both arrive as source "
                     "id 7"):
    coco_evaluator.COCOEvaluator(annotation_file)


# Case 3 -------------------------------------------------------------------

# The displayed image: dark, with a bright block at rows 10..39, columns
# 60..109 of a 120 x 120 image, i.e. COCO box [60, 10, 50, 30].
_BLOCK = (slice(10, 40), slice(60, 110))
_BLOCK_BOX = [60, 10, 50, 30]


def _displayed(height=120, width=120):
  image = np.full((height, width), 20, np.uint8)
  image[_BLOCK] = 230
  return image


def _stored_with_orientation_6(displayed):
  # Orientation 6: viewers turn the stored pixels 90 degrees clockwise, so
  # the stored pixels are the displayed ones turned counter-clockwise.
  return _jpeg(np.rot90(displayed, k=1).copy(), orientation=6)


def _exif_coco(root, height=120, width=120):
  image_dir = root / "images"
  os.makedirs(image_dir, exist_ok=True)
  (image_dir / "phone.jpg").write_bytes(
      _stored_with_orientation_6(_displayed(height, width)))
  x, y, w, h = _BLOCK_BOX
  annotation_file = _write_json(root / "instances.json", {
      "images": [{"id": 5, "file_name": "phone.jpg", "height": height,
                  "width": width}],
      "annotations": [{"id": 1, "image_id": 5, "category_id": 1,
                       "bbox": _BLOCK_BOX, "area": w * h, "iscrowd": 0,
                       "segmentation": [[x, y, x + w, y, x + w, y + h, x,
                                         y + h]]}],
      "categories": _CATEGORIES})
  return str(image_dir), annotation_file


def test_exif_orientation_is_applied_to_the_pixels_boxes_and_masks(tmp_path):
  image_dir, annotation_file = _exif_coco(tmp_path)
  summary = coco_records.convert_coco(
      image_dir, annotation_file, str(tmp_path / "records" / "train"),
      num_shards=1, include_masks=True, num_processes=1,
      show_progress=False)
  serialized, = list(tf.data.TFRecordDataset(summary["files"]))
  decoded = detection_decoder.decode_detection_example(serialized,
                                                      include_masks=True)
  gray = decoded["image"].numpy()[..., 0].astype(np.float32)
  ymin, xmin, ymax, xmax = (decoded["groundtruth_boxes"].numpy()[0] *
                            [120, 120, 120, 120]).round().astype(int)
  # Before: the box covered background (mean about 20).
  assert gray[ymin:ymax, xmin:xmax].mean() > 200
  assert np.delete(gray, np.s_[10:40], axis=0).mean() < 40
  mask = decoded["groundtruth_instance_masks"].numpy()[0] > 0
  assert gray[mask].mean() > 200 and mask.sum() == pytest.approx(1500,
                                                                 rel=0.1)
  # No tag is left to make a reader turn the pixels again.
  example = tf.train.Example.FromString(serialized.numpy())
  data = example.features.feature["image/encoded"].bytes_list.value[0]
  with Image.open(io.BytesIO(data)) as image:
    assert image.getexif().get(_ORIENTATION_TAG, 1) == 1
  assert summary["num_exif_oriented"] == 1
  assert ("1 images had an EXIF orientation: turned to their displayed "
          "frame") in coco_records.format_summary(summary)


def test_exif_orientation_refused_or_ignored_by_choice(tmp_path):
  image_dir, annotation_file = _exif_coco(tmp_path, height=80, width=120)
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"phone\.jpg.*image id 5.*EXIF "
                     r"orientation 6.*turned 90 degrees clockwise"):
    coco_records.convert_coco(image_dir, annotation_file, str(out / "a"),
                              num_shards=1, num_processes=1,
                              show_progress=False, exif_orientation="error")
  # Stored frame (120 x 80) against the JSON's displayed 80 x 120: the
  # message says which choice fits.
  with pytest.raises(ValueError, match=r"120x80.*says 80x120.*EXIF "
                     r"orientation 6.*exif_orientation='apply'"):
    coco_records.convert_coco(image_dir, annotation_file, str(out / "b"),
                              num_shards=1, num_processes=1,
                              show_progress=False, exif_orientation="ignore")
  assert not out.exists() or not os.listdir(out)
  # The default fits the displayed size of a non-square image.
  summary = coco_records.convert_coco(
      image_dir, annotation_file, str(out / "c"), num_shards=1,
      num_processes=1, show_progress=False)
  assert summary["num_images"] == 1 and summary["num_exif_oriented"] == 1
  with pytest.raises(ValueError, match="exif_orientation must be one of"):
    coco_records.convert_coco(image_dir, annotation_file, str(out / "d"),
                              exif_orientation="rotate")
  # The command's flag reaches the converter.
  completed = subprocess.run(
      [sys.executable,
       os.path.join(_REPO, "scripts", "create_coco_tf_record.py"),
       f"--image_dir={image_dir}",
       f"--object_annotations_file={annotation_file}",
       f"--output_file_prefix={out / 'e'}", "--num_shards=1",
       "--num_processes=1", "--exif_orientation=error"],
      capture_output=True, text=True, check=False, timeout=300)
  assert completed.returncode != 0
  assert "phone.jpg' (image id 5) has EXIF orientation 6" in completed.stderr


def test_exif_orientation_in_image_folders_and_pascal(tmp_path):
  # Image folders: the record holds the displayed 80 x 120 image.
  folder = tmp_path / "folders" / "phone"
  os.makedirs(folder)
  (folder / "a.jpg").write_bytes(_stored_with_orientation_6(
      _displayed(80, 120)))
  result = image_folder_records.convert_image_folders(
      str(tmp_path / "folders"), str(tmp_path / "cls" / "train"),
      num_shards=1, num_processes=1, show_progress=False)
  assert result["num_exif_oriented"] == 1
  serialized, = list(tf.data.TFRecordDataset(result["files"]))
  image = classification.decode_classification_example(serialized)["image"]
  assert image.shape == (80, 120, 3)
  assert image.numpy()[_BLOCK].mean() > 200
  with pytest.raises(ValueError, match=r"a\.jpg' has EXIF orientation 6"):
    image_folder_records.convert_image_folders(
        str(tmp_path / "folders"), str(tmp_path / "cls2" / "train"),
        num_shards=1, num_processes=1, show_progress=False,
        exif_orientation="error")

  # PASCAL: the label map, drawn on the displayed image, lines up with it.
  voc = tmp_path / "VOC2012"
  for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    os.makedirs(voc / sub)
  (voc / "JPEGImages" / "x1.jpg").write_bytes(_stored_with_orientation_6(
      _displayed(80, 120)))
  label = np.zeros((80, 120), np.uint8)
  label[_BLOCK] = 1
  Image.fromarray(label).save(voc / "SegmentationClass" / "x1.png")
  (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("x1\n")
  summary = pascal_records.convert_pascal(
      str(voc), "val", str(tmp_path / "seg" / "val"), num_shards=1,
      num_processes=1, show_progress=False)
  assert summary["num_exif_oriented"] == 1
  serialized, = list(tf.data.TFRecordDataset(summary["files"]))
  decoded = segmentation_input.decode_segmentation_example(serialized)
  pixels = decoded["image"].numpy()[..., 0]
  classes = decoded["label"].numpy()[..., 0]
  assert pixels[classes == 1].mean() > 200 and pixels[classes == 0].mean() < 40
  with pytest.raises(ValueError, match=r"80x120.*120x80.*EXIF orientation 6"
                     r".*exif_orientation='apply'"):
    pascal_records.convert_pascal(
        str(voc), "val", str(tmp_path / "seg2" / "val"), num_shards=1,
        num_processes=1, show_progress=False, exif_orientation="ignore")


# Case 4 -------------------------------------------------------------------


def _short_polygon_coco(root):
  image_dir = root / "images"
  os.makedirs(image_dir)
  (image_dir / "a.jpg").write_bytes(_jpeg(_displayed(100, 120)))
  square = [[70, 50, 110, 50, 110, 90, 70, 90]]
  dataset = {
      "images": [{"id": 1, "file_name": "a.jpg", "height": 100,
                  "width": 120}],
      "annotations": [
          {"id": 11, "image_id": 1, "category_id": 1,
           "bbox": [10, 10, 40, 30], "area": 1200.0, "iscrowd": 0,
           "segmentation": [[10, 10, 50, 40]]},  # 2 points.
          {"id": 12, "image_id": 1, "category_id": 2,
           "bbox": [70, 50, 40, 40], "area": 1600.0, "iscrowd": 0,
           # A 2-point polygon before a real one (pycocotools would read
           # both as boxes).
           "segmentation": [[1, 1, 2, 2]] + square}],
      "categories": _CATEGORIES}
  return str(image_dir), _write_json(root / "instances.json", dataset), (
      dataset)


def test_polygons_of_fewer_than_3_points_dropped_alike(tmp_path):
  image_dir, annotation_file, dataset = _short_polygon_coco(tmp_path)
  summary = coco_records.convert_coco(
      image_dir, annotation_file, str(tmp_path / "records" / "train"),
      num_shards=1, include_masks=True, num_processes=1,
      show_progress=False)
  assert summary["num_annotations"] == 1 and summary["num_no_polygon"] == 1
  assert ("Dropped 1 annotations whose segmentation has no polygon of 3 or "
          "more points") in coco_records.format_summary(summary)
  serialized, = list(tf.data.TFRecordDataset(summary["files"]))
  decoded = detection_decoder.decode_detection_example(serialized,
                                                      include_masks=True)
  assert decoded["groundtruth_classes"].numpy().tolist() == [2]
  mask = decoded["groundtruth_instance_masks"].numpy()[0]
  assert mask[50:90, 70:110].mean() > 0.95 and mask.sum() < 1800

  # The mask evaluator, built from the same file, drops the same
  # annotation (before: a TypeError inside pycocotools, after training).
  detections = {1: [(2, [70, 50, 40, 40], 0.9), (1, [10, 10, 40, 30], 0.8)]}
  metrics = _evaluate(annotation_file, detections, include_mask=True)
  without = dict(dataset, annotations=dataset["annotations"][1:])
  expected = _evaluate(_write_json(tmp_path / "without.json", without),
                       detections, include_mask=True)
  assert metrics == expected
  assert metrics["mask_AP"] > 0.5


# Case 5 -------------------------------------------------------------------


def test_image_above_pillow_limit_converts(tmp_path):
  # 13,400 x 13,400 grayscale, 179.6 M pixels: above twice Pillow's default
  # MAX_IMAGE_PIXELS, where Image.open raises DecompressionBombError. A
  # uniform image compresses to about 2 MB.
  folder = tmp_path / "scans" / "map"
  os.makedirs(folder)
  buffer = io.BytesIO()
  Image.new("L", (13400, 13400), 128).save(buffer, format="JPEG",
                                           quality=50)
  (folder / "big.jpg").write_bytes(buffer.getvalue())
  result = image_folder_records.convert_image_folders(
      str(tmp_path / "scans"), str(tmp_path / "records" / "train"),
      num_shards=1, num_processes=1, show_progress=False)
  serialized, = list(tf.data.TFRecordDataset(result["files"]))
  features = tf.train.Example.FromString(serialized.numpy()).features.feature
  assert features["image/height"].int64_list.value == [13400]
  assert features["image/width"].int64_list.value == [13400]
  assert features["image/encoded"].bytes_list.value[0] == buffer.getvalue()
  # A limit only when asked for, named in the message.
  with pytest.raises(ValueError, match=r"big\.jpg' is 13400x13400.*"
                     r"179,560,000 pixels, more than max_image_pixels="
                     r"100,000,000"):
    image_folder_records.convert_image_folders(
        str(tmp_path / "scans"), str(tmp_path / "records2" / "train"),
        num_shards=1, num_processes=1, show_progress=False,
        max_image_pixels=100_000_000)
  assert not os.path.exists(tmp_path / "records2") or not os.listdir(
      tmp_path / "records2")


def test_pillow_limit_not_applied_by_any_converter(tmp_path, monkeypatch):
  # Pillow's limit lowered far below the images: it must not matter.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  image_dir, annotation_file = _string_id_coco(tmp_path / "coco")
  summary = coco_records.convert_coco(
      image_dir, annotation_file, str(tmp_path / "coco" / "out"),
      num_shards=1, num_processes=1, show_progress=False)
  assert summary["num_images"] == 2
  voc = tmp_path / "VOC2012"
  for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    os.makedirs(voc / sub)
  (voc / "JPEGImages" / "x1.jpg").write_bytes(_jpeg(_displayed(40, 60)))
  Image.fromarray(np.ones((40, 60), np.uint8)).save(
      voc / "SegmentationClass" / "x1.png")
  (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("x1\n")
  summary = pascal_records.convert_pascal(
      str(voc), "val", str(tmp_path / "seg" / "val"), num_shards=1,
      num_processes=1, show_progress=False)
  assert summary["num_images"] == 1
  assert Image.MAX_IMAGE_PIXELS == 100  # The user's setting is restored.
  with pytest.raises(ValueError, match=r"x1\.jpg.*40x60.*2,400 pixels, more "
                     r"than max_image_pixels=2,000"):
    pascal_records.convert_pascal(
        str(voc), "val", str(tmp_path / "seg2" / "val"), num_shards=1,
        num_processes=1, show_progress=False, max_image_pixels=2000)
