"""Tests of dataloaders.datasets.coco_records and the synthetic COCO maker."""

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import mask as mask_utils

from dataloaders import detection_decoder
from dataloaders.datasets import coco_records
from dataloaders.datasets import synthetic_coco
from tests.dataloaders import helpers

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The keys of the TF Object Detection API / Model Garden COCO records.
MODEL_GARDEN_KEYS = {
    "image/encoded", "image/format", "image/height", "image/width",
    "image/filename", "image/source_id", "image/key/sha256",
    "image/object/bbox/xmin", "image/object/bbox/ymin",
    "image/object/bbox/xmax", "image/object/bbox/ymax",
    "image/object/class/label", "image/object/class/text",
    "image/object/is_crowd", "image/object/area",
}

_RAW_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string),
    "image/key/sha256": tf.io.FixedLenFeature([], tf.string),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
}

_CATEGORIES = [{"id": 1, "name": "circle", "supercategory": "shape"},
               {"id": 3, "name": "square", "supercategory": "shape"},
               {"id": 7, "name": "triangle", "supercategory": "shape"}]


def _crowd_rle(height, width):
  """Uncompressed RLE of a 4x6 block at rows 2..5, columns 30..35."""
  mask = np.zeros((height, width), np.uint8)
  mask[2:6, 30:36] = 1
  flat = mask.ravel(order="F")
  runs, value, count = [], 0, 0
  for pixel in flat:
    if pixel == value:
      count += 1
    else:
      runs.append(count)
      value, count = pixel, 1
  runs.append(count)
  return {"counts": [int(r) for r in runs], "size": [height, width]}


def _make_coco(root):
  """A tiny COCO dataset: 3 images (RGB JPEG, gray PNG, RGB PNG, one empty).

  Returns:
    (image_dir, annotation_file, dataset dict).
  """
  rng = np.random.default_rng(0)
  image_dir = root / "images"
  os.makedirs(image_dir)
  (image_dir / "a.jpg").write_bytes(helpers.encode_image(
      helpers.random_image(rng, 40, 60), "jpeg"))
  (image_dir / "b.png").write_bytes(helpers.encode_image(
      helpers.random_image(rng, 30, 50, channels=1), "png"))
  (image_dir / "c.png").write_bytes(helpers.encode_image(
      helpers.random_image(rng, 24, 20), "png"))
  b_mask = np.zeros((30, 50), np.uint8, order="F")
  b_mask[5:15, 10:30] = 1
  b_rle = mask_utils.encode(b_mask)
  b_rle["counts"] = b_rle["counts"].decode()  # As it is stored in JSON.
  annotations = [
      # Image 1 (40x60): a polygon square, a crowd RLE, a box partly outside.
      {"id": 10, "image_id": 1, "category_id": 3,
       "bbox": [10.0, 5.0, 20.0, 10.0], "area": 200.0, "iscrowd": 0,
       "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
      {"id": 11, "image_id": 1, "category_id": 1,
       "bbox": [30.0, 2.0, 6.0, 4.0], "area": 24.0, "iscrowd": 1,
       "segmentation": _crowd_rle(40, 60)},
      {"id": 12, "image_id": 1, "category_id": 7,
       "bbox": [50.0, 30.0, 20.0, 20.0], "area": 100.0, "iscrowd": 0,
       "segmentation": [[50, 30, 60, 30, 60, 40, 50, 40]]},
      # Image 2 (30x50, grayscale PNG): compressed RLE, two bad boxes.
      {"id": 20, "image_id": 2, "category_id": 7,
       "bbox": [10.0, 5.0, 20.0, 10.0], "area": 200.0, "iscrowd": 0,
       "segmentation": b_rle},
      {"id": 21, "image_id": 2, "category_id": 1,
       "bbox": [10.0, 5.0, 0.0, 10.0], "area": 0.0, "iscrowd": 0,
       "segmentation": [[10, 5, 10, 5, 10, 15]]},
      {"id": 22, "image_id": 2, "category_id": 1,
       "bbox": [60.0, 5.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0,
       "segmentation": [[60, 5, 70, 5, 70, 15, 60, 15]]},
  ]
  dataset = {
      "info": {}, "licenses": [],
      "images": [
          {"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
          {"id": 2, "file_name": "b.png", "height": 30, "width": 50},
          {"id": 3, "file_name": "c.png", "height": 24, "width": 20},
      ],
      "annotations": annotations,
      "categories": _CATEGORIES,
  }
  annotation_file = root / "instances.json"
  annotation_file.write_text(json.dumps(dataset))
  return str(image_dir), str(annotation_file), dataset


def _read_records(files):
  examples = {}
  for serialized in tf.data.TFRecordDataset(files):
    example = tf.train.Example.FromString(serialized.numpy())
    parsed = tf.io.parse_single_example(serialized, _RAW_FEATURES)
    dense = {k: (tf.sparse.to_dense(v).numpy()
                 if isinstance(v, tf.SparseTensor) else v.numpy())
             for k, v in parsed.items()}
    dense["keys"] = set(example.features.feature.keys())
    dense["serialized"] = serialized
    examples[int(dense["image/source_id"])] = dense
  return examples


def test_round_trip_with_masks_two_processes(tmp_path):
  image_dir, annotation_file, dataset = _make_coco(tmp_path)
  prefix = str(tmp_path / "out" / "train")
  summary = coco_records.convert_coco(
      image_dir, annotation_file, prefix, num_shards=2, include_masks=True,
      num_processes=2, show_progress=False)
  assert summary["files"] == [f"{prefix}-0000{i}-of-00002.tfrecord"
                              for i in range(2)]
  assert sorted(os.listdir(tmp_path / "out")) == [
      "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
  assert summary["num_images"] == 3
  assert summary["num_images_without_objects"] == 1
  assert summary["num_annotations"] == 4
  assert summary["num_crowd"] == 1
  assert summary["skipped"] == {"non_positive_size": 1, "outside_image": 1}
  assert summary["num_clipped"] == 1
  text = coco_records.format_summary(summary)
  assert "Skipped 2 annotations" in text
  assert "1 with box width or height <= 0" in text
  assert "1 with box entirely outside the image" in text

  examples = _read_records(summary["files"])
  assert sorted(examples) == [1, 2, 3]
  ground_truth = coco_api.COCO(annotation_file)
  expected_objects = {1: [10, 11, 12], 2: [20], 3: []}
  files = {1: ("a.jpg", "jpeg"), 2: ("b.png", "png"), 3: ("c.png", "png")}
  for image in dataset["images"]:
    example = examples[image["id"]]
    height, width = image["height"], image["width"]
    file_name, image_format = files[image["id"]]
    data = open(os.path.join(image_dir, file_name), "rb").read()
    assert example["keys"] == MODEL_GARDEN_KEYS | {"image/object/mask"}
    assert example["image/encoded"] == data  # Original bytes.
    assert example["image/format"].decode() == image_format
    assert (example["image/height"], example["image/width"]) == (height,
                                                                 width)
    assert example["image/filename"].decode() == file_name
    assert example["image/source_id"] == str(image["id"]).encode()
    assert example["image/key/sha256"].decode() == hashlib.sha256(
        data).hexdigest()

    anns = [ground_truth.anns[i] for i in expected_objects[image["id"]]]
    assert len(example["image/object/class/label"]) == len(anns)
    for k, ann in enumerate(anns):
      x, y, w, h = ann["bbox"]
      # Clipped to the image (annotation 12 sticks out at the right/bottom).
      expected = [x / width, y / height, min(x + w, width) / width,
                  min(y + h, height) / height]
      got = [example[f"image/object/bbox/{c}"][k]
             for c in ("xmin", "ymin", "xmax", "ymax")]
      np.testing.assert_allclose(got, expected, atol=1e-6)
      assert example["image/object/class/label"][k] == ann["category_id"]
      assert example["image/object/class/text"][k].decode() == (
          ground_truth.cats[ann["category_id"]]["name"])
      assert example["image/object/is_crowd"][k] == ann["iscrowd"]
      assert example["image/object/area"][k] == pytest.approx(ann["area"])
      mask = np.array(Image.open(io.BytesIO(
          example["image/object/mask"][k])))
      assert mask.shape == (height, width) and mask.dtype == np.uint8
      assert set(np.unique(mask)) <= {0, 1}
      rle = ground_truth.annToRLE(ann)
      np.testing.assert_array_equal(mask, mask_utils.decode(rle))
      assert mask.sum() == mask_utils.area(rle)
      assert mask.sum() == pytest.approx(ann["area"], rel=0.1)

  # The detection decoder reads them in tf.data, gray PNG and K = 0 included.
  decoded = list(tf.data.TFRecordDataset(summary["files"]).map(
      lambda s: detection_decoder.decode_detection_example(
          s, include_masks=True)).as_numpy_iterator())
  by_id = {int(d["source_id"]): d for d in decoded}
  assert by_id[2]["image"].shape == (30, 50, 3)
  assert by_id[3]["groundtruth_boxes"].shape == (0, 4)
  assert by_id[3]["groundtruth_instance_masks"].shape == (0, 24, 20)
  np.testing.assert_array_equal(by_id[1]["groundtruth_classes"], [3, 1, 7])
  np.testing.assert_array_equal(by_id[1]["groundtruth_is_crowd"],
                                [False, True, False])


def test_without_masks_has_exactly_the_model_garden_keys(tmp_path):
  image_dir, annotation_file, _ = _make_coco(tmp_path)
  summary = coco_records.convert_coco(
      image_dir, annotation_file, str(tmp_path / "out" / "val"),
      num_shards=1, num_processes=1, show_progress=False)
  examples = _read_records(summary["files"])
  for example in examples.values():
    assert example["keys"] == MODEL_GARDEN_KEYS


def test_missing_image_fails_before_writing(tmp_path):
  image_dir, annotation_file, dataset = _make_coco(tmp_path)
  dataset["images"].append({"id": 42, "file_name": "missing.jpg",
                            "height": 10, "width": 10})
  with open(annotation_file, "w") as f:
    json.dump(dataset, f)
  out = tmp_path / "out"
  with pytest.raises(FileNotFoundError) as error:
    coco_records.convert_coco(image_dir, annotation_file, str(out / "train"),
                              num_shards=2, num_processes=1,
                              show_progress=False)
  message = str(error.value)
  assert "image id 42" in message
  assert os.path.join(image_dir, "missing.jpg") in message
  assert not out.exists() or not os.listdir(out)


def test_bad_image_fails_and_leaves_no_shard(tmp_path):
  image_dir, annotation_file, _ = _make_coco(tmp_path)
  with open(os.path.join(image_dir, "b.png"), "wb") as f:
    f.write(b"not an image")
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"image id 2.*neither JPEG nor PNG"):
    coco_records.convert_coco(image_dir, annotation_file, str(out / "train"),
                              num_shards=2, num_processes=1,
                              show_progress=False)
  assert not os.listdir(out)


def test_size_mismatch_names_the_image(tmp_path):
  image_dir, annotation_file, dataset = _make_coco(tmp_path)
  dataset["images"][2]["height"] = 99
  with open(annotation_file, "w") as f:
    json.dump(dataset, f)
  with pytest.raises(ValueError, match=r"c.png.*image id 3.*24x20.*99x20"):
    coco_records.convert_coco(image_dir, annotation_file,
                              str(tmp_path / "out" / "train"), num_shards=1,
                              num_processes=1, show_progress=False)


def test_unknown_category_names_the_annotation(tmp_path):
  image_dir, annotation_file, dataset = _make_coco(tmp_path)
  dataset["annotations"][0]["category_id"] = 5
  with open(annotation_file, "w") as f:
    json.dump(dataset, f)
  with pytest.raises(ValueError, match=r"annotation id 10 .*category id 5"):
    coco_records.convert_coco(image_dir, annotation_file,
                              str(tmp_path / "out" / "train"), num_shards=1,
                              num_processes=1, show_progress=False)


def test_cli_flags(tmp_path):
  image_dir, annotation_file, _ = _make_coco(tmp_path)
  prefix = str(tmp_path / "out" / "val")
  completed = subprocess.run(
      [sys.executable,
       os.path.join(_REPO, "scripts", "create_coco_tf_record.py"),
       f"--image_dir={image_dir}",
       f"--object_annotations_file={annotation_file}",
       f"--output_file_prefix={prefix}", "--num_shards=1", "--include_masks",
       "--num_processes=1"],
      capture_output=True, text=True, check=False, timeout=300)
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert "Skipped 2 annotations" in completed.stdout
  assert os.path.exists(f"{prefix}-00000-of-00001.tfrecord")


def test_synthetic_coco(tmp_path):
  first = synthetic_coco.make_synthetic_coco(
      str(tmp_path / "a"), num_train=48, num_val=8, seed=3)
  again = synthetic_coco.make_synthetic_coco(
      str(tmp_path / "b"), num_train=48, num_val=8, seed=3)
  other = synthetic_coco.make_synthetic_coco(
      str(tmp_path / "c"), num_train=4, num_val=8, seed=4)
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic_coco.make_synthetic_coco(str(tmp_path / "a"), num_train=1,
                                       num_val=1)

  for split in ("train", "val"):
    a, b = first[split], again[split]
    assert (open(a["annotation_file"]).read() ==
            open(b["annotation_file"]).read())
    names = sorted(os.listdir(a["image_dir"]))
    assert names == sorted(os.listdir(b["image_dir"]))
    for name in names:
      assert (open(os.path.join(a["image_dir"], name), "rb").read() ==
              open(os.path.join(b["image_dir"], name), "rb").read())
  assert (open(first["train"]["annotation_file"]).read() !=
          open(other["train"]["annotation_file"]).read())

  ground_truth = coco_api.COCO(first["train"]["annotation_file"])
  dataset = ground_truth.dataset
  assert set(dataset) == {"info", "licenses", "images", "annotations",
                          "categories"}
  assert [c["id"] for c in dataset["categories"]] == [1, 3, 7]
  assert all(set(c) == {"id", "name", "supercategory"}
             for c in dataset["categories"])
  assert len(dataset["images"]) == 48
  sizes = set()
  for image in dataset["images"]:
    assert {"id", "file_name", "height", "width"} <= set(image)
    with Image.open(os.path.join(first["train"]["image_dir"],
                                 image["file_name"])) as pil_image:
      assert pil_image.size == (image["width"], image["height"])
    sizes.add(image["height"] / image["width"])
  assert min(sizes) < 0.9 and max(sizes) > 1.1  # Varied aspect ratios.

  areas = []
  objects_per_image = {}
  for ann in dataset["annotations"]:
    assert set(ann) == {"id", "image_id", "category_id", "bbox", "area",
                        "iscrowd", "segmentation"}
    image = ground_truth.imgs[ann["image_id"]]
    rle = ground_truth.annToRLE(ann)
    assert mask_utils.area(rle) == pytest.approx(ann["area"], rel=0.25,
                                                 abs=8)
    x, y, w, h = ann["bbox"]
    assert 0 <= x and x + w <= image["width"] + 1e-6
    assert 0 <= y and y + h <= image["height"] + 1e-6
    if ann["iscrowd"]:
      assert isinstance(ann["segmentation"]["counts"], list)
      assert ann["area"] == mask_utils.area(rle)
    else:
      assert isinstance(ann["segmentation"], list)
      areas.append(ann["area"])
      objects_per_image[ann["image_id"]] = objects_per_image.get(
          ann["image_id"], 0) + 1
  areas = np.array(areas)
  assert np.any(areas < 32 ** 2)
  assert np.any((areas >= 32 ** 2) & (areas < 96 ** 2))
  assert np.any(areas >= 96 ** 2)
  assert first["train"]["num_crowd"] > 0 and first["val"]["num_crowd"] > 0
  assert first["train"]["num_empty_images"] > 0
  assert first["val"]["num_empty_images"] > 0
  assert max(objects_per_image.values()) <= 6
  # Ids are unique across the splits.
  val = json.load(open(first["val"]["annotation_file"]))
  assert not ({i["id"] for i in val["images"]} &
              {i["id"] for i in dataset["images"]})

  # The drawn pixels are those of the polygon: inside is the category's
  # colour, not the background.
  ann = next(a for a in dataset["annotations"]
             if not a["iscrowd"] and a["area"] > 400)
  image = ground_truth.imgs[ann["image_id"]]
  pixels = np.asarray(Image.open(os.path.join(
      first["train"]["image_dir"], image["file_name"])), np.float32)
  mask = mask_utils.decode(ground_truth.annToRLE(ann)).astype(bool)
  colour = dict((c[0], c[3]) for c in synthetic_coco.CATEGORIES)[
      ann["category_id"]]
  assert np.abs(np.median(pixels[mask], axis=0) - colour).max() < 30


def test_synthetic_coco_converts(tmp_path):
  result = synthetic_coco.make_synthetic_coco(
      str(tmp_path), num_train=10, num_val=0, image_size=(64, 96))
  summary = coco_records.convert_coco(
      result["train"]["image_dir"], result["train"]["annotation_file"],
      str(tmp_path / "records" / "train"), num_shards=1, include_masks=True,
      num_processes=1, show_progress=False)
  assert summary["num_images"] == 10
  assert summary["num_annotations"] == result["train"]["num_annotations"]
  assert sum(summary["skipped"].values()) == 0
  for example in tf.data.TFRecordDataset(summary["files"]).map(
      lambda s: detection_decoder.decode_detection_example(
          s, include_masks=True)):
    assert tuple(example["image"].shape) == (64, 96, 3)
    masks = example["groundtruth_instance_masks"].numpy()
    areas = example["groundtruth_area"].numpy()
    np.testing.assert_allclose(masks.sum(axis=(1, 2)), areas, rtol=0.3,
                               atol=8)
