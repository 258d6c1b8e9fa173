"""Tests of dataloaders.datasets.digits (real 8x8 scans from scikit-learn)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataloaders import classification
from dataloaders.datasets import digits


def _listing(root):
  """{split: {digit: sorted file names}}."""
  return {split: {d: sorted(os.listdir(root / split / d))
                  for d in sorted(os.listdir(root / split))}
          for split in ("train", "validation")}


def test_digits_folders_split_fixed_and_deterministic(tmp_path):
  counts = digits.write_digits_folders(str(tmp_path / "a"))
  assert counts == {"train": 1437, "validation": 360}
  listing = _listing(tmp_path / "a")
  assert sorted(listing["train"]) == [str(d) for d in range(10)]
  assert sorted(listing["validation"]) == [str(d) for d in range(10)]
  names = [n for split in listing.values() for files in split.values()
           for n in files]
  assert len(names) == 1797 and len(set(names)) == 1797  # Disjoint split.
  # Stratified: every digit has about 20% of its images held out.
  for d in listing["train"]:
    held_out = len(listing["validation"][d])
    total = held_out + len(listing["train"][d])
    assert abs(held_out - 0.2 * total) <= 1

  image = Image.open(tmp_path / "a" / "train" / "0" / listing["train"]["0"][0])
  assert image.mode == "L" and image.size == (32, 32)
  array = np.asarray(image)
  levels = {int(round(v * 255 / 16)) for v in range(17)}  # 0..16 scaled.
  assert set(np.unique(array).tolist()) <= levels and array.max() > 0
  assert (array[::4, ::4].repeat(4, 0).repeat(4, 1) == array).all()

  digits.write_digits_folders(str(tmp_path / "b"))
  assert _listing(tmp_path / "b") == listing  # Deterministic.
  with pytest.raises(FileExistsError, match="already holds files"):
    digits.write_digits_folders(str(tmp_path / "b"))


def test_ensure_digits_records_idempotent(tmp_path):
  data_dir = str(tmp_path / "digits")
  info = digits.ensure_digits_records(data_dir, num_shards=2)
  assert info["num_train"] == 1437 and info["num_eval"] == 360
  assert info["num_classes"] == 10
  with open(info["labels_file"]) as f:
    assert f.read().split() == [str(d) for d in range(10)]
  files = sorted(tf.io.gfile.glob(info["train_pattern"]) +
                 tf.io.gfile.glob(info["eval_pattern"]))
  assert len(files) == 4
  mtimes = {p: os.stat(p).st_mtime_ns for p in files}

  again = digits.ensure_digits_records(data_dir, num_shards=2)
  assert again == info
  assert {p: os.stat(p).st_mtime_ns for p in files} == mtimes  # Untouched.

  dataset = classification.classification_dataset(
      info["eval_pattern"], training=False, global_batch_size=64,
      output_size=32, num_classes=10)
  labels = np.concatenate([l["label"][l["valid"]]
                           for _, l in dataset.as_numpy_iterator()])
  assert len(labels) == 360
  assert np.bincount(labels, minlength=10).min() >= 35

  # A half-written build (no manifest) is rebuilt from scratch.
  os.remove(os.path.join(data_dir, "digits_manifest.json"))
  os.remove(files[0])
  rebuilt = digits.ensure_digits_records(data_dir, num_shards=2)
  assert rebuilt == info
  assert all(os.path.exists(p) for p in files)
