"""The scikit-learn handwritten digits as a tiny, real image dataset.

`sklearn.datasets.load_digits` ships 1797 real 8x8 scans of handwritten
digits (UCI optdigits test set, values 0..16) inside the package: nothing is
downloaded. They are written as viewable 32x32 grayscale PNGs in class
folders, then converted to TFRecords by the same converter as ImageNet, so
the whole classification pipeline runs end to end on real data in seconds.
"""

import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from dataloaders.datasets import image_folder_records

NUM_CLASSES = 10
UPSCALE = 4  # 8x8 scans -> 32x32 PNGs.

_SPLITS = ("train", "validation")
_MANIFEST = "digits_manifest.json"
_MANIFEST_VERSION = 1
_IMAGES_SUBDIR = "digits_png"


def _folder_has_files(folder):
  return tf.io.gfile.isdir(folder) and bool(tf.io.gfile.listdir(folder))


def write_digits_folders(output_dir, validation_fraction=0.2, seed=0,
                         overwrite=False):
  """Writes the digits as PNGs, class per folder, split into train/validation.

  Layout: output_dir/{train,validation}/<digit>/NNNN.png, NNNN the index of
  the scan in `load_digits` (0000..1796). Images are uint8 grayscale 32x32:
  the 0..16 scan scaled to 0..255, upscaled 4x by nearest neighbour.

  The split is stratified by digit and fixed by `seed`
  (sklearn.model_selection.train_test_split); with the defaults 1437 train
  and 360 validation images.

  Args:
    output_dir: str, destination folder (gs:// allowed).
    validation_fraction: float in (0, 1), share of each digit held out.
    seed: int, seed of the split.
    overwrite: bool; when output_dir/train or output_dir/validation already
      holds files, delete them first (True) or raise (False).

  Returns:
    dict {"train": number of train images, "validation": number of
    validation images}.

  Raises:
    FileExistsError: when a split folder holds files and not `overwrite`.
    ValueError: when validation_fraction is not in (0, 1).
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in (0, 1), got "
                     f"{validation_fraction}.")
  for split in _SPLITS:
    folder = os.path.join(output_dir, split)
    if _folder_has_files(folder):
      if not overwrite:
        raise FileExistsError(
            f"'{folder}' already holds files; expected an empty or missing "
            "folder (pass overwrite=True / --overwrite to replace it).")
      tf.io.gfile.rmtree(folder)

  digits = datasets.load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255)
  images = images.astype(np.uint8)
  images = images.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)
  labels = digits.target.astype(np.int64)
  indices = np.arange(len(labels))
  train_indices, eval_indices = model_selection.train_test_split(
      indices, test_size=validation_fraction, random_state=seed,
      stratify=labels)

  counts = {}
  for split, split_indices in zip(_SPLITS, (train_indices, eval_indices)):
    for digit in range(NUM_CLASSES):
      tf.io.gfile.makedirs(os.path.join(output_dir, split, str(digit)))
    for index in sorted(split_indices):
      buffer = io.BytesIO()
      Image.fromarray(images[index], mode="L").save(buffer, format="PNG")
      path = os.path.join(output_dir, split, str(labels[index]),
                          f"{index:04d}.png")
      with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())
    counts[split] = len(split_indices)
  return counts


def _result(data_dir, manifest):
  def pattern(split):
    return os.path.join(
        data_dir,
        f"digits-{split}-*-of-{manifest['num_shards']:05d}.tfrecord")
  return {
      "train_pattern": pattern("train"),
      "eval_pattern": pattern("validation"),
      "num_train": manifest["num_train"],
      "num_eval": manifest["num_eval"],
      "num_classes": manifest["num_classes"],
      "labels_file": os.path.join(data_dir, manifest["labels_file"]),
  }


def _read_manifest(data_dir, expected):
  """The manifest when it matches `expected` and its files exist, else None."""
  path = os.path.join(data_dir, _MANIFEST)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      manifest = json.load(f)
  except (ValueError, tf.errors.OpError):
    return None
  if any(manifest.get(k) != v for k, v in expected.items()):
    return None
  for name in manifest.get("files", []) + [manifest.get("labels_file", "")]:
    if not tf.io.gfile.exists(os.path.join(data_dir, name)):
      return None
  return manifest


def ensure_digits_records(data_dir, num_shards=4, validation_fraction=0.2,
                          seed=0):
  """Creates the digits TFRecords in `data_dir` unless they already exist.

  Idempotent: a manifest, written last, records a complete build; when it
  is present, matches the arguments and its files exist, nothing is
  written. Otherwise (first call, or an interrupted or different earlier
  build) the digit PNGs and records are rebuilt from scratch. Files written
  (all owned by this function; do not keep other files under these names):

    data_dir/digits_png/{train,validation}/<digit>/NNNN.png
    data_dir/digits-{train,validation}-SSSSS-of-NNNNN.tfrecord
    data_dir/digits-{train,validation}-labels.txt   ("0".."9")
    data_dir/digits_manifest.json

  Args:
    data_dir: str, folder for the dataset (gs:// allowed).
    num_shards: int, shards per split.
    validation_fraction: float in (0, 1), see `write_digits_folders`.
    seed: int, seed of the split.

  Returns:
    dict with "train_pattern" and "eval_pattern" (str, TFRecord globs),
    "num_train" and "num_eval" (int, examples), "num_classes" (10) and
    "labels_file" (str, class names in label order).
  """
  expected = {"version": _MANIFEST_VERSION, "num_shards": int(num_shards),
              "validation_fraction": float(validation_fraction),
              "seed": int(seed)}
  manifest = _read_manifest(data_dir, expected)
  if manifest is not None:
    return _result(data_dir, manifest)

  print(f"Building the digits dataset in '{data_dir}' ...", flush=True)
  tf.io.gfile.makedirs(data_dir)
  manifest_path = os.path.join(data_dir, _MANIFEST)
  if tf.io.gfile.exists(manifest_path):
    tf.io.gfile.remove(manifest_path)
  for stale in tf.io.gfile.glob(os.path.join(data_dir, "digits-*.tfrecord*")):
    tf.io.gfile.remove(stale)

  images_dir = os.path.join(data_dir, _IMAGES_SUBDIR)
  counts = write_digits_folders(images_dir, validation_fraction, seed,
                                overwrite=True)
  print(f"  wrote {counts['train']} train and {counts['validation']} "
        f"validation PNGs under '{images_dir}'", flush=True)

  files = []
  labels_file = None
  num_examples = {}
  for split in _SPLITS:
    result = image_folder_records.convert_image_folders(
        os.path.join(images_dir, split),
        os.path.join(data_dir, f"digits-{split}"),
        num_shards=num_shards, num_processes=1,
        # Validation uses the train labels, so both splits agree.
        label_file=labels_file, show_progress=False)
    labels_file = labels_file or result["labels_file"]
    files += [os.path.basename(p) for p in result["files"]]
    files.append(os.path.basename(result["labels_file"]))
    num_examples[split] = result["num_examples"]
    if result["num_classes"] != NUM_CLASSES:
      raise ValueError(f"Digits {split} split has {result['num_classes']} "
                       f"classes; expected {NUM_CLASSES}.")
    print(f"  wrote {result['num_examples']} {split} examples to "
          f"{len(result['files'])} shards", flush=True)

  manifest = dict(expected, num_train=num_examples["train"],
                  num_eval=num_examples["validation"],
                  num_classes=NUM_CLASSES,
                  labels_file=os.path.basename(labels_file), files=files)
  tmp_path = f"{manifest_path}.tmp"
  with tf.io.gfile.GFile(tmp_path, "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  tf.io.gfile.rename(tmp_path, manifest_path, overwrite=True)
  print(f"Digits dataset ready: '{manifest_path}'", flush=True)
  return _result(data_dir, manifest)


# --- The architecture-search split ------------------------------------------
#
# A search must never choose architectures by the images it is finally
# evaluated on (SpineNet paper §5.1 rewards its proxy on images held out of
# COCO train2017, not on val2017). The digits search split therefore carves
# its held-out part from the TRAINING images of the standard split above;
# the validation images are not written at all.

_SEARCH_MANIFEST_VERSION = 1


def search_split_indices(holdout_fraction=0.25, search_seed=0,
                         validation_fraction=0.2, seed=0):
  """Scan indices of the search split: train-minus-holdout, holdout, validation.

  The standard train/validation split (`write_digits_folders` with
  `validation_fraction`, `seed`) is made first; `holdout_fraction` of each
  digit's training scans is then held out, stratified and fixed by
  `search_seed`. With the defaults: 1077 search-train, 360 holdout and the
  360 untouched validation scans.

  Returns:
    dict "train", "holdout", "validation" -> sorted int numpy arrays, pairwise
    disjoint, together all 1797 scans.

  Raises:
    ValueError: a fraction outside (0, 1).
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  for name, value in (("holdout_fraction", holdout_fraction),
                      ("validation_fraction", validation_fraction)):
    if not 0.0 < value < 1.0:
      raise ValueError(f"{name} must be in (0, 1), got {value}.")
  labels = datasets.load_digits().target
  indices = np.arange(len(labels))
  train, validation = model_selection.train_test_split(
      indices, test_size=validation_fraction, random_state=seed,
      stratify=labels)
  search_train, holdout = model_selection.train_test_split(
      train, test_size=holdout_fraction, random_state=search_seed,
      stratify=labels[train])
  return {"train": np.sort(search_train), "holdout": np.sort(holdout),
          "validation": np.sort(validation)}


def ensure_digits_search_records(data_dir, holdout_fraction=0.25,
                                 search_seed=0, num_shards=2):
  """TFRecords of the digits search split, built once, atomically.

  Files (a folder of their own; never the standard records' folder):
    data_dir/digits-search_train-SSSSS-of-NNNNN.tfrecord  (train minus holdout)
    data_dir/digits-holdout-SSSSS-of-NNNNN.tfrecord       (the reward images)
    data_dir/digits-search_train-labels.txt, data_dir/digits_manifest.json

  The folder is built under a temporary name and renamed into place, so
  search workers starting together never see (or write) a half-built one.

  Returns:
    the dict of `ensure_digits_records`, with the holdout as the eval split.
  """
  expected = {"version": _SEARCH_MANIFEST_VERSION, "search_split": True,
              "num_shards": int(num_shards),
              "holdout_fraction": float(holdout_fraction),
              "search_seed": int(search_seed)}
  manifest = _read_manifest(data_dir, expected)
  if manifest is None:
    if tf.io.gfile.exists(data_dir) and tf.io.gfile.listdir(data_dir):
      raise FileExistsError(
          f"'{data_dir}' holds files but no digits search split made with "
          f"{expected}; use an empty or new folder for the search split.")
    tmp_dir = f"{data_dir.rstrip('/')}.tmp-{os.getpid()}"
    _write_search_records(tmp_dir, expected)
    try:
      tf.io.gfile.rename(tmp_dir, data_dir, overwrite=False)
    except (tf.errors.OpError, OSError):
      tf.io.gfile.rmtree(tmp_dir)  # Another process finished first.
    manifest = _read_manifest(data_dir, expected)
    if manifest is None:
      raise FileNotFoundError(f"The digits search split in '{data_dir}' is "
                              "incomplete after building it.")
  return {
      "train_pattern": os.path.join(
          data_dir, f"digits-search_train-*-of-{manifest['num_shards']:05d}"
          ".tfrecord"),
      "eval_pattern": os.path.join(
          data_dir, f"digits-holdout-*-of-{manifest['num_shards']:05d}"
          ".tfrecord"),
      "num_train": manifest["num_train"], "num_eval": manifest["num_eval"],
      "num_classes": NUM_CLASSES,
      "labels_file": os.path.join(data_dir, manifest["labels_file"]),
  }


def _write_search_records(out_dir, expected):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  parts = search_split_indices(expected["holdout_fraction"],
                               expected["search_seed"])
  digits = datasets.load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255)
  images = images.astype(np.uint8)
  images = images.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)
  labels = digits.target.astype(np.int64)
  images_dir = os.path.join(out_dir, _IMAGES_SUBDIR)
  files, labels_file, counts = [], None, {}
  for split, part in (("search_train", "train"), ("holdout", "holdout")):
    for digit in range(NUM_CLASSES):
      tf.io.gfile.makedirs(os.path.join(images_dir, split, str(digit)))
    for index in parts[part]:
      buffer = io.BytesIO()
      Image.fromarray(images[index], mode="L").save(buffer, format="PNG")
      with tf.io.gfile.GFile(os.path.join(
          images_dir, split, str(labels[index]), f"{index:04d}.png"),
                             "wb") as f:
        f.write(buffer.getvalue())
    result = image_folder_records.convert_image_folders(
        os.path.join(images_dir, split), os.path.join(out_dir, f"digits-{split}"),
        num_shards=expected["num_shards"], num_processes=1,
        label_file=labels_file, show_progress=False)
    labels_file = labels_file or result["labels_file"]
    files += [os.path.basename(p) for p in result["files"]]
    counts[split] = result["num_examples"]
  files.append(os.path.basename(labels_file))
  manifest = dict(expected, num_train=counts["search_train"],
                  num_eval=counts["holdout"], num_classes=NUM_CLASSES,
                  labels_file=os.path.basename(labels_file), files=files)
  with tf.io.gfile.GFile(os.path.join(out_dir, _MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
