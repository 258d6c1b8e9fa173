"""Converts folders of images into sharded classification TFRecords.

Two layouts are read:

* Class per folder (ImageNet/ILSVRC train/, most small datasets):
  input_dir/<class_name>/<image>.{jpg,jpeg,png} (extension case ignored).
  Labels are the class folders in sorted order, or in the order of
  `label_file`.
* Flat folder with a mapping (ILSVRC validation): input_dir/<image>.JPEG and
  `image_labels` = {file name or stem: class name}, e.g. read from
  LOC_val_solution.csv (see `read_labels_csv`). Labels follow `label_file`
  (recommended: the train classes, so both splits agree) or, without it, the
  sorted class names found in the mapping.

Every image becomes one tf.Example:

  image/encoded      bytes, the file's bytes as they are (re-encoded only
                     to apply an EXIF orientation)
  image/format       bytes, b"jpeg" or b"png", from the file's content
  image/height       int64, pixels
  image/width        int64, pixels
  image/class/label  int64, 0-based label
  image/class/text   bytes, the class name

written to `<output_prefix>-SSSSS-of-NNNNN.tfrecord` (examples spread over
the shards in a fixed pseudo-random order, so every shard mixes classes),
plus `<output_prefix>-labels.txt` with one class name per line in label
order. Each shard is written under a temporary name and renamed when
complete, so a failure never leaves a truncated shard under a final name.
Images are decoded completely with no Pillow pixel limit (max_image_pixels
sets one); one with an EXIF orientation is turned into its displayed frame
and re-encoded (the default), refused or kept as stored, by
`exif_orientation` (dataloaders/datasets/encoded_images.py).
"""

import os
import random
import uuid

import tensorflow as tf

from dataloaders.datasets import encoded_images
from dataloaders.datasets import sharded_writer

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# The shard order must not change between runs: a fixed seed, not a flag.
_SHARD_ORDER_SEED = 12345


def read_label_file(label_file):
  """Reads class names, one per line, in label order.

  The first whitespace-separated token of each non-empty line is the class
  name, so ILSVRC's LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca")
  works as it is. Lines starting with "#" are ignored.

  Args:
    label_file: str, path of the text file.

  Returns:
    list of str, class names; index = label.

  Raises:
    FileNotFoundError: when the file does not exist.
    ValueError: when it is empty or repeats a class name.
  """
  if not tf.io.gfile.exists(label_file):
    raise FileNotFoundError(f"Label file '{label_file}' does not exist; "
                            "expected one class name per line.")
  with tf.io.gfile.GFile(label_file, "r") as f:
    lines = f.read().splitlines()
  names = []
  for line in lines:
    line = line.strip()
    if line and not line.startswith("#"):
      names.append(line.split()[0])
  if not names:
    raise ValueError(f"Label file '{label_file}' lists no class; expected "
                     "one class name per line.")
  seen = set()
  for line_number, name in enumerate(names, 1):
    if name in seen:
      raise ValueError(f"Label file '{label_file}' lists class '{name}' "
                       f"twice (entry {line_number}); class names must be "
                       "unique.")
    seen.add(name)
  return names


def read_labels_csv(labels_csv):
  """Reads a `filename,class` CSV into {filename: class name}.

  The class is the first whitespace-separated token of the second column,
  so Kaggle's ILSVRC LOC_val_solution.csv ("ImageId,PredictionString" with
  "n01751748 160 50 ...") works as it is. A header row (first column
  "filename", "file", "image" or "ImageId") and blank lines are skipped.

  Args:
    labels_csv: str, path of the CSV file.

  Returns:
    dict str -> str: file name (with or without extension) -> class name.

  Raises:
    FileNotFoundError: when the file does not exist.
    ValueError: on a malformed or contradictory row (the row is named).
  """
  if not tf.io.gfile.exists(labels_csv):
    raise FileNotFoundError(f"Labels CSV '{labels_csv}' does not exist; "
                            "expected rows 'filename,class'.")
  with tf.io.gfile.GFile(labels_csv, "r") as f:
    lines = f.read().splitlines()
  mapping = {}
  for row_number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    fields = [x.strip() for x in line.split(",", 1)]
    if row_number == 1 and fields[0].lower() in (
        "filename", "file", "image", "imageid", "image_id"):
      continue
    if len(fields) != 2 or not fields[0] or not fields[1].split():
      raise ValueError(f"Labels CSV '{labels_csv}', row {row_number}: "
                       f"{line!r}; expected 'filename,class'.")
    filename, class_name = fields[0], fields[1].split()[0]
    if mapping.get(filename, class_name) != class_name:
      raise ValueError(f"Labels CSV '{labels_csv}', row {row_number}: "
                       f"'{filename}' is labelled both '{mapping[filename]}' "
                       f"and '{class_name}'.")
    mapping[filename] = class_name
  if not mapping:
    raise ValueError(f"Labels CSV '{labels_csv}' has no rows; expected "
                     "'filename,class' rows.")
  return mapping


def _is_image_file(name):
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder):
  """Sorted paths of the image files directly inside `folder`."""
  return sorted(
      os.path.join(folder, name) for name in tf.io.gfile.listdir(folder)
      if _is_image_file(name) and not tf.io.gfile.isdir(
          os.path.join(folder, name)))


def _collect_class_folders(input_dir, class_names):
  """[(path, label)] of input_dir/<class>/<image>, and the class names."""
  folders = sorted(
      name.rstrip("/") for name in tf.io.gfile.listdir(input_dir)
      if tf.io.gfile.isdir(os.path.join(input_dir, name)))
  if not folders:
    raise ValueError(
        f"'{input_dir}' has no class folders; expected input_dir/<class>/"
        "<image> (or pass image_labels for a flat folder of images).")
  if class_names is None:
    class_names = folders
  else:
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
      raise ValueError(
          f"Class folders {unknown[:10]} of '{input_dir}' are not in the "
          f"label file ({len(class_names)} classes, e.g. {class_names[:3]}); "
          "expected every folder to be a listed class.")
  label_of = {name: i for i, name in enumerate(class_names)}
  examples = []
  for folder in folders:
    for path in _list_images(os.path.join(input_dir, folder)):
      examples.append((path, label_of[folder]))
  return examples, class_names


def _collect_flat_folder(input_dir, image_labels, class_names):
  """[(path, label)] of input_dir/<image> labelled by `image_labels`."""
  if class_names is None:
    class_names = sorted(set(image_labels.values()))
  label_of = {name: i for i, name in enumerate(class_names)}
  examples = []
  for path in _list_images(input_dir):
    name = os.path.basename(path)
    class_name = image_labels.get(name,
                                  image_labels.get(os.path.splitext(name)[0]))
    if class_name is None:
      raise ValueError(
          f"Image '{path}' has no entry in image_labels (looked up "
          f"'{name}' and '{os.path.splitext(name)[0]}'); expected every "
          "image of the flat folder to be labelled.")
    if class_name not in label_of:
      raise ValueError(
          f"Image '{path}' is labelled '{class_name}', which is not in the "
          f"label file ({len(class_names)} classes, e.g. {class_names[:3]}).")
    examples.append((path, label_of[class_name]))
  return examples, class_names


def _make_example(path, label, class_name, exif_orientation,
                  max_image_pixels):
  """(serialized tf.Example of one image file, its EXIF orientation)."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f"Cannot read image file '{path}': {e}") from e
  image = encoded_images.read_image(data, f"image file '{path}'",
                                    exif_orientation, max_image_pixels)

  def bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def int_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  serialized = tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": bytes_feature(image.data),
      "image/format": bytes_feature(image.image_format.encode()),
      "image/height": int_feature(image.height),
      "image/width": int_feature(image.width),
      "image/class/label": int_feature(label),
      "image/class/text": bytes_feature(class_name.encode()),
  })).SerializeToString()
  return serialized, image.orientation


def _write_shard(task):
  """Writes one shard.

  Args:
    task: (path, tmp path, [(image, label, name)], exif_orientation,
      max_image_pixels).

  Returns:
    (path, records written, images with an EXIF orientation other than 1).
  """
  path, tmp_path, examples, exif_orientation, max_pixels = task
  oriented = []

  def records():
    for example in examples:
      serialized, orientation = _make_example(*example, exif_orientation,
                                              max_pixels)
      oriented.append(orientation != 1)
      yield serialized

  path, count = sharded_writer.write_records(path, tmp_path, records())
  return path, count, sum(oriented)


def _write_text_atomically(path, text):
  tmp_path = f"{path}.tmp-{uuid.uuid4().hex}"
  with tf.io.gfile.GFile(tmp_path, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp_path, path, overwrite=True)


def convert_image_folders(input_dir, output_prefix, num_shards=8,
                          num_processes=None, label_file=None,
                          show_progress=True, image_labels=None,
                          exif_orientation=encoded_images.EXIF_APPLY,
                          max_image_pixels=None):
  """Converts a folder of images into sharded classification TFRecords.

  Args:
    input_dir: str, input_dir/<class_name>/<image> (class per folder), or a
      flat folder of images when `image_labels` is given. Images are files
      ending in .jpg, .jpeg or .png (any case); other files are ignored.
    output_prefix: str, shards are `<output_prefix>-SSSSS-of-NNNNN.tfrecord`
      and the class names `<output_prefix>-labels.txt`. gs:// allowed.
    num_shards: int >= 1, number of shard files.
    num_processes: int, worker processes (each writes whole shards); None:
      min(num_shards, cpu count); 1 or 0: in this process.
    label_file: optional str, class names in label order, one per line (see
      `read_label_file`); default: the class folders (or, with
      `image_labels`, the class names of the mapping) sorted by name. Pass
      the train split's labels file when converting validation.
    show_progress: bool, show a tqdm progress bar (images).
    image_labels: optional dict {file name or file stem: class name}, for a
      flat folder such as ILSVRC2012 validation (see `read_labels_csv`).
    exif_orientation: "apply" (default: an image with an EXIF orientation
      is turned into its displayed frame, as a person saw it when
      labelling, and re-encoded), "error" or "ignore" (stored pixels kept);
      see `dataloaders.datasets.encoded_images`.
    max_image_pixels: None (default: no limit, whatever Pillow's own) or
      int, images with more pixels are refused.

  Returns:
    dict with "num_examples" (int), "num_classes" (int), "files" (sorted
    list of shard paths), "labels_file" (str), "num_exif_oriented" (int,
    images with an EXIF orientation other than 1) and "exif_orientation"
    (the mode).

  Raises:
    FileNotFoundError: when `input_dir` or `label_file` does not exist.
    ValueError: when the layout or the labels are inconsistent, when no
      image is found, or when an image cannot be read or decoded (the
      message names the file); no shard of this call is left behind under
      a final or temporary name.
  """
  if not tf.io.gfile.isdir(input_dir):
    raise FileNotFoundError(f"Input folder '{input_dir}' does not exist or "
                            "is not a folder.")
  if int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  num_shards = int(num_shards)
  encoded_images.check_exif_mode(exif_orientation)
  encoded_images.check_max_image_pixels(max_image_pixels)
  class_names = read_label_file(label_file) if label_file else None
  if image_labels is not None:
    examples, class_names = _collect_flat_folder(input_dir, image_labels,
                                                 class_names)
  else:
    examples, class_names = _collect_class_folders(input_dir, class_names)
  if not examples:
    raise ValueError(f"No images (*.jpg, *.jpeg, *.png) found in "
                     f"'{input_dir}'.")

  random.Random(_SHARD_ORDER_SEED).shuffle(examples)
  examples = [(path, label, class_names[label]) for path, label in examples]
  paths = sharded_writer.shard_paths(output_prefix, num_shards)
  tasks = [(path, tmp_path, part, exif_orientation, max_image_pixels)
           for (path, tmp_path), part in zip(
               paths, sharded_writer.split(examples, num_shards))]
  written = sharded_writer.write_shards(
      _write_shard, tasks, paths, len(examples), num_processes,
      desc=os.path.basename(output_prefix), show_progress=show_progress)

  labels_path = f"{output_prefix}-labels.txt"
  _write_text_atomically(labels_path, "".join(f"{n}\n" for n in class_names))
  return {
      "num_examples": sum(count for _, count, _ in written),
      "num_classes": len(class_names),
      "files": sorted(path for path, _, _ in written),
      "labels_file": labels_path,
      "num_exif_oriented": sum(oriented for _, _, oriented in written),
      "exif_orientation": exif_orientation,
  }

