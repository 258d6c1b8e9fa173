"""Converts COCO-format detection annotations into sharded TFRecords.

Input: a COCO instances JSON (the `instances_{train,val}2017.json` layout:
"images" with id/file_name/height/width, "annotations" with id/image_id/
category_id/bbox [x, y, w, h] in pixels/area/iscrowd/segmentation,
"categories" with id/name) and the folder holding the images, each found at
image_dir/<file_name>.

Every image becomes one tf.Example, with the keys of the TF Object Detection
API and the TF Model Garden (records written here are read by their decoders
and theirs by `dataloaders.detection_decoder`):

  image/encoded              bytes, the file's bytes as they are (re-encoded
                             only to apply an EXIF orientation)
  image/format               bytes, b"jpeg" or b"png", from the file's content
  image/height               int64, pixels
  image/width                int64, pixels
  image/filename             bytes, the annotation's file_name
  image/source_id            bytes, str(COCO image id), e.g. b"397133"
  image/key/sha256           bytes, hex SHA-256 of image/encoded
  image/object/bbox/xmin     float list, [0, 1], box left / image width
  image/object/bbox/ymin     float list, [0, 1], box top / image height
  image/object/bbox/xmax     float list, [0, 1], box right / image width
  image/object/bbox/ymax     float list, [0, 1], box bottom / image height
  image/object/class/label   int64 list, COCO category id (1..90 for COCO)
  image/object/class/text    bytes list, category name
  image/object/is_crowd      int64 list, 0 or 1
  image/object/area          float list, the annotation's area in pixels
                             (COCO: the segmentation's area)
  image/object/mask          bytes list (only with include_masks): one PNG
                             per object, uint8 [height, width], 0 or 1

Images without annotations are kept, with zero objects (they matter for
evaluation and for training on backgrounds). Crowd annotations are written
and flagged with is_crowd = 1: the training parser drops them, the evaluator
uses them. Boxes partly outside the image are clipped to it; annotations
whose box has a non-positive width or height, or lies entirely outside the
image, are skipped and counted. With masks, polygons of fewer than 3 points
are dropped, and so is an annotation left without a polygon (counted), by
the rule the COCO evaluator applies to its ground truths
(`check_segmentation`).

Image ids may be integers (COCO) or strings ("img_000001"); the record
holds str(id), which the input pipeline turns into an exact int64
(dataloaders/source_ids.py) and the evaluator matches to the annotation
file. Ids that would become the same int64 are refused.

Images are decoded completely before anything is written to their shard,
with no Pillow pixel limit (max_image_pixels sets one). An image with an
EXIF orientation is turned into its displayed frame and re-encoded (the
default, exif_orientation="apply": COCO-format annotations are drawn on the
displayed image by most tools), refused ("error") or kept as stored
("ignore"); see dataloaders/datasets/encoded_images.py.

Shards are `<prefix>-SSSSS-of-NNNNN.tfrecord`, images spread over them in a
fixed pseudo-random order. Each shard is written under a temporary name and
renamed when complete, so a failure never leaves a truncated shard under a
final name; every image file is checked to exist before anything is written.
"""

import collections
import hashlib
import io
import json
import math
import os
import random

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from dataloaders import source_ids
from dataloaders.datasets import encoded_images
from dataloaders.datasets import sharded_writer

# The shard order must not change between runs: a fixed seed, not a flag.
_SHARD_ORDER_SEED = 12345

# Reasons for skipping an annotation, as keys of the summary's "skipped".
SKIP_NON_POSITIVE_SIZE = "non_positive_size"
SKIP_OUTSIDE_IMAGE = "outside_image"
_SKIP_REASONS = {
    SKIP_NON_POSITIVE_SIZE: "box width or height <= 0",
    SKIP_OUTSIDE_IMAGE: "box entirely outside the image",
}

# At most this many skipped annotations are logged one by one.
_MAX_SKIPS_LOGGED = 10

# A polygon needs 3 points (6 numbers) to cover any pixel.
MIN_POLYGON_POINTS = 3

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# One object of an image, in the form the shard writers need.
_Object = collections.namedtuple(
    "_Object", ["box", "category_id", "category_name", "is_crowd", "area",
                "segmentation", "annotation_id"])
# One image: its id, file path, file_name, JSON size and objects.
_ImageTask = collections.namedtuple(
    "_ImageTask", ["image_id", "path", "file_name", "height", "width",
                   "objects"])


def read_annotation_file(annotation_file):
  """Reads a COCO annotation JSON (gs:// allowed).

  Args:
    annotation_file: str, path of the JSON.

  Returns:
    dict, the parsed JSON.

  Raises:
    FileNotFoundError: when the file does not exist.
    ValueError: when it is not valid JSON or lacks "images" / "categories".
  """
  if not tf.io.gfile.exists(annotation_file):
    raise FileNotFoundError(f"Annotation file '{annotation_file}' does not "
                            "exist; expected a COCO instances JSON.")
  with tf.io.gfile.GFile(annotation_file, "r") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"Annotation file '{annotation_file}' is not valid "
                       f"JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"Annotation file '{annotation_file}' holds a "
                     f"{type(data).__name__}; expected a COCO JSON object.")
  for key in ("images", "categories"):
    if not isinstance(data.get(key), list):
      raise ValueError(f"Annotation file '{annotation_file}' has no '{key}' "
                       "list; expected a COCO instances JSON with 'images', "
                       "'annotations' and 'categories'.")
  return data


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
  """A finite int or float (bools and numbers beyond float range are not)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  return abs(value) < 1e300 and math.isfinite(value)


def _index_images(data, annotation_file, image_dir):
  """{image id: (path, file_name, height, width)} in file order.

  Image ids are ints or strings; the records carry str(id) as
  image/source_id and the input pipeline turns that into an int64
  (`dataloaders.source_ids`), so two ids that would arrive as one number
  ("7" and 7, "007" and 7) are refused here, naming both.
  """
  images = {}
  for index, image in enumerate(data["images"]):
    if not isinstance(image, dict):
      raise ValueError(
          f"Annotation file '{annotation_file}', images[{index}] is a "
          f"{type(image).__name__}; expected an object with id, file_name, "
          "height and width.")
    missing = [k for k in ("id", "file_name", "height", "width")
               if k not in image]
    if missing:
      raise ValueError(
          f"Annotation file '{annotation_file}', images[{index}] (id "
          f"{image.get('id')!r}) lacks {missing}; expected id, file_name, "
          "height and width.")
    image_id = image["id"]
    where = (f"Annotation file '{annotation_file}', images[{index}] (id "
             f"{image_id!r})")
    if not ((_is_int(image_id) and image_id >= 0) or
            (isinstance(image_id, str) and image_id.strip())):
      raise ValueError(
          f"{where}: the id is not a non-negative integer or a non-empty "
          "string; COCO image ids are integers (strings such as "
          "'img_000001' work too).")
    if image_id in images:
      raise ValueError(f"Annotation file '{annotation_file}' lists image id "
                       f"{image_id!r} twice; image ids must be unique.")
    file_name = image["file_name"]
    if not isinstance(file_name, str) or not file_name:
      raise ValueError(f"{where}: file_name is {file_name!r}; expected the "
                       "image's file name under image_dir.")
    for what, text in (("id", str(image_id)), ("file_name", file_name)):
      try:
        text.encode("utf-8")  # Records store both as UTF-8 bytes.
      except UnicodeEncodeError as e:
        raise ValueError(f"{where}: the {what} is not valid Unicode ({e}); "
                         "expected UTF-8 text.") from None
    height, width = image["height"], image["width"]
    if not (_is_int(height) and _is_int(width) and height > 0 and
            width > 0):
      raise ValueError(
          f"{where}: size {height!r}x{width!r} (height x width); expected "
          "positive integers.")
    path = os.path.join(image_dir, file_name)
    images[image_id] = (path, file_name, height, width)
  _check_source_ids(list(images), annotation_file)
  return images


def _check_source_ids(image_ids, annotation_file):
  """Raises ValueError when two image ids arrive as one int64 id."""
  numbers = source_ids.source_ids_to_int64([str(i) for i in image_ids])
  first = {}
  for image_id, number in zip(image_ids, numbers.tolist()):
    if number in first:
      raise ValueError(
          f"Annotation file '{annotation_file}': image ids "
          f"{first[number]!r} and {image_id!r} both become image id "
          f"{number} in the input pipeline (source ids are read as decimal "
          "integers where they are ones, hashed otherwise; "
          "dataloaders/source_ids.py); expected ids that stay distinct.")
    first[number] = image_id


def _check_files_exist(tasks, annotation_file):
  """Raises FileNotFoundError naming the images whose files are missing.

  One directory listing per folder instead of one lookup per file: a few
  calls for COCO's 118k images, which matters on gs://.

  Args:
    tasks: list of _ImageTask.
    annotation_file: str, named in the message.
  """
  by_folder = collections.defaultdict(list)
  for task in tasks:
    by_folder[os.path.dirname(task.path)].append((task.image_id, task.path))
  missing = []
  for folder, entries in by_folder.items():
    try:
      names = {name.rstrip("/") for name in tf.io.gfile.listdir(folder or ".")}
    except tf.errors.OpError:  # Missing, or a name no file system takes.
      names = set()
    for image_id, path in entries:
      if os.path.basename(path) not in names:
        missing.append((image_id, path))
  if missing:
    listed = "; ".join(f"image id {image_id}: '{path}'"
                       for image_id, path in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise FileNotFoundError(
        f"Annotation file '{annotation_file}' references {len(missing)} "
        f"image file(s) that do not exist: {listed}{more}. Expected each "
        "image at image_dir/<file_name>; check --image_dir. Nothing was "
        "written.")


def _clip_box(bbox, height, width):
  """Clips a COCO [x, y, w, h] pixel box to the image.

  Returns:
    (box, reason, clipped): box (x0, y0, x1, y1) in pixels or None, reason a
    SKIP_* constant when the box is skipped, clipped whether it was clipped.
  """
  x, y, w, h = (float(v) for v in bbox)
  if not w > 0 or not h > 0:  # Also catches NaN.
    return None, SKIP_NON_POSITIVE_SIZE, False
  x0, y0 = max(x, 0.0), max(y, 0.0)
  x1, y1 = min(x + w, float(width)), min(y + h, float(height))
  if x1 <= x0 or y1 <= y0:
    return None, SKIP_OUTSIDE_IMAGE, False
  clipped = (x0, y0, x1, y1) != (x, y, x + w, y + h)
  return (x0, y0, x1, y1), None, clipped


def _rle_string_counts(counts):
  """Run lengths of a compressed COCO RLE string (None when malformed).

  The format of pycocotools' `rleToString`: each run length is written in
  groups of 5 bits, least significant first, as characters 48 + group; bit
  0x20 of a character says another group follows and bit 0x10 of the last
  one is the sign; from the third run on, the value written is the
  difference to the run two places before.
  """
  runs, position = [], 0
  while position < len(counts):
    value, shift, more = 0, 0, True
    while more:
      if position >= len(counts):
        return None
      group = ord(counts[position]) - 48
      if not 0 <= group < 64:
        return None
      value |= (group & 0x1f) << shift
      more = bool(group & 0x20)
      position += 1
      shift += 5
      if not more and group & 0x10:
        value |= -1 << shift
    if len(runs) > 2:
      value += runs[-2]
    runs.append(value)
  return runs


def check_segmentation(segmentation, where, height, width):
  """Checks one COCO segmentation and drops its polygons of < 3 points.

  The rule shared by the converter and the COCO evaluator
  (official/evaluation/coco_evaluator.py), so that training records and
  evaluation ground truths hold the same objects. A polygon of fewer than 3
  points covers nothing, and pycocotools misreads a first polygon of 4
  numbers as a box and fails on other short ones (a TypeError naming no
  annotation), so such polygons are removed; an annotation left with none
  has no mask and is dropped by the caller.

  Every value pycocotools would index memory with is checked first: polygon
  coordinates must be finite and lie within the image extended by its own
  size on every side (far-away points make pycocotools allocate memory in
  proportion to the distance), and RLE run lengths must be non-negative and
  add up to height x width (pycocotools decodes them without bounds
  checks).

  Args:
    segmentation: the annotation's "segmentation": a list of polygons
      [[x0, y0, x1, y1, ...], ...] in pixels, or an RLE dict {"size":
      [height, width], "counts": list of ints or compressed str}.
    where: str, names the annotation in errors.
    height, width: ints, the image size in pixels.

  Returns:
    the list of polygons of 3 or more points, or None when there is none;
    an RLE dict as it is.

  Raises:
    ValueError: a malformed segmentation (the message starts with `where`).
  """
  if isinstance(segmentation, list):
    polygons = []
    for k, polygon in enumerate(segmentation):
      values = None
      # type(), not isinstance(): bools are not coordinates.
      if isinstance(polygon, list) and all(
          type(v) in (int, float) for v in polygon):  # pylint: disable=unidiomatic-typecheck
        try:
          values = np.asarray(polygon, np.float64)
        except OverflowError:  # An int beyond float range.
          values = None
      if values is None or not np.isfinite(values).all():
        raise ValueError(
            f"{where}: segmentation polygon {k} is {str(polygon)[:80]}; "
            "expected a list [x0, y0, x1, y1, ...] of finite numbers "
            "(pixels).")
      xs, ys = values[0::2], values[1::2]
      if values.size and (xs.min() < -width or xs.max() > 2 * width or
                          ys.min() < -height or ys.max() > 2 * height):
        raise ValueError(
            f"{where}: segmentation polygon {k} reaches x {min(xs)}.."
            f"{max(xs)}, y {min(ys)}..{max(ys)}, far outside the "
            f"{height}x{width} (height x width) image; expected pixel "
            "coordinates of the image.")
      if len(polygon) >= 2 * MIN_POLYGON_POINTS:
        polygons.append(polygon)
    return polygons or None
  if isinstance(segmentation, dict) and "counts" in segmentation:
    size = segmentation.get("size")
    if (not isinstance(size, list) or len(size) != 2 or
        not all(_is_int(v) for v in size) or size != [height, width]):
      raise ValueError(f"{where}: RLE size {size!r}; expected the image "
                       f"size [{height}, {width}].")
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
      try:
        counts = counts.decode("ascii")
      except UnicodeDecodeError:
        counts = None
    if isinstance(counts, str):
      counts = _rle_string_counts(counts)
    elif isinstance(counts, list):
      counts = counts if all(_is_int(c) for c in counts) else None
    else:
      counts = None
    if (counts is None or any(c < 0 for c in counts) or
        sum(counts) != height * width):
      raise ValueError(
          f"{where}: RLE counts {str(segmentation['counts'])[:60]} are not "
          "non-negative run lengths adding up to height x width = "
          f"{height * width}; expected an RLE of the {height}x{width} "
          "image (a list of ints, or pycocotools' compressed string).")
    return segmentation
  raise ValueError(f"{where}: segmentation is {str(segmentation)[:80]}; "
                   "expected a list of polygons or an RLE dict (\"size\", "
                   "\"counts\").")


def _collect_images(data, annotation_file, image_dir, include_masks):
  """Groups the annotations by image, clipping and skipping boxes.

  Returns:
    (tasks, num_annotations, skipped, num_clipped, num_no_polygon): tasks a
    list of _ImageTask in file order, num_annotations the objects kept,
    skipped a dict reason -> count, num_clipped the kept boxes that were
    clipped, num_no_polygon the annotations dropped (include_masks) because
    their segmentation has no polygon of 3 or more points.
  """
  images = _index_images(data, annotation_file, image_dir)
  categories = {}
  for index, category in enumerate(data["categories"]):
    if (not isinstance(category, dict) or "id" not in category or
        "name" not in category):
      raise ValueError(f"Annotation file '{annotation_file}': categories"
                       f"[{index}] {str(category)[:80]} lacks 'id' or "
                       "'name'; expected {\"id\": int, \"name\": str}.")
    if not _is_int(category["id"]) or not _INT64_MIN <= category["id"] <= (
        _INT64_MAX):
      raise ValueError(f"Annotation file '{annotation_file}': categories"
                       f"[{index}] has id {category['id']!r}; expected an "
                       "integer (records store it as an int64 label).")
    try:
      str(category["name"]).encode("utf-8")
    except UnicodeEncodeError as e:
      raise ValueError(f"Annotation file '{annotation_file}': categories"
                       f"[{index}] has a name that is not valid Unicode "
                       f"({e}); expected UTF-8 text.") from None
    categories[category["id"]] = category["name"]

  annotations = data.get("annotations")
  if annotations is None:
    annotations = []
  if not isinstance(annotations, list):
    raise ValueError(f"Annotation file '{annotation_file}': 'annotations' "
                     f"is a {type(annotations).__name__}; expected a list.")
  objects = collections.defaultdict(list)
  skipped = {reason: 0 for reason in _SKIP_REASONS}
  num_clipped = 0
  num_no_polygon = 0
  for index, ann in enumerate(annotations):
    if not isinstance(ann, dict):
      raise ValueError(f"Annotation file '{annotation_file}', annotations"
                       f"[{index}] is a {type(ann).__name__}; expected an "
                       "object.")
    ann_id = ann.get("id", f"#{index}")
    image_id = ann.get("image_id")
    where = (f"Annotation file '{annotation_file}', annotation id "
             f"{ann_id!r} (annotations[{index}], image id {image_id!r})")
    if not _is_hashable(image_id) or image_id not in images:
      raise ValueError(f"{where}: the image id is not in 'images'; expected "
                       "every annotation to refer to a listed image.")
    category_id = ann.get("category_id")
    if not _is_hashable(category_id) or category_id not in categories:
      raise ValueError(
          f"{where}: category id {category_id!r} is not in "
          f"'categories' (ids {sorted(categories)[:20]}).")
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4 or
        not all(_is_number(v) for v in bbox)):
      raise ValueError(f"{where}: bbox is {str(bbox)[:80]}; expected [x, y, "
                       "width, height] in pixels, finite numbers.")
    area = ann.get("area")
    if area is not None and (not _is_number(area) or area < 0):
      raise ValueError(f"{where}: area is {area!r}; expected a non-negative "
                       "number of pixels.")
    is_crowd = ann.get("iscrowd", 0)
    if is_crowd not in (0, 1):  # True and False compare equal to 1 and 0.
      raise ValueError(f"{where}: iscrowd is {is_crowd!r}; expected 0 or 1.")
    _, _, height, width = images[image_id]
    box, reason, clipped = _clip_box(bbox, height, width)
    if reason is not None:
      if sum(skipped.values()) < _MAX_SKIPS_LOGGED:
        logging.warning("%s: skipped, %s (bbox %s, image height x width "
                        "%dx%d).", where,
                        _SKIP_REASONS[reason], bbox, height, width)
      skipped[reason] += 1
      continue
    segmentation = None
    if include_masks:
      segmentation = ann.get("segmentation")
      if not segmentation:
        raise ValueError(
            f"{where}: no segmentation; include_masks needs polygons or an "
            "RLE for every annotation.")
      segmentation = check_segmentation(segmentation, where, height, width)
      if segmentation is None:
        if num_no_polygon < _MAX_SKIPS_LOGGED:
          logging.warning("%s: dropped, its segmentation %s has no polygon "
                          "of %d or more points (no mask).", where,
                          str(ann.get("segmentation"))[:80],
                          MIN_POLYGON_POINTS)
        num_no_polygon += 1
        continue
    num_clipped += int(clipped)
    if area is None:
      area = (box[2] - box[0]) * (box[3] - box[1])
    objects[image_id].append(_Object(
        box=box, category_id=int(category_id),
        category_name=str(categories[category_id]),
        is_crowd=int(is_crowd), area=float(area),
        segmentation=segmentation, annotation_id=ann_id))

  tasks = [_ImageTask(image_id, path, file_name, height, width,
                      objects.get(image_id, []))
           for image_id, (path, file_name, height, width) in images.items()]
  num_annotations = sum(len(t.objects) for t in tasks)
  return tasks, num_annotations, skipped, num_clipped, num_no_polygon


def _is_hashable(value):
  return isinstance(value, (int, float, str, type(None)))


def _instance_mask(segmentation, height, width):
  """uint8 [height, width] 0/1 mask of a segmentation `check_segmentation`
  returned (polygons of 3 or more points, or a checked RLE)."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  if isinstance(segmentation, list):
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation["counts"], list):  # Uncompressed RLE.
    rle = mask_utils.frPyObjects(segmentation, height, width)
  else:  # Compressed RLE (str or bytes counts).
    rle = segmentation
  mask = mask_utils.decode(rle)
  if mask.ndim == 3:
    mask = mask.max(axis=2)
  return mask.astype(np.uint8)


def _encode_png(mask):
  buffer = io.BytesIO()
  Image.fromarray(mask).save(buffer, format="PNG")
  return buffer.getvalue()


def _make_example(task, include_masks, exif_orientation, max_image_pixels):
  """(serialized tf.Example of one image and its objects, orientation).

  orientation is the image file's EXIF orientation (1..8, 1 without one).
  """
  where = f"image file '{task.path}' (image id {task.image_id!r})"
  try:
    with tf.io.gfile.GFile(task.path, "rb") as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f"Cannot read {where}: {e}") from e
  image = encoded_images.read_image(data, where, exif_orientation,
                                    max_image_pixels)
  height, width = image.height, image.width
  if (height, width) != (task.height, task.width):
    hint = ""
    if image.orientation in (5, 6, 7, 8) and (width, height) == (
        task.height, task.width):
      # A quarter turn swaps the sides: the annotations are in the other
      # frame than the one chosen.
      other = (encoded_images.EXIF_IGNORE
               if exif_orientation == encoded_images.EXIF_APPLY
               else encoded_images.EXIF_APPLY)
      hint = (f" The file has EXIF orientation {image.orientation} "
              f"({encoded_images.ORIENTATIONS[image.orientation]}) and the "
              f"annotation file's size is that of the other frame: with "
              f"exif_orientation='{exif_orientation}' the size is the "
              f"{'displayed' if image.reencoded else 'stored'} one; pass "
              f"exif_orientation='{other}' (--exif_orientation={other}) if "
              "the annotations were drawn on the "
              f"{'stored pixels' if image.reencoded else 'displayed image'}.")
    raise ValueError(
        f"{where[0].upper()}{where[1:]} is {height}x{width} (height x "
        f"width) but the annotation file says {task.height}x{task.width}; "
        "expected them to agree (the boxes are normalised by the JSON "
        f"size).{hint}")
  data = image.data

  objects = task.objects
  feature = {
      "image/encoded": _bytes_feature([data]),
      "image/format": _bytes_feature([image.image_format.encode()]),
      "image/height": _int_feature([height]),
      "image/width": _int_feature([width]),
      "image/filename": _bytes_feature([str(task.file_name).encode()]),
      "image/source_id": _bytes_feature([str(task.image_id).encode()]),
      "image/key/sha256": _bytes_feature(
          [hashlib.sha256(data).hexdigest().encode()]),
      "image/object/bbox/xmin": _float_feature(
          [o.box[0] / width for o in objects]),
      "image/object/bbox/ymin": _float_feature(
          [o.box[1] / height for o in objects]),
      "image/object/bbox/xmax": _float_feature(
          [o.box[2] / width for o in objects]),
      "image/object/bbox/ymax": _float_feature(
          [o.box[3] / height for o in objects]),
      "image/object/class/label": _int_feature(
          [o.category_id for o in objects]),
      "image/object/class/text": _bytes_feature(
          [o.category_name.encode() for o in objects]),
      "image/object/is_crowd": _int_feature([o.is_crowd for o in objects]),
      "image/object/area": _float_feature([o.area for o in objects]),
  }
  if include_masks:
    feature["image/object/mask"] = _bytes_feature([
        _encode_png(_instance_mask(o.segmentation, height, width))
        for o in objects])
  serialized = tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()
  return serialized, image.orientation


def _bytes_feature(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float_feature(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _write_shard(task):
  """Writes one shard.

  Args:
    task: (path, temporary path, [_ImageTask], include_masks,
      exif_orientation, max_image_pixels).

  Returns:
    (path, records written, images with an EXIF orientation other than 1).
  """
  path, tmp_path, images, include_masks, exif_orientation, max_pixels = task
  oriented = []

  def records():
    for image in images:
      serialized, orientation = _make_example(image, include_masks,
                                              exif_orientation, max_pixels)
      oriented.append(orientation != 1)
      yield serialized

  path, count = sharded_writer.write_records(path, tmp_path, records())
  return path, count, sum(oriented)


def convert_coco(image_dir, object_annotations_file, output_file_prefix,
                 num_shards=32, include_masks=False, num_processes=None,
                 show_progress=True,
                 exif_orientation=encoded_images.EXIF_APPLY,
                 max_image_pixels=None):
  """Converts COCO annotations and images into sharded detection TFRecords.

  Works as it is on the COCO 2017 layout, e.g. image_dir=.../train2017 and
  object_annotations_file=.../annotations/instances_train2017.json.

  Args:
    image_dir: str, folder of the images; image i is read from
      image_dir/<file_name of image i> (gs:// allowed).
    object_annotations_file: str, COCO instances JSON (gs:// allowed). An
      image_info JSON without "annotations" (test-dev) works too. Image ids
      are ints or strings (written as image/source_id = str(id)).
    output_file_prefix: str, shards are
      `<output_file_prefix>-SSSSS-of-NNNNN.tfrecord` (gs:// allowed).
    num_shards: int >= 1, number of shard files.
    include_masks: bool, also write image/object/mask (one PNG per object,
      from the polygons or RLE, compressed or not). Polygons of fewer than 3
      points are dropped, and so is an annotation left without any
      (`check_segmentation`; the COCO evaluator does the same).
    num_processes: int, worker processes (each writes whole shards); None:
      min(num_shards, cpu count); 1 or 0: in this process.
    show_progress: bool, show a tqdm progress bar (images).
    exif_orientation: "apply" (default: the annotations are in the displayed
      frame; oriented images are turned and re-encoded), "error" or
      "ignore" (annotations on the stored pixels); see
      `dataloaders.datasets.encoded_images`.
    max_image_pixels: None (default: no limit, whatever Pillow's own) or
      int, images with more pixels are refused.

  Returns:
    dict with
      "num_images": int, examples written (images with no object included),
      "num_images_without_objects": int,
      "num_annotations": int, objects written (crowd ones included),
      "num_crowd": int, crowd objects written,
      "skipped": {"non_positive_size": int, "outside_image": int},
        annotations not written, by reason,
      "num_clipped": int, boxes written after clipping to the image,
      "num_no_polygon": int, annotations not written (include_masks)
        because their segmentation has no polygon of 3 or more points,
      "num_exif_oriented": int, images with an EXIF orientation other than
        1 (turned and re-encoded with "apply", kept with "ignore"),
      "exif_orientation": the mode used,
      "files": sorted list of the shard paths.

  Raises:
    FileNotFoundError: when the annotation file or an image file is missing
      (all images are checked before anything is written; the message names
      the image ids and paths).
    ValueError: when the annotations are inconsistent or malformed (unknown
      image or category id, image ids that collide as source ids, malformed
      box or segmentation; the message names the annotation), or an image
      cannot be read or decoded, differs in size from the JSON, is larger
      than max_image_pixels or (with exif_orientation "error") carries an
      EXIF orientation (the message names the image id and file); no shard
      of this call is left behind.
  """
  if int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  num_shards = int(num_shards)
  encoded_images.check_exif_mode(exif_orientation)
  encoded_images.check_max_image_pixels(max_image_pixels)
  if not tf.io.gfile.isdir(image_dir):
    raise FileNotFoundError(f"Image folder '{image_dir}' does not exist or is "
                            "not a folder.")
  data = read_annotation_file(object_annotations_file)
  (images, num_annotations, skipped, num_clipped,
   num_no_polygon) = _collect_images(data, object_annotations_file,
                                     image_dir, include_masks)
  del data  # The JSON of COCO train is large; keep only what is needed.
  if not images:
    raise ValueError(f"Annotation file '{object_annotations_file}' lists no "
                     "image.")
  _check_files_exist(images, object_annotations_file)

  random.Random(_SHARD_ORDER_SEED).shuffle(images)
  paths = sharded_writer.shard_paths(output_file_prefix, num_shards)
  tasks = [(path, tmp_path, part, bool(include_masks), exif_orientation,
            max_image_pixels)
           for (path, tmp_path), part in zip(
               paths, sharded_writer.split(images, num_shards))]
  written = sharded_writer.write_shards(
      _write_shard, tasks, paths, len(images), num_processes,
      desc=os.path.basename(output_file_prefix), show_progress=show_progress)

  return {
      "num_images": sum(count for _, count, _ in written),
      "num_images_without_objects": sum(1 for t in images if not t.objects),
      "num_annotations": num_annotations,
      "num_crowd": sum(o.is_crowd for t in images for o in t.objects),
      "skipped": skipped,
      "num_clipped": num_clipped,
      "num_no_polygon": num_no_polygon,
      "num_exif_oriented": sum(oriented for _, _, oriented in written),
      "exif_orientation": exif_orientation,
      "files": sorted(path for path, _, _ in written),
  }


def format_summary(summary):
  """One human-readable paragraph of a `convert_coco` summary."""
  skipped = summary["skipped"]
  total_skipped = sum(skipped.values())
  reasons = ", ".join(f"{count} with {_SKIP_REASONS[reason]}"
                      for reason, count in skipped.items())
  files = summary["files"]
  where = (f"'{files[0].rsplit('-', 3)[0]}-*'" if files else "no file")
  text = (
      f"Wrote {summary['num_images']} images "
      f"({summary['num_images_without_objects']} without objects) and "
      f"{summary['num_annotations']} objects ({summary['num_crowd']} crowd) "
      f"to {len(files)} shards {where}. Skipped {total_skipped} "
      f"annotations ({reasons}); clipped {summary['num_clipped']} boxes "
      "partly outside their image.")
  if summary.get("num_no_polygon"):
    text += (f" Dropped {summary['num_no_polygon']} annotations whose "
             f"segmentation has no polygon of {MIN_POLYGON_POINTS} or more "
             "points (no mask).")
  if summary.get("num_exif_oriented"):
    done = ("turned to their displayed frame and re-encoded"
            if summary["exif_orientation"] == encoded_images.EXIF_APPLY else
            "kept as stored (exif_orientation=ignore)")
    text += (f" {summary['num_exif_oriented']} images had an EXIF "
             f"orientation: {done}.")
  return text
