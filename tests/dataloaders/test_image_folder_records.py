"""Tests of dataloaders.datasets.image_folder_records."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dataloaders import classification
from dataloaders.datasets import image_folder_records
from tests.dataloaders import helpers

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/text": tf.io.FixedLenFeature([], tf.string),
}


def _make_tree(root):
  """input tree: 3 classes, mixed formats and sizes; returns {bytes: info}."""
  rng = np.random.default_rng(0)
  files = {}
  layout = {"zebra": [("a.png", "png", 3), ("b.JPEG", "jpeg", 3)],
            "ant": [("x.jpg", "jpeg", 1), ("y.png", "png", 1),
                    ("z.jpeg", "jpeg", 3)],
            "cat": [("c.PNG", "png", 3)]}
  for class_name, images in layout.items():
    os.makedirs(root / class_name)
    (root / class_name / "notes.txt").write_text("not an image")
    for i, (name, image_format, channels) in enumerate(images):
      height, width = 5 + i, 9 - i
      data = helpers.encode_image(
          helpers.random_image(rng, height, width, channels), image_format)
      (root / class_name / name).write_bytes(data)
      files[data] = (class_name, image_format, height, width)
  return files


def _read_all(files):
  dataset = tf.data.TFRecordDataset(files)
  return [tf.io.parse_single_example(s, _FEATURES) for s in dataset]


def test_round_trip_two_processes(tmp_path):
  files = _make_tree(tmp_path / "in")
  prefix = str(tmp_path / "out" / "train")
  result = image_folder_records.convert_image_folders(
      str(tmp_path / "in"), prefix, num_shards=3, num_processes=2,
      show_progress=False)
  assert result["num_examples"] == 6
  assert result["num_classes"] == 3
  assert result["files"] == [f"{prefix}-{i:05d}-of-00003.tfrecord"
                             for i in range(3)]
  # Classes sorted by folder name.
  with open(f"{prefix}-labels.txt") as f:
    assert f.read() == "ant\ncat\nzebra\n"
  assert sorted(os.listdir(tmp_path / "out")) == sorted(
      [os.path.basename(p) for p in result["files"]] + ["train-labels.txt"])

  examples = _read_all(result["files"])
  assert len(examples) == 6
  labels = {"ant": 0, "cat": 1, "zebra": 2}
  for example in examples:
    data = example["image/encoded"].numpy()
    class_name, image_format, height, width = files[data]  # Same bytes.
    assert example["image/class/text"].numpy().decode() == class_name
    assert int(example["image/class/label"]) == labels[class_name]
    assert example["image/format"].numpy().decode() == image_format
    assert (int(example["image/height"]), int(example["image/width"])) == (
        height, width)
  # The training decoder reads them.
  for serialized in tf.data.TFRecordDataset(result["files"]):
    decoded = classification.decode_classification_example(serialized)
    assert decoded["image"].shape[-1] == 3


def test_label_file_order_and_flat_folder_mapping(tmp_path):
  _make_tree(tmp_path / "in")
  label_file = tmp_path / "synsets.txt"
  label_file.write_text("zebra striped horse\n\ncat\nant\nbee\n")
  result = image_folder_records.convert_image_folders(
      str(tmp_path / "in"), str(tmp_path / "train"), num_shards=2,
      num_processes=1, label_file=str(label_file), show_progress=False)
  assert result["num_classes"] == 4
  assert (tmp_path / "train-labels.txt").read_text() == (
      "zebra\ncat\nant\nbee\n")
  by_text = {e["image/class/text"].numpy().decode():
             int(e["image/class/label"]) for e in _read_all(result["files"])}
  assert by_text == {"zebra": 0, "cat": 1, "ant": 2}

  # ILSVRC-style validation: a flat folder and a filename -> class CSV.
  flat = tmp_path / "val"
  os.makedirs(flat)
  rng = np.random.default_rng(1)
  for name in ["v1.JPEG", "v2.JPEG", "v3.png"]:
    (flat / name).write_bytes(helpers.encode_image(
        helpers.random_image(rng, 6, 6), "png" if name.endswith("png")
        else "jpeg"))
  csv = tmp_path / "val.csv"
  csv.write_text("ImageId,PredictionString\nv1,bee 1 2 3 4\n"
                 "v2,ant 5 6 7 8\nv3.png,bee\n")
  mapping = image_folder_records.read_labels_csv(str(csv))
  result = image_folder_records.convert_image_folders(
      str(flat), str(tmp_path / "validation"), num_shards=1,
      num_processes=1, label_file=str(tmp_path / "train-labels.txt"),
      image_labels=mapping, show_progress=False)
  labels = sorted(int(e["image/class/label"])
                  for e in _read_all(result["files"]))
  assert labels == [2, 3, 3]

  del mapping["v2"]
  with pytest.raises(ValueError, match="v2.JPEG"):
    image_folder_records.convert_image_folders(
        str(flat), str(tmp_path / "validation2"), num_shards=1,
        num_processes=1, image_labels=mapping, show_progress=False)


def test_unknown_class_folder_is_named(tmp_path):
  _make_tree(tmp_path / "in")
  label_file = tmp_path / "labels.txt"
  label_file.write_text("ant\ncat\n")
  with pytest.raises(ValueError, match="zebra"):
    image_folder_records.convert_image_folders(
        str(tmp_path / "in"), str(tmp_path / "out"), num_shards=1,
        num_processes=1, label_file=str(label_file), show_progress=False)


@pytest.mark.parametrize("num_processes", [1, 2])
def test_corrupt_image_named_and_nothing_left(tmp_path, num_processes):
  _make_tree(tmp_path / "in")
  good = (tmp_path / "in" / "cat" / "c.PNG").read_bytes()
  (tmp_path / "in" / "cat" / "broken.png").write_bytes(good[:len(good) // 2])
  os.makedirs(tmp_path / "out")
  with pytest.raises(ValueError, match="broken.png"):
    image_folder_records.convert_image_folders(
        str(tmp_path / "in"), str(tmp_path / "out" / "train"), num_shards=4,
        num_processes=num_processes, show_progress=False)
  # No shard, complete or temporary, and no labels file.
  assert os.listdir(tmp_path / "out") == []


def test_not_an_image_named(tmp_path):
  os.makedirs(tmp_path / "in" / "a")
  (tmp_path / "in" / "a" / "fake.jpg").write_bytes(b"GIF89a not really")
  with pytest.raises(ValueError, match="fake.jpg"):
    image_folder_records.convert_image_folders(
        str(tmp_path / "in"), str(tmp_path / "out"), num_shards=1,
        num_processes=1, show_progress=False)
  with pytest.raises(FileNotFoundError, match="missing"):
    image_folder_records.convert_image_folders(
        str(tmp_path / "missing"), str(tmp_path / "out"), num_processes=1)
