"""PASCAL VOC converter (with SBD) and the synthetic PASCAL-layout maker."""

import glob
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import io as scipy_io

from dataloaders import segmentation_input
from dataloaders.datasets import pascal_records
from dataloaders.datasets import synthetic_pascal

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string),
    "image/key/sha256": tf.io.FixedLenFeature([], tf.string),
    "image/segmentation/class/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/segmentation/class/format": tf.io.FixedLenFeature([], tf.string),
}


@pytest.fixture
def voc_dir(tmp_path):
  path = str(tmp_path / "VOC2012")
  synthetic_pascal.make_synthetic_pascal(path, num_train=6, num_val=3,
                                         image_size=((40, 56), (40, 64)))
  return path


def convert(voc_dir, split, prefix, **kwargs):
  return pascal_records.convert_pascal(voc_dir, split, prefix, num_shards=2,
                                       num_processes=1, show_progress=False,
                                       **kwargs)


def read_records(pattern):
  """{source id: parsed features} of every record."""
  records = {}
  for path in sorted(glob.glob(pattern)):
    for serialized in tf.data.TFRecordDataset(path):
      example = tf.io.parse_single_example(serialized, _FEATURES)
      records[example["image/source_id"].numpy().decode()] = example
  return records


def palette_ids(path):
  with Image.open(path) as image:
    assert image.mode == "P"
    return np.asarray(image)


def test_synthetic_maker_writes_the_voc_layout(voc_dir):
  lists = os.path.join(voc_dir, "ImageSets", "Segmentation")
  train = pascal_records.read_id_list(os.path.join(lists, "train.txt"))
  val = pascal_records.read_id_list(os.path.join(lists, "val.txt"))
  assert train[0] == "train_000001" and len(train) == 6 and len(val) == 3
  assert pascal_records.read_id_list(
      os.path.join(lists, "trainval.txt")) == train + val
  with Image.open(os.path.join(voc_dir, "SegmentationClass",
                               "train_000001.png")) as image:
    assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    assert image.getpalette()[255 * 3:] == [224, 224, 192]
  label = palette_ids(os.path.join(voc_dir, "SegmentationClass",
                                   "train_000001.png"))
  assert set(np.unique(label)) <= {0, 1, 2, 3, 255}
  assert np.any(label == 255) and np.any((label > 0) & (label < 255))
  # The void band separates every object from the background.
  assert not np.any(synthetic_pascal.void_band(
      np.where(label == 255, 0, label), 0))
  band = synthetic_pascal.void_band(np.array([[0, 0, 0, 1, 1, 1]]), 1)
  assert band.tolist() == [[False, False, True, True, False, False]]


def test_synthetic_maker_is_deterministic_and_refuses_to_overwrite(tmp_path):
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  for path in (first, second):
    synthetic_pascal.make_synthetic_pascal(path, num_train=3, num_val=1,
                                           image_size=(48, 48), seed=5)
  for name in ("JPEGImages/train_000002.jpg",
               "SegmentationClass/val_000001.png"):
    with open(os.path.join(first, name), "rb") as a, open(
        os.path.join(second, name), "rb") as b:
      assert a.read() == b.read()
  with pytest.raises(FileExistsError, match="already exist"):
    synthetic_pascal.make_synthetic_pascal(first, num_train=1, num_val=1)


def test_converts_a_voc_split(voc_dir, tmp_path):
  summary = convert(voc_dir, "val", str(tmp_path / "out" / "val"))
  assert summary["num_images"] == 3 and summary["num_voc_labels"] == 3
  assert summary["num_sbd_labels"] == 0 and len(summary["files"]) == 2
  assert "Wrote 3 images to 2 shards" in pascal_records.format_summary(
      summary)
  records = read_records(str(tmp_path / "out" / "val-*"))
  assert sorted(records) == ["val_000001", "val_000002", "val_000003"]
  example = records["val_000002"]
  with open(os.path.join(voc_dir, "JPEGImages", "val_000002.jpg"),
            "rb") as f:
    assert example["image/encoded"].numpy() == f.read()
  assert example["image/format"].numpy() == b"jpeg"
  assert example["image/filename"].numpy() == b"val_000002.jpg"
  # The label is stored as ids in a grayscale PNG (a palette PNG would be
  # decoded into colours by TensorFlow), 255 kept.
  stored = tf.io.decode_png(
      example["image/segmentation/class/encoded"], channels=1)[..., 0]
  expected = palette_ids(os.path.join(voc_dir, "SegmentationClass",
                                      "val_000002.png"))
  np.testing.assert_array_equal(stored, expected)
  assert (example["image/height"], example["image/width"]) == expected.shape
  serialized = next(
      s for path in summary["files"] for s in tf.data.TFRecordDataset(path)
      if b"val_000002" in s.numpy())
  decoded = segmentation_input.decode_segmentation_example(serialized)
  np.testing.assert_array_equal(decoded["label"][..., 0], expected)
  assert decoded["image"].shape == expected.shape + (3,)


def test_command_line_converter(voc_dir, tmp_path):
  prefix = str(tmp_path / "records" / "val")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts",
                                    "create_pascal_tf_record.py"),
       f"--voc_dir={voc_dir}", "--split=val", f"--output_file_prefix={prefix}",
       "--num_shards=1", "--num_classes=4", "--num_processes=1"],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Wrote 3 images to 1 shards" in result.stdout
  assert sorted(read_records(prefix + "-*")) == ["val_000001", "val_000002",
                                                 "val_000003"]


def write_label_png(path, label):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(label.astype(np.uint8)).save(path)  # Grayscale ids.


def test_train_split_with_sbd_png_is_the_augmented_set(voc_dir, tmp_path):
  sbd = tmp_path / "sbd"
  shape = (44, 50)
  rng = np.random.default_rng(0)
  sbd_label = rng.integers(0, 4, size=shape)
  # train_000002 has a VOC label (kept), val_000001 is in VOC val (left
  # out), extra_1/extra_2 exist only in SBD (image in sbd_dir/img).
  for image_id in ("train_000002", "val_000001", "extra_1", "extra_2"):
    write_label_png(str(sbd / "SegmentationClassAug" / f"{image_id}.png"),
                    sbd_label)
  os.makedirs(sbd / "img")
  for image_id in ("extra_1", "extra_2"):
    Image.fromarray(rng.integers(0, 255, size=shape + (3,), dtype=np.uint8)
                   ).save(str(sbd / "img" / f"{image_id}.jpg"))
  summary = convert(voc_dir, "train", str(tmp_path / "out" / "train"),
                    sbd_dir=str(sbd))
  assert summary["num_images"] == 8
  assert (summary["num_voc_labels"], summary["num_sbd_labels"]) == (6, 2)
  assert summary["sbd_label_source"] == "SegmentationClassAug PNG"
  records = read_records(str(tmp_path / "out" / "train-*"))
  assert "val_000001" not in records and "extra_2" in records
  extra = tf.io.decode_png(records["extra_1"][
      "image/segmentation/class/encoded"])[..., 0]
  np.testing.assert_array_equal(extra, sbd_label)
  voc = tf.io.decode_png(records["train_000002"][
      "image/segmentation/class/encoded"])[..., 0]
  np.testing.assert_array_equal(voc, palette_ids(os.path.join(
      voc_dir, "SegmentationClass", "train_000002.png")))


def test_sbd_mat_labels(voc_dir, tmp_path):
  sbd = tmp_path / "benchmark_RELEASE" / "dataset"
  os.makedirs(sbd / "cls")
  os.makedirs(sbd / "img")
  label = np.zeros((36, 40), np.uint8)
  label[5:20, 8:30] = 3
  scipy_io.savemat(str(sbd / "cls" / "2008_000123.mat"),
                   {"GTcls": {"Segmentation": label,
                              "Boundaries": np.zeros(1)}})
  Image.fromarray(np.full((36, 40, 3), 90, np.uint8)).save(
      str(sbd / "img" / "2008_000123.jpg"))
  summary = convert(voc_dir, "train", str(tmp_path / "out" / "train"),
                    sbd_dir=str(sbd))
  assert summary["sbd_label_source"] == "cls .mat"
  records = read_records(str(tmp_path / "out" / "train-*"))
  stored = tf.io.decode_png(records["2008_000123"][
      "image/segmentation/class/encoded"])[..., 0]
  np.testing.assert_array_equal(stored, label)


def test_missing_files_are_named_before_anything_is_written(voc_dir,
                                                            tmp_path):
  os.remove(os.path.join(voc_dir, "JPEGImages", "train_000004.jpg"))
  os.remove(os.path.join(voc_dir, "SegmentationClass", "train_000005.png"))
  with pytest.raises(FileNotFoundError) as e:
    convert(voc_dir, "train", str(tmp_path / "out" / "train"))
  message = str(e.value)
  assert "2 file(s) that do not exist" in message
  assert "id train_000004: image '" in message and "train_000004.jpg'" in (
      message)
  assert "id train_000005: label map '" in message
  assert not glob.glob(str(tmp_path / "out" / "*"))


@pytest.mark.parametrize("damage,message", [
    ("rgb", "is a RGB image; expected a palette \\(P\\) or grayscale"),
    ("value", "holds class ids \\[9\\] outside \\[0, 4\\)"),
    ("size", "is 10x12 \\(height x width\\) but its image"),
])
def test_bad_label_maps_stop_the_conversion(voc_dir, tmp_path, damage,
                                            message):
  path = os.path.join(voc_dir, "SegmentationClass", "val_000003.png")
  label = palette_ids(path)
  if damage == "rgb":
    Image.fromarray(np.stack([label] * 3, -1)).save(path)
  elif damage == "value":
    label = label.copy()
    label[0, 0] = 9
    write_label_png(path, label)
  else:
    write_label_png(path, label[:10, :12])
  with pytest.raises(ValueError, match=message) as e:
    convert(voc_dir, "val", str(tmp_path / "out" / "val"), num_classes=4)
  assert "val_000003.png" in str(e.value)
  assert not glob.glob(str(tmp_path / "out" / "*"))  # No shard left.


def test_folder_and_argument_errors(voc_dir, tmp_path):
  parent = str(tmp_path / "VOCdevkit")
  shutil.move(voc_dir, os.path.join(parent, "VOC2012"))
  with pytest.raises(FileNotFoundError, match="Did you mean --voc_dir=.*"
                     "VOCdevkit/VOC2012"):
    convert(parent, "val", str(tmp_path / "out"))
  voc_dir = os.path.join(parent, "VOC2012")
  with pytest.raises(ValueError, match="--sbd_dir adds SBD images to the "
                     "train split only"):
    convert(voc_dir, "val", str(tmp_path / "out"), sbd_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="neither SegmentationClassAug/ "
                     "\\(PNG label maps\\) nor cls/"):
    convert(voc_dir, "train", str(tmp_path / "out"), sbd_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="test.txt' does not exist"):
    convert(voc_dir, "test", str(tmp_path / "out"))


def test_voc_palette_colours():
  palette = pascal_records.voc_palette()
  colour = lambda i: palette[3 * i:3 * i + 3]
  assert colour(1) == [128, 0, 0] and colour(15) == [192, 128, 128]
  assert colour(20) == [0, 64, 128] and colour(255) == [224, 224, 192]
  buffer = io.BytesIO()
  image = Image.fromarray(np.array([[0, 15, 255]], np.uint8))
  image.putpalette(palette)
  image.save(buffer, format="PNG")
  assert np.asarray(Image.open(buffer)).tolist() == [[0, 15, 255]]
