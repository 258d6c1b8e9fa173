"""A small synthetic detection dataset in exact COCO format.

Images show filled shapes, one shape and colour per category (red circles,
green squares, blue triangles, ...), on a plain background with mild noise:
a small detector learns them in minutes, so the whole detection pipeline
(converter, decoder, parser, model, COCO evaluation) runs end to end on
data with a known answer.

Layout, as COCO 2017 (with train/val instead of train2017/val2017):

  output_dir/train/000000000001.jpg ...
  output_dir/val/000001000001.jpg ...
  output_dir/annotations/instances_train.json
  output_dir/annotations/instances_val.json

The JSON has COCO's "info", "licenses", "images" (id, file_name, height,
width, license), "annotations" (id, image_id, category_id, bbox [x, y, w, h]
in pixels, area, iscrowd, segmentation) and "categories" (id, name,
supercategory). Like real COCO:

* category ids are not contiguous (1, 3, 7, 10, 15, 22 for up to 6
  categories);
* ordinary objects have polygon segmentations (a circle is a polygon of 16
  to 64 vertices) and their area is the polygon's area; every shape is
  painted as exactly the pixels pycocotools rasterises for its polygon, so
  boxes and masks trace the drawn shapes;
* some images hold a crowd region (iscrowd = 1): a cluster of small shapes
  of one category, annotated once with an uncompressed RLE of their union,
  its pixel count as area (every 8th image, from the 3rd);
* some images hold no object at all (every 16th image, from the 2nd);
* other images hold 1 to 6 objects, which do not overlap one another (so
  no shape is occluded) nor the crowd region.

Object sizes cycle through COCO's area buckets: small (area 10^2..28^2
pixels, COCO: < 32^2), medium (36^2..88^2, COCO: 32^2..96^2) and large
(100^2..136^2, COCO: >= 96^2). An object never spans more than 90% of the
image's short side, so with images whose short side is below ~125 pixels
large objects are shrunk into the medium bucket (and below ~40 pixels
medium ones into the small bucket); an object that finds no free room is
shrunk too (down to a circumradius of 4 pixels) before it is given up.
With the default sizes, 120..256 pixels per side in varied aspect ratios,
all three buckets occur (about 50% small, 30% medium, 20% large objects).

Generation is deterministic for a seed; each split has its own random
stream, so the validation images do not depend on num_train.
"""

import io
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

# (category id, name, shape, RGB colour); the first num_categories are used.
CATEGORIES = (
    (1, "circle", "circle", (220, 40, 40)),
    (3, "square", "square", (40, 170, 60)),
    (7, "triangle", "triangle", (50, 80, 220)),
    (10, "diamond", "diamond", (240, 160, 20)),
    (15, "hexagon", "hexagon", (190, 50, 200)),
    (22, "star", "star", (30, 190, 200)),
)
MAX_CATEGORIES = len(CATEGORIES)

DEFAULT_IMAGE_SIZE = ((120, 256), (120, 256))

# sqrt(area) ranges in pixels of the three size buckets (small, medium,
# large), kept away from COCO's bucket limits 32 and 96.
_SIZE_BUCKETS = ((10.0, 28.0), (36.0, 88.0), (100.0, 136.0))
_MAX_EXTENT_FRACTION = 0.9  # Of the image's short side.
_MIN_OBJECTS, _MAX_OBJECTS = 1, 6
_EMPTY_EVERY, _EMPTY_OFFSET = 16, 1
_CROWD_EVERY, _CROWD_OFFSET = 8, 2
_PLACEMENT_TRIES = 50
_GAP = 2.0  # Pixels kept free between objects.
_MIN_RADIUS = 4.0  # Circumradius in pixels of the smallest shape.
_NOISE_STDDEV = 4.0
_COLOUR_JITTER = 15
_JPEG_QUALITY = 95

# Ids of the val split start here, so ids are unique across splits as in
# COCO (train ids 1.., val ids 1000001..).
_SPLITS = (("train", 0, 1), ("val", 1, 1_000_001))


def _unit_polygon(shape, num_circle_vertices=32):
  """[N, 2] (x, y) vertices of a shape of circumradius 1 centred at 0."""
  if shape == "circle":
    angles = np.linspace(0.0, 2 * np.pi, num_circle_vertices, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)
  if shape == "square":
    return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
  if shape == "triangle":  # Upright, as wide as tall.
    return np.array([[0, -1], [1, 1], [-1, 1]], np.float64)
  if shape == "diamond":
    return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], np.float64)
  if shape == "hexagon":
    angles = np.arange(6) * np.pi / 3
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)
  if shape == "star":
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
  raise ValueError(f"Unknown shape '{shape}'.")


def _polygon_area(points):
  """Shoelace area of an [N, 2] polygon."""
  x, y = points[:, 0], points[:, 1]
  return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _shape_polygon(shape, cx, cy, radius):
  """[N, 2] vertices (2 decimals, as COCO) of a shape of a circumradius."""
  num_vertices = int(np.clip(np.ceil(np.pi * radius / 2), 16, 64))
  points = _unit_polygon(shape, num_vertices) * radius + np.array([cx, cy])
  return np.round(points, 2)


def _rasterize(polygons, height, width):
  """bool [height, width], the union of polygons as pycocotools draws them."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  rles = mask_utils.frPyObjects([p.ravel().tolist() for p in polygons],
                                height, width)
  return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _uncompressed_rle(mask):
  """COCO uncompressed RLE {"counts": [...], "size": [h, w]} of a bool mask.

  Counts alternate runs of 0 and 1 over the column-major (Fortran order)
  pixels, starting with a (possibly empty) run of 0.
  """
  flat = mask.ravel(order="F").astype(np.int8)
  boundaries = np.concatenate(
      [[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  counts = np.diff(boundaries).tolist()
  if flat.size and flat[0] == 1:
    counts = [0] + counts
  return {"counts": [int(c) for c in counts], "size": list(mask.shape)}


def _parse_image_size(image_size):
  """((hmin, hmax), (wmin, wmax)) of (H, W) or a range, inclusive."""
  try:
    height, width = image_size
    if np.isscalar(height) and np.isscalar(width):
      ranges = ((int(height), int(height)), (int(width), int(width)))
    else:
      ranges = tuple((int(lo), int(hi)) for lo, hi in (height, width))
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"image_size must be (height, width) or ((min_height, max_height), "
        f"(min_width, max_width)), got {image_size!r}.") from e
  for lo, hi in ranges:
    if not 16 <= lo <= hi:
      raise ValueError(f"image_size {image_size!r}: each side must be >= 16 "
                       "pixels, with min <= max.")
  return ranges


class _Canvas:
  """One image being generated: pixels, occupied boxes, annotations."""

  def __init__(self, rng, height, width):
    self.rng = rng
    self.height, self.width = height, width
    background = rng.integers(90, 200) + rng.integers(-15, 16, size=3)
    self.pixels = np.empty((height, width, 3), np.float32)
    self.pixels[:] = np.clip(background, 0, 255)
    self.boxes = []  # (x0, y0, x1, y1) of everything placed.
    self.objects = []  # (category id, polygons or None, mask or None).

  def _paint(self, mask, colour):
    jitter = self.rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    self.pixels[mask] = np.clip(np.array(colour) + jitter, 0, 255)

  def _free(self, box):
    x0, y0, x1, y1 = box
    return all(x1 + _GAP <= b[0] or b[2] + _GAP <= x0 or
               y1 + _GAP <= b[1] or b[3] + _GAP <= y0 for b in self.boxes)

  def _place(self, half_width, half_height):
    """A free box of the given half sizes, or None after some tries."""
    for _ in range(_PLACEMENT_TRIES):
      cx = self.rng.uniform(half_width + 1, self.width - half_width - 1)
      cy = self.rng.uniform(half_height + 1, self.height - half_height - 1)
      box = (cx - half_width, cy - half_height, cx + half_width,
             cy + half_height)
      if self._free(box):
        return box
    return None

  def add_object(self, category, sqrt_area):
    """Places one shape whose area is about sqrt_area**2; False if no room."""
    category_id, _, shape, colour = category
    unit_area = _polygon_area(_unit_polygon(shape, 64))
    radius = sqrt_area / np.sqrt(unit_area)
    radius = min(radius, _MAX_EXTENT_FRACTION * min(self.height,
                                                    self.width) / 2)
    # When there is no room, shrink the shape (down to the small bucket)
    # rather than drop it, so images keep their number of objects.
    box = None
    while box is None and radius >= _MIN_RADIUS:
      box = self._place(radius, radius)
      radius = radius if box is not None else radius * 0.7
    if box is None:
      return False
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    polygon = _shape_polygon(shape, cx, cy, radius)
    self.boxes.append(box)
    self._paint(_rasterize([polygon], self.height, self.width), colour)
    self.objects.append((category_id, [polygon], None))
    return True

  def add_crowd(self, category):
    """A cluster of 5..12 small shapes of one category, as one crowd region."""
    category_id, _, shape, colour = category
    side = min(self.height, self.width)
    half_width = self.rng.uniform(0.15, 0.25) * side
    half_height = self.rng.uniform(0.15, 0.25) * side
    box = self._place(half_width, half_height)
    if box is None:
      return
    polygons = []
    for _ in range(self.rng.integers(5, 13)):
      radius = self.rng.uniform(3.0, 6.0)
      cx = self.rng.uniform(box[0] + radius, box[2] - radius)
      cy = self.rng.uniform(box[1] + radius, box[3] - radius)
      polygons.append(_shape_polygon(shape, cx, cy, radius))
    mask = _rasterize(polygons, self.height, self.width)
    self.boxes.append(box)
    self._paint(mask, colour)
    self.objects.append((category_id, None, mask))

  def encode(self):
    noise = self.rng.normal(0.0, _NOISE_STDDEV, size=self.pixels.shape)
    pixels = np.clip(np.rint(self.pixels + noise), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _annotation(annotation_id, image_id, category_id, polygons, mask):
  """One COCO annotation dict (polygons, or a crowd mask as RLE)."""
  if polygons is not None:
    points = np.concatenate(polygons)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    segmentation = [[float(v) for v in p.ravel()] for p in polygons]
    area = sum(_polygon_area(p) for p in polygons)
    iscrowd = 0
  else:
    rows, cols = np.nonzero(mask)
    x0, y0 = float(cols.min()), float(rows.min())
    x1, y1 = float(cols.max() + 1), float(rows.max() + 1)
    segmentation = _uncompressed_rle(mask)
    area = float(mask.sum())
    iscrowd = 1
  return {
      "id": annotation_id,
      "image_id": image_id,
      "category_id": category_id,
      "bbox": [round(float(x0), 2), round(float(y0), 2),
               round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
      "area": round(float(area), 4),
      "iscrowd": iscrowd,
      "segmentation": segmentation,
  }


def _generate_split(rng, num_images, size_ranges, categories, first_id,
                    image_dir):
  """Writes the images of one split; returns (images, annotations)."""
  (hmin, hmax), (wmin, wmax) = size_ranges
  images, annotations = [], []
  annotation_id = first_id
  for index in range(num_images):
    image_id = first_id + index
    height = int(rng.integers(hmin, hmax + 1))
    width = int(rng.integers(wmin, wmax + 1))
    canvas = _Canvas(rng, height, width)
    if index % _EMPTY_EVERY != _EMPTY_OFFSET:
      if index % _CROWD_EVERY == _CROWD_OFFSET:
        canvas.add_crowd(categories[rng.integers(len(categories))])
      num_objects = int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))
      targets = []
      for j in range(num_objects):
        low, high = _SIZE_BUCKETS[(index + j) % len(_SIZE_BUCKETS)]
        targets.append((rng.uniform(low, high),
                        categories[rng.integers(len(categories))]))
      # Largest first: they are the hardest to fit.
      for sqrt_area, category in sorted(targets, key=lambda t: -t[0]):
        canvas.add_object(category, sqrt_area)
    file_name = f"{image_id:012d}.jpg"
    with tf.io.gfile.GFile(os.path.join(image_dir, file_name), "wb") as f:
      f.write(canvas.encode())
    images.append({"id": image_id, "file_name": file_name, "height": height,
                   "width": width, "license": 1})
    for category_id, polygons, mask in canvas.objects:
      annotations.append(_annotation(annotation_id, image_id, category_id,
                                     polygons, mask))
      annotation_id += 1
  return images, annotations


def make_synthetic_coco(output_dir, num_train=500, num_val=100,
                        image_size=DEFAULT_IMAGE_SIZE, num_categories=3,
                        seed=0, overwrite=False):
  """Writes a synthetic COCO-format detection dataset (see module doc).

  About 1 ms per image at the default sizes (plus file writes).

  Args:
    output_dir: str, destination folder (gs:// allowed).
    num_train: int >= 0, images in the train split.
    num_val: int >= 0, images in the val split.
    image_size: (height, width) in pixels for images of one size, or
      ((min_height, max_height), (min_width, max_width)) for sizes drawn
      uniformly per image (bounds included); sides >= 16.
    num_categories: int in [1, 6]; the first `num_categories` of
      `CATEGORIES` (ids 1, 3, 7, 10, 15, 22).
    seed: int, seed of everything random.
    overwrite: bool; when the split folders or annotation files already
      exist, replace them (True) or raise (False).

  Returns:
    dict split -> {"image_dir": str, "annotation_file": str, "num_images":
    int, "num_annotations": int, "num_crowd": int, "num_empty_images": int},
    for the splits "train" and "val".

  Raises:
    FileExistsError: when outputs exist and not `overwrite`.
    ValueError: when an argument is out of range.
  """
  if not 1 <= int(num_categories) <= MAX_CATEGORIES:
    raise ValueError(f"num_categories must be in [1, {MAX_CATEGORIES}], got "
                     f"{num_categories}.")
  counts = {"train": int(num_train), "val": int(num_val)}
  if min(counts.values()) < 0:
    raise ValueError(f"num_train and num_val must be >= 0, got {num_train} "
                     f"and {num_val}.")
  size_ranges = _parse_image_size(image_size)
  categories = CATEGORIES[:int(num_categories)]
  annotation_dir = os.path.join(output_dir, "annotations")

  outputs = {}
  for split, _, _ in _SPLITS:
    outputs[split] = (os.path.join(output_dir, split),
                      os.path.join(annotation_dir, f"instances_{split}.json"))
  existing = [path for pair in outputs.values() for path in pair
              if tf.io.gfile.exists(path)]
  if existing:
    if not overwrite:
      raise FileExistsError(
          f"Synthetic COCO outputs already exist: {existing}; expected a "
          "new output_dir (or pass overwrite=True / --overwrite).")
    for path in existing:
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
      else:
        tf.io.gfile.remove(path)
  tf.io.gfile.makedirs(annotation_dir)

  result = {}
  for split, stream, first_id in _SPLITS:
    image_dir, annotation_file = outputs[split]
    tf.io.gfile.makedirs(image_dir)
    rng = np.random.default_rng([int(seed), stream])
    images, annotations = _generate_split(
        rng, counts[split], size_ranges, categories, first_id, image_dir)
    dataset = {
        "info": {
            "description": "Synthetic shapes (spinenet-keras synthetic_coco)",
            "version": "1.0",
            "year": 2024,
            "contributor": "dataloaders.datasets.synthetic_coco",
            "date_created": "",
            "seed": int(seed),
        },
        "licenses": [{"id": 1, "name": "Generated data, no restrictions",
                      "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c[0], "name": c[1], "supercategory": "shape"}
                       for c in categories],
    }
    tmp_file = f"{annotation_file}.tmp"
    with tf.io.gfile.GFile(tmp_file, "w") as f:
      json.dump(dataset, f)
    tf.io.gfile.rename(tmp_file, annotation_file, overwrite=True)
    with_objects = {a["image_id"] for a in annotations}
    result[split] = {
        "image_dir": image_dir,
        "annotation_file": annotation_file,
        "num_images": len(images),
        "num_annotations": len(annotations),
        "num_crowd": sum(a["iscrowd"] for a in annotations),
        "num_empty_images": sum(1 for i in images
                                if i["id"] not in with_objects),
    }
  return result
