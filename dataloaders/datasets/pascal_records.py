"""Converts PASCAL VOC 2012 segmentation (optionally with SBD) into TFRecords.

Input layout, as VOC 2012 unpacks (VOCdevkit/VOC2012):

  voc_dir/JPEGImages/<id>.jpg
  voc_dir/SegmentationClass/<id>.png            palette PNG of class ids
  voc_dir/ImageSets/Segmentation/<split>.txt    one <id> per line

Class ids are 0 (background) .. 20, and 255 marks unlabelled pixels (the
void band VOC draws around every object, and "difficult" objects).

The augmented training set (Hariharan et al., "Semantic contours from
inverse detectors", SBD; 10,582 images, the set the Eff-SpineNet paper
trains on) is made with `sbd_dir` and split "train": the VOC train ids plus
every SBD id, minus the VOC val ids (so val stays unseen). VOC's own label
map is used for an id that has one; the others take SBD's, read from
`sbd_dir`, which holds one of:

  sbd_dir/SegmentationClassAug/<id>.png   the PNG label maps (class ids, as
                                          DeepLab distributes the set);
                                          used when present;
  sbd_dir/cls/<id>.mat                    the SBD release's MATLAB files
                                          (GTcls.Segmentation), read with
                                          scipy.io (benchmark_RELEASE/dataset).

The SBD ids are those label files. An SBD image is read from
voc_dir/JPEGImages (VOC 2012 holds every SBD image), else sbd_dir/img.

Every image becomes one tf.Example with the keys of the TF Model Garden's
segmentation records (read by `dataloaders.segmentation_input`):

  image/encoded                     bytes, the JPEG file as it is (re-encoded
                                    only to apply an EXIF orientation)
  image/format                      bytes, b"jpeg" or b"png"
  image/height, image/width         int64, pixels
  image/filename                    bytes, e.g. b"2007_000032.jpg"
  image/source_id                   bytes, the id, e.g. b"2007_000032"
  image/key/sha256                  bytes, hex SHA-256 of image/encoded
  image/segmentation/class/encoded  bytes, grayscale (not palette) PNG of
                                    the class ids, 255 kept
  image/segmentation/class/format   bytes, b"png"

The label maps are re-encoded as single-channel PNGs because TensorFlow's PNG
decoder expands a palette into colours, not ids. Images are decoded
completely with no Pillow pixel limit (max_image_pixels sets one); an image
with an EXIF orientation is turned into its displayed frame and re-encoded
(the default), refused or kept as stored, by `exif_orientation`
(dataloaders/datasets/encoded_images.py). Every image and label file
is checked to exist before anything is written; a label map whose size
differs from its image, or that holds a value outside [0, num_classes) other
than 255, stops the conversion with an error naming the file, and no shard
of the run is left behind. Shards are `<prefix>-SSSSS-of-NNNNN.tfrecord`,
images spread over them in a fixed pseudo-random order.
"""

import collections
import hashlib
import io
import os
import random

import numpy as np
import tensorflow as tf
from PIL import Image

from dataloaders.datasets import encoded_images
from dataloaders.datasets import sharded_writer

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IGNORE_LABEL = 255

SOURCE_VOC = "voc"  # voc_dir/SegmentationClass/<id>.png
SOURCE_SBD_PNG = "sbd_png"  # sbd_dir/SegmentationClassAug/<id>.png
SOURCE_SBD_MAT = "sbd_mat"  # sbd_dir/cls/<id>.mat

# The shard order must not change between runs: a fixed seed, not a flag.
_SHARD_ORDER_SEED = 12345

# One image to convert: its id, image path, label path and label source.
_Item = collections.namedtuple("_Item", ["image_id", "image_path",
                                         "label_path", "source"])


def voc_palette():
  """The 256-colour palette of VOC label PNGs, as 768 ints (r, g, b, ...).

  Colour of id i: the bits of i, three at a time from the lowest, fill the
  red, green and blue channels from their highest bit down (1 -> (128, 0,
  0), 2 -> (0, 128, 0), 255 -> (224, 224, 192)).
  """
  palette = []
  for index in range(256):
    rgb = [0, 0, 0]
    value = index
    for shift in range(7, -1, -1):
      for channel in range(3):
        rgb[channel] |= ((value >> channel) & 1) << shift
      value >>= 3
    palette.extend(rgb)
  return palette


def read_id_list(path):
  """Image ids listed in an ImageSets text file, one per line, in order.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: it lists no id.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"Image set file '{path}' does not exist; expected "
                            "one image id per line.")
  with tf.io.gfile.GFile(path, "r") as f:
    ids = [line.split()[0] for line in f.read().splitlines() if line.strip()]
  if not ids:
    raise ValueError(f"Image set file '{path}' lists no image id.")
  return ids


def _check_voc_dir(voc_dir):
  expected = ("JPEGImages", "SegmentationClass",
              os.path.join("ImageSets", "Segmentation"))
  missing = [d for d in expected
             if not tf.io.gfile.isdir(os.path.join(voc_dir, d))]
  if missing:
    hint = ""
    if tf.io.gfile.isdir(os.path.join(voc_dir, "VOC2012")):
      hint = f" Did you mean --voc_dir={os.path.join(voc_dir, 'VOC2012')}?"
    raise FileNotFoundError(
        f"'{voc_dir}' is not a PASCAL VOC folder: it lacks {missing}; "
        f"expected {', '.join(expected)} (VOCdevkit/VOC2012).{hint}")


def _list_stems(folder, extension):
  """{file stem: path} of the files of `folder` ending in `extension`."""
  stems = {}
  for name in tf.io.gfile.listdir(folder):
    name = name.rstrip("/")
    if name.endswith(extension):
      stems[name[:-len(extension)]] = os.path.join(folder, name)
  return stems


def sbd_labels(sbd_dir):
  """({id: label path}, source) of the SBD label maps found in sbd_dir.

  Raises:
    FileNotFoundError: sbd_dir has neither SegmentationClassAug/ nor cls/,
      or the one found holds no label file.
  """
  png_dir = os.path.join(sbd_dir, "SegmentationClassAug")
  mat_dir = os.path.join(sbd_dir, "cls")
  if tf.io.gfile.isdir(png_dir):
    labels, source, folder = _list_stems(png_dir, ".png"), SOURCE_SBD_PNG, (
        png_dir)
  elif tf.io.gfile.isdir(mat_dir):
    labels, source, folder = _list_stems(mat_dir, ".mat"), SOURCE_SBD_MAT, (
        mat_dir)
  else:
    raise FileNotFoundError(
        f"SBD folder '{sbd_dir}' has neither SegmentationClassAug/ (PNG label "
        "maps) nor cls/ (the SBD release's .mat files, in "
        "benchmark_RELEASE/dataset); expected one of them.")
  if not labels:
    raise FileNotFoundError(f"SBD label folder '{folder}' holds no label "
                            "file.")
  return labels, source


def plan_split(voc_dir, split, sbd_dir=None):
  """The images of one split, with the label file each one takes.

  Args:
    voc_dir: VOC 2012 folder (module docstring).
    split: name of a voc_dir/ImageSets/Segmentation/<split>.txt list
      ("train", "val", "trainval").
    sbd_dir: optional SBD folder; only with split "train" (the augmented
      set: VOC train + SBD - VOC val).

  Returns:
    list of _Item, sorted by id.

  Raises:
    FileNotFoundError: a folder or list is missing, or an image or label
      file (all are checked; the message names up to 5 ids and paths).
    ValueError: sbd_dir with a split other than "train".
  """
  _check_voc_dir(voc_dir)
  set_dir = os.path.join(voc_dir, "ImageSets", "Segmentation")
  ids = read_id_list(os.path.join(set_dir, f"{split}.txt"))
  voc_labels = _list_stems(os.path.join(voc_dir, "SegmentationClass"), ".png")
  images = _list_stems(os.path.join(voc_dir, "JPEGImages"), ".jpg")
  labels = {i: (voc_labels.get(i), SOURCE_VOC) for i in ids}
  if sbd_dir:
    if split != "train":
      raise ValueError(
          f"--sbd_dir adds SBD images to the train split only (the augmented "
          f"set excludes every VOC val image); got split '{split}'.")
    val_ids = set(read_id_list(os.path.join(set_dir, "val.txt")))
    found, source = sbd_labels(sbd_dir)
    sbd_images = {}
    if tf.io.gfile.isdir(os.path.join(sbd_dir, "img")):
      sbd_images = _list_stems(os.path.join(sbd_dir, "img"), ".jpg")
    for image_id, path in found.items():
      if image_id in val_ids or image_id in labels:
        continue
      if image_id in voc_labels:  # VOC's own label map is the better one.
        labels[image_id] = (voc_labels[image_id], SOURCE_VOC)
      else:
        labels[image_id] = (path, source)
      if image_id not in images and image_id in sbd_images:
        images[image_id] = sbd_images[image_id]

  items, missing = [], []
  for image_id in sorted(labels):
    label_path, source = labels[image_id]
    image_path = images.get(image_id)
    if image_path is None:
      missing.append((image_id, "image", os.path.join(
          voc_dir, "JPEGImages", f"{image_id}.jpg")))
    if label_path is None:
      missing.append((image_id, "label map", os.path.join(
          voc_dir, "SegmentationClass", f"{image_id}.png")))
    items.append(_Item(image_id, image_path, label_path, source))
  if missing:
    listed = "; ".join(f"id {i}: {what} '{path}'"
                       for i, what, path in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise FileNotFoundError(
        f"Split '{split}' of '{voc_dir}' lists {len(missing)} file(s) that do "
        f"not exist: {listed}{more}. Nothing was written.")
  return items


def read_label_map(path, source):
  """uint8 [h, w] class ids of a label file (PNG of ids, or SBD .mat).

  Raises:
    ValueError: the file cannot be read, or a PNG is a colour image (not a
      palette or grayscale PNG of ids); the message names the file.
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f"Cannot read label file '{path}': {e}") from e
  if source == SOURCE_SBD_MAT:
    from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top
    try:
      mat = scipy_io.loadmat(io.BytesIO(data), squeeze_me=True,
                             struct_as_record=False)
      label = np.asarray(mat["GTcls"].Segmentation)
    except Exception as e:  # scipy raises several types for bad files.
      raise ValueError(
          f"Cannot read SBD label file '{path}': {type(e).__name__}: {e}; "
          "expected a MATLAB file with GTcls.Segmentation (SBD's cls/).") from e
    if label.ndim != 2 or label.min() < 0 or label.max() > 255:
      raise ValueError(f"SBD label file '{path}': GTcls.Segmentation is "
                       f"{label.shape} with values {label.min()}.."
                       f"{label.max()}; expected a 2-D map of class ids.")
    return label.astype(np.uint8)
  try:
    # No Pillow pixel limit: a label map is as large as its image
    # (dataloaders/datasets/encoded_images.py).
    with encoded_images.opened_without_pixel_limit(data) as image:
      mode = image.mode
      label = np.asarray(image) if mode in ("P", "L") else None
  except Exception as e:  # PIL raises several types for bad data.
    raise ValueError(f"Cannot decode label file '{path}': {e}; expected a "
                     "PNG of class ids.") from e
  if label is None:
    raise ValueError(
        f"Label file '{path}' is a {mode} image; expected a palette (P) or "
        "grayscale (L) PNG whose pixel values are class ids (colour-coded "
        "label maps must be converted to ids first).")
  return label.astype(np.uint8)


def _encode_png(label):
  buffer = io.BytesIO()
  Image.fromarray(label).save(buffer, format="PNG")
  return buffer.getvalue()


def _bytes_feature(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def make_example(item, num_classes,
                 exif_orientation=encoded_images.EXIF_APPLY,
                 max_image_pixels=None):
  """Serialized tf.Example of one image and its label map.

  Args:
    item: _Item.
    num_classes: int, class ids must lie in [0, num_classes) or be 255.
    exif_orientation, max_image_pixels: see `convert_pascal`.

  Returns:
    (serialized tf.Example, the image's EXIF orientation 1..8).

  Raises:
    ValueError: unreadable files, sizes that differ, or class ids outside
      [0, num_classes) other than 255 (naming the file and the values).
  """
  where = f"image file '{item.image_path}' (id {item.image_id})"
  try:
    with tf.io.gfile.GFile(item.image_path, "rb") as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f"Cannot read {where}: {e}") from e
  image = encoded_images.read_image(data, where, exif_orientation,
                                    max_image_pixels)
  data, height, width = image.data, image.height, image.width
  label = read_label_map(item.label_path, item.source)
  if label.shape != (height, width):
    hint = ""
    if image.orientation in (5, 6, 7, 8) and label.shape == (width, height):
      hint = (f" The image has EXIF orientation {image.orientation} "
              f"({encoded_images.ORIENTATIONS[image.orientation]}); with "
              f"exif_orientation='{exif_orientation}' its size is the "
              f"{'displayed' if image.reencoded else 'stored'} one, and the "
              "label map's is that of the other frame: pass "
              f"exif_orientation='{'ignore' if image.reencoded else 'apply'}'"
              " if the label map follows the "
              f"{'stored pixels' if image.reencoded else 'displayed image'}.")
    raise ValueError(
        f"Label file '{item.label_path}' is {label.shape[0]}x{label.shape[1]} "
        f"(height x width) but its image '{item.image_path}' is "
        f"{height}x{width}; expected the same size.{hint}")
  values = np.unique(label)
  bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
  if bad.size:
    raise ValueError(
        f"Label file '{item.label_path}' holds class ids {bad.tolist()[:10]} "
        f"outside [0, {num_classes}) (num_classes={num_classes}; "
        f"{IGNORE_LABEL} marks unlabelled pixels).")
  feature = {
      "image/encoded": _bytes_feature([data]),
      "image/format": _bytes_feature([image.image_format.encode()]),
      "image/height": _int_feature([height]),
      "image/width": _int_feature([width]),
      "image/filename": _bytes_feature(
          [os.path.basename(item.image_path).encode()]),
      "image/source_id": _bytes_feature([item.image_id.encode()]),
      "image/key/sha256": _bytes_feature(
          [hashlib.sha256(data).hexdigest().encode()]),
      "image/segmentation/class/encoded": _bytes_feature([_encode_png(label)]),
      "image/segmentation/class/format": _bytes_feature([b"png"]),
  }
  serialized = tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()
  return serialized, image.orientation


def _write_shard(task):
  """Writes one shard.

  Args:
    task: (path, temporary path, [_Item], num_classes, exif_orientation,
      max_image_pixels).

  Returns:
    (path, records written, images with an EXIF orientation other than 1).
  """
  path, tmp_path, items, num_classes, exif_orientation, max_pixels = task
  oriented = []

  def records():
    for item in items:
      serialized, orientation = make_example(item, num_classes,
                                             exif_orientation, max_pixels)
      oriented.append(orientation != 1)
      yield serialized

  path, count = sharded_writer.write_records(path, tmp_path, records())
  return path, count, sum(oriented)


def convert_pascal(voc_dir, split, output_file_prefix, sbd_dir=None,
                   num_shards=8, num_classes=len(VOC_CLASSES),
                   num_processes=None, show_progress=True,
                   exif_orientation=encoded_images.EXIF_APPLY,
                   max_image_pixels=None):
  """Converts one split of PASCAL VOC 2012 segmentation into TFRecords.

  Args:
    voc_dir: str, the VOC2012 folder (module docstring; gs:// allowed).
    split: str, "train", "val", "trainval" or any list of
      voc_dir/ImageSets/Segmentation.
    output_file_prefix: str, shards are
      `<output_file_prefix>-SSSSS-of-NNNNN.tfrecord`.
    sbd_dir: optional str, SBD folder; with split "train" makes the
      augmented training set (module docstring).
    num_shards: int >= 1.
    num_classes: int, class ids must lie in [0, num_classes) or be 255.
    num_processes: int, worker processes; None: min(num_shards, CPUs); 1 or
      0: in this process.
    show_progress: bool, show a tqdm progress bar.
    exif_orientation: "apply" (default: label maps follow the displayed
      image; an oriented image is turned and re-encoded), "error" or
      "ignore" (label maps follow the stored pixels); see
      `dataloaders.datasets.encoded_images`.
    max_image_pixels: None (default: no limit, whatever Pillow's own) or
      int, images with more pixels are refused.

  Returns:
    dict "num_images" (written), "num_voc_labels" and "num_sbd_labels"
    (label maps taken from VOC and from SBD), "sbd_label_source" (None,
    "SegmentationClassAug PNG" or "cls .mat"), "num_exif_oriented" (images
    with an EXIF orientation other than 1), "exif_orientation" (the mode),
    "files" (sorted shard paths).

  Raises:
    FileNotFoundError, ValueError: see `plan_split` and `make_example`; no
      shard of this call is left behind.
  """
  if int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  encoded_images.check_exif_mode(exif_orientation)
  encoded_images.check_max_image_pixels(max_image_pixels)
  if not 2 <= int(num_classes) <= IGNORE_LABEL:
    raise ValueError(f"num_classes must be in [2, {IGNORE_LABEL}], got "
                     f"{num_classes}.")
  items = plan_split(voc_dir, split, sbd_dir)
  random.Random(_SHARD_ORDER_SEED).shuffle(items)
  paths = sharded_writer.shard_paths(output_file_prefix, int(num_shards))
  tasks = [(path, tmp_path, part, int(num_classes), exif_orientation,
            max_image_pixels)
           for (path, tmp_path), part in zip(
               paths, sharded_writer.split(items, int(num_shards)))]
  written = sharded_writer.write_shards(
      _write_shard, tasks, paths, len(items), num_processes,
      desc=os.path.basename(output_file_prefix), show_progress=show_progress)
  sources = collections.Counter(item.source for item in items)
  sbd_source = (SOURCE_SBD_PNG if sources[SOURCE_SBD_PNG] else
                SOURCE_SBD_MAT if sources[SOURCE_SBD_MAT] else None)
  return {
      "num_images": sum(count for _, count, _ in written),
      "num_voc_labels": sources[SOURCE_VOC],
      "num_sbd_labels": sources[SOURCE_SBD_PNG] + sources[SOURCE_SBD_MAT],
      "sbd_label_source": {SOURCE_SBD_PNG: "SegmentationClassAug PNG",
                           SOURCE_SBD_MAT: "cls .mat",
                           None: None}[sbd_source],
      "num_exif_oriented": sum(oriented for _, _, oriented in written),
      "exif_orientation": exif_orientation,
      "files": sorted(path for path, _, _ in written),
  }


def format_summary(summary):
  """One human-readable line of a `convert_pascal` summary."""
  files = summary["files"]
  where = f"'{files[0].rsplit('-', 3)[0]}-*'" if files else "no file"
  sbd = ""
  if summary["num_sbd_labels"]:
    sbd = (f", {summary['num_sbd_labels']} from SBD "
           f"({summary['sbd_label_source']})")
  text = (f"Wrote {summary['num_images']} images to {len(files)} shards "
          f"{where}: label maps {summary['num_voc_labels']} from VOC{sbd}.")
  if summary.get("num_exif_oriented"):
    done = ("turned to their displayed frame and re-encoded"
            if summary["exif_orientation"] == encoded_images.EXIF_APPLY else
            "kept as stored (exif_orientation=ignore)")
    text += (f" {summary['num_exif_oriented']} images had an EXIF "
             f"orientation: {done}.")
  return text
