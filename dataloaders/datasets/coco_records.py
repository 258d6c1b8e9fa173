"""Converts COCO-format detection annotations into sharded TFRecords.

Input: a COCO instances JSON (the `instances_{train,val}2017.json` layout:
"images" with id/file_name/height/width, "annotations" with id/image_id/
category_id/bbox [x, y, w, h] in pixels/area/iscrowd/segmentation,
"categories" with id/name) and the folder holding the images, each found at
image_dir/<file_name>.

Every image becomes one tf.Example, with the keys of the TF Object Detection
API and the TF Model Garden (records written here are read by their decoders
and theirs by `dataloaders.detection_decoder`):

  image/encoded              bytes, the file's bytes as they are
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
image, are skipped and counted.

Shards are `<prefix>-SSSSS-of-NNNNN.tfrecord`, images spread over them in a
fixed pseudo-random order. Each shard is written under a temporary name and
renamed when complete, so a failure never leaves a truncated shard under a
final name; every image file is checked to exist before anything is written.
"""

import collections
import hashlib
import io
import json
import os
import random

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

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


def _index_images(data, annotation_file, image_dir):
  """{image id: (path, file_name, height, width)} in file order."""
  images = {}
  for index, image in enumerate(data["images"]):
    missing = [k for k in ("id", "file_name", "height", "width")
               if k not in image]
    if missing:
      raise ValueError(
          f"Annotation file '{annotation_file}', images[{index}] (id "
          f"{image.get('id')}) lacks {missing}; expected id, file_name, "
          "height and width.")
    image_id = image["id"]
    if image_id in images:
      raise ValueError(f"Annotation file '{annotation_file}' lists image id "
                       f"{image_id} twice; image ids must be unique.")
    height, width = int(image["height"]), int(image["width"])
    if height <= 0 or width <= 0:
      raise ValueError(
          f"Annotation file '{annotation_file}', image id {image_id}: size "
          f"{height}x{width}; expected positive height and width.")
    path = os.path.join(image_dir, image["file_name"])
    images[image_id] = (path, image["file_name"], height, width)
  return images


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
    except tf.errors.NotFoundError:
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


def _collect_images(data, annotation_file, image_dir, include_masks):
  """Groups the annotations by image, clipping and skipping boxes.

  Returns:
    (tasks, num_annotations, skipped, num_clipped): tasks a list of
    _ImageTask in file order, num_annotations the objects kept, skipped a
    dict reason -> count, num_clipped the kept boxes that were clipped.
  """
  images = _index_images(data, annotation_file, image_dir)
  categories = {}
  for category in data["categories"]:
    if "id" not in category or "name" not in category:
      raise ValueError(f"Annotation file '{annotation_file}': category "
                       f"{category!r} lacks 'id' or 'name'.")
    categories[category["id"]] = category["name"]

  objects = collections.defaultdict(list)
  skipped = {reason: 0 for reason in _SKIP_REASONS}
  num_clipped = 0
  for index, ann in enumerate(data.get("annotations") or []):
    ann_id = ann.get("id", f"#{index}")
    image_id = ann.get("image_id")
    where = (f"Annotation file '{annotation_file}', annotation id {ann_id} "
             f"(image id {image_id})")
    if image_id not in images:
      raise ValueError(f"{where}: the image id is not in 'images'; expected "
                       "every annotation to refer to a listed image.")
    if ann.get("category_id") not in categories:
      raise ValueError(
          f"{where}: category id {ann.get('category_id')!r} is not in "
          f"'categories' (ids {sorted(categories)[:20]}).")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
      raise ValueError(f"{where}: bbox is {bbox!r}; expected [x, y, width, "
                       "height] in pixels.")
    _, _, height, width = images[image_id]
    box, reason, clipped = _clip_box(bbox, height, width)
    if reason is not None:
      if sum(skipped.values()) < _MAX_SKIPS_LOGGED:
        logging.warning("%s: skipped, %s (bbox %s, image height x width "
                        "%dx%d).", where,
                        _SKIP_REASONS[reason], bbox, height, width)
      skipped[reason] += 1
      continue
    num_clipped += int(clipped)
    segmentation = None
    if include_masks:
      segmentation = ann.get("segmentation")
      if not segmentation:
        raise ValueError(
            f"{where}: no segmentation; include_masks needs polygons or an "
            "RLE for every annotation.")
    area = ann.get("area")
    if area is None:
      area = (box[2] - box[0]) * (box[3] - box[1])
    objects[image_id].append(_Object(
        box=box, category_id=int(ann["category_id"]),
        category_name=str(categories[ann["category_id"]]),
        is_crowd=int(bool(ann.get("iscrowd", 0))), area=float(area),
        segmentation=segmentation, annotation_id=ann_id))

  tasks = [_ImageTask(image_id, path, file_name, height, width,
                      objects.get(image_id, []))
           for image_id, (path, file_name, height, width) in images.items()]
  num_annotations = sum(len(t.objects) for t in tasks)
  return tasks, num_annotations, skipped, num_clipped


def _instance_mask(segmentation, height, width, where):
  """uint8 [height, width] 0/1 mask of a polygon list or an RLE."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  if isinstance(segmentation, list):
    if not all(isinstance(p, (list, tuple)) for p in segmentation):
      raise ValueError(f"{where}: segmentation {str(segmentation)[:80]} is "
                       "not a list of polygons; expected [[x0, y0, x1, y1, "
                       "x2, y2, ...], ...].")
    # Polygons of fewer than 3 points cover nothing; they must also not
    # reach frPyObjects, which reads a first entry of 4 numbers as boxes.
    polygons = [p for p in segmentation if len(p) >= 6]
    if not polygons:
      logging.warning("%s: no polygon of 3 or more points; its mask is "
                      "empty.", where)
      return np.zeros((height, width), np.uint8)
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  elif isinstance(segmentation, dict) and "counts" in segmentation:
    size = [int(s) for s in segmentation.get("size", [])]
    if size != [height, width]:
      raise ValueError(f"{where}: RLE size {segmentation.get('size')}; "
                       f"expected the image size [{height}, {width}].")
    if isinstance(segmentation["counts"], list):  # Uncompressed RLE.
      rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # Compressed RLE (str or bytes counts).
      rle = segmentation
  else:
    raise ValueError(f"{where}: segmentation is a {type(segmentation)}; "
                     "expected a list of polygons or an RLE dict.")
  mask = mask_utils.decode(rle)
  if mask.ndim == 3:
    mask = mask.max(axis=2)
  return mask.astype(np.uint8)


def _encode_png(mask):
  buffer = io.BytesIO()
  Image.fromarray(mask).save(buffer, format="PNG")
  return buffer.getvalue()


def _make_example(task, include_masks):
  """Serialized tf.Example of one image and its objects."""
  where = f"image file '{task.path}' (image id {task.image_id})"
  try:
    with tf.io.gfile.GFile(task.path, "rb") as f:
      data = f.read()
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f"Cannot read {where}: {e}") from e
  image_format = encoded_images.image_format(data)
  if image_format is None:
    raise ValueError(f"{where[0].upper()}{where[1:]} is neither JPEG nor PNG "
                     f"(it starts with {data[:8]!r}); expected a JPEG or PNG "
                     "image.")
  height, width = encoded_images.decoded_size(data, where)
  if (height, width) != (task.height, task.width):
    raise ValueError(
        f"{where[0].upper()}{where[1:]} is {height}x{width} (height x "
        f"width) but the annotation file says {task.height}x{task.width}; "
        "expected them to agree (the boxes are normalised by the JSON size).")

  objects = task.objects
  feature = {
      "image/encoded": _bytes_feature([data]),
      "image/format": _bytes_feature([image_format.encode()]),
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
        _encode_png(_instance_mask(
            o.segmentation, height, width,
            f"{where}, annotation id {o.annotation_id}"))
        for o in objects])
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def _bytes_feature(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float_feature(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _write_shard(task):
  """Writes one shard: task is (path, temporary path, [_ImageTask], masks)."""
  path, tmp_path, images, include_masks = task
  return sharded_writer.write_records(
      path, tmp_path, (_make_example(image, include_masks) for image in images))


def convert_coco(image_dir, object_annotations_file, output_file_prefix,
                 num_shards=32, include_masks=False, num_processes=None,
                 show_progress=True):
  """Converts COCO annotations and images into sharded detection TFRecords.

  Works as it is on the COCO 2017 layout, e.g. image_dir=.../train2017 and
  object_annotations_file=.../annotations/instances_train2017.json.

  Args:
    image_dir: str, folder of the images; image i is read from
      image_dir/<file_name of image i> (gs:// allowed).
    object_annotations_file: str, COCO instances JSON (gs:// allowed). An
      image_info JSON without "annotations" (test-dev) works too.
    output_file_prefix: str, shards are
      `<output_file_prefix>-SSSSS-of-NNNNN.tfrecord` (gs:// allowed).
    num_shards: int >= 1, number of shard files.
    include_masks: bool, also write image/object/mask (one PNG per object,
      from the polygons or RLE, compressed or not).
    num_processes: int, worker processes (each writes whole shards); None:
      min(num_shards, cpu count); 1 or 0: in this process.
    show_progress: bool, show a tqdm progress bar (images).

  Returns:
    dict with
      "num_images": int, examples written (images with no object included),
      "num_images_without_objects": int,
      "num_annotations": int, objects written (crowd ones included),
      "num_crowd": int, crowd objects written,
      "skipped": {"non_positive_size": int, "outside_image": int},
        annotations not written, by reason,
      "num_clipped": int, boxes written after clipping to the image,
      "files": sorted list of the shard paths.

  Raises:
    FileNotFoundError: when the annotation file or an image file is missing
      (all images are checked before anything is written; the message names
      the image ids and paths).
    ValueError: when the annotations are inconsistent (unknown image or
      category id, malformed box or segmentation), or an image cannot be
      read or decoded or differs in size from the JSON (the message names
      the image id and file); no shard of this call is left behind.
  """
  if int(num_shards) < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  num_shards = int(num_shards)
  if not tf.io.gfile.isdir(image_dir):
    raise FileNotFoundError(f"Image folder '{image_dir}' does not exist or is "
                            "not a folder.")
  data = read_annotation_file(object_annotations_file)
  images, num_annotations, skipped, num_clipped = _collect_images(
      data, object_annotations_file, image_dir, include_masks)
  del data  # The JSON of COCO train is large; keep only what is needed.
  if not images:
    raise ValueError(f"Annotation file '{object_annotations_file}' lists no "
                     "image.")
  _check_files_exist(images, object_annotations_file)

  random.Random(_SHARD_ORDER_SEED).shuffle(images)
  paths = sharded_writer.shard_paths(output_file_prefix, num_shards)
  tasks = [(path, tmp_path, part, bool(include_masks))
           for (path, tmp_path), part in zip(
               paths, sharded_writer.split(images, num_shards))]
  written = sharded_writer.write_shards(
      _write_shard, tasks, paths, len(images), num_processes,
      desc=os.path.basename(output_file_prefix), show_progress=show_progress)

  return {
      "num_images": sum(count for _, count in written),
      "num_images_without_objects": sum(1 for t in images if not t.objects),
      "num_annotations": num_annotations,
      "num_crowd": sum(o.is_crowd for t in images for o in t.objects),
      "skipped": skipped,
      "num_clipped": num_clipped,
      "files": sorted(path for path, _ in written),
  }


def format_summary(summary):
  """One human-readable paragraph of a `convert_coco` summary."""
  skipped = summary["skipped"]
  total_skipped = sum(skipped.values())
  reasons = ", ".join(f"{count} with {_SKIP_REASONS[reason]}"
                      for reason, count in skipped.items())
  files = summary["files"]
  where = (f"'{files[0].rsplit('-', 3)[0]}-*'" if files else "no file")
  return (
      f"Wrote {summary['num_images']} images "
      f"({summary['num_images_without_objects']} without objects) and "
      f"{summary['num_annotations']} objects ({summary['num_crowd']} crowd) "
      f"to {len(files)} shards {where}. Skipped {total_skipped} "
      f"annotations ({reasons}); clipped {summary['num_clipped']} boxes "
      "partly outside their image.")
