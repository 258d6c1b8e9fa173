"""A small synthetic semantic segmentation dataset in PASCAL VOC 2012 layout.

Images show filled shapes, one shape and colour per class (red circles,
green squares, blue triangles, ...), partly overlapping, on a greyish
background with mild noise. The label maps are what VOC's are: palette PNGs
of class ids (0 background) with a void band of id 255 along every object
boundary. A small segmenter learns them in minutes on a CPU, so the whole
segmentation pipeline (converter, decoder, parser, model, mIoU evaluation)
runs end to end on data with a known answer.

Layout (the VOC 2012 one, read by scripts/create_pascal_tf_record.py):

  output_dir/JPEGImages/<id>.jpg
  output_dir/SegmentationClass/<id>.png          palette PNG, VOC's palette
  output_dir/ImageSets/Segmentation/train.txt    ids, one per line
  output_dir/ImageSets/Segmentation/val.txt
  output_dir/ImageSets/Segmentation/trainval.txt

Ids look like VOC's: train_000001, ..., val_000001, .... Every 10th image
has no object (all background).
Shapes are 12% to 45% of the image's short side across; later shapes are
drawn over earlier ones (the label map follows the visible pixels). The void
band covers the pixels within `border` pixels (Chebyshev distance) of a
pixel of another id, on both sides of the boundary, as VOC's 5-pixel band.

Generation is deterministic for a seed; each split has its own random
stream, so the validation images do not depend on num_train.
"""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image
from PIL import ImageDraw

from dataloaders.datasets import pascal_records

# (name, shape, RGB colour) of classes 1.. ; class 0 is the background.
SHAPES = (
    ("circle", "circle", (220, 40, 40)),
    ("square", "square", (40, 170, 60)),
    ("triangle", "triangle", (50, 80, 220)),
    ("diamond", "diamond", (240, 160, 20)),
    ("hexagon", "hexagon", (190, 50, 200)),
)
MAX_CLASSES = len(SHAPES) + 1
DEFAULT_IMAGE_SIZE = ((96, 160), (96, 160))

_MIN_OBJECTS, _MAX_OBJECTS = 1, 4
_EMPTY_EVERY = 10
_SIZE_RANGE = (0.12, 0.45)  # Of the short side: the shape's extent.
_NOISE_STDDEV = 4.0
_COLOUR_JITTER = 20
_JPEG_QUALITY = 95
_SPLITS = (("train", 0), ("val", 1))


def class_names(num_classes):
  """("background", "circle", ...) of the first num_classes classes."""
  return ("background",) + tuple(s[0] for s in SHAPES[:num_classes - 1])


def _polygon(shape, cx, cy, radius, angle):
  """Vertices [(x, y), ...] of a shape of circumradius `radius`."""
  corners = {"square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}[shape]
  start = angle + (np.pi / 4 if shape == "square" else -np.pi / 2)
  if shape == "diamond":  # A rhombus, taller than wide.
    return [(cx, cy - radius), (cx + 0.6 * radius, cy), (cx, cy + radius),
            (cx - 0.6 * radius, cy)]
  angles = start + 2 * np.pi * np.arange(corners) / corners
  return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]


def _shape_mask(shape, height, width, cx, cy, radius, angle):
  """bool [height, width], the pixels of one shape."""
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  if shape == "circle":
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius],
                 fill=1)
  else:
    draw.polygon(_polygon(shape, cx, cy, radius, angle), fill=1)
  return np.asarray(canvas, bool)


def void_band(label, border):
  """bool [h, w]: pixels within `border` pixels of a pixel of another id."""
  height, width = label.shape
  padded = np.pad(label, border, mode="edge")
  band = np.zeros(label.shape, bool)
  for dy in range(-border, border + 1):
    for dx in range(-border, border + 1):
      shifted = padded[border + dy:border + dy + height,
                       border + dx:border + dx + width]
      band |= shifted != label
  return band


def _make_image(rng, height, width, num_classes, empty, border):
  """(uint8 [h, w, 3] pixels, uint8 [h, w] label map) of one image."""
  background = rng.integers(90, 200) + rng.integers(-15, 16, size=3)
  pixels = np.empty((height, width, 3), np.float32)
  pixels[:] = np.clip(background, 0, 255)
  label = np.zeros((height, width), np.uint8)
  if not empty:
    short = min(height, width)
    for _ in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
      class_id = int(rng.integers(1, num_classes))
      _, shape, colour = SHAPES[class_id - 1]
      radius = rng.uniform(*_SIZE_RANGE) * short / 2
      cx = rng.uniform(radius, width - radius)
      cy = rng.uniform(radius, height - radius)
      mask = _shape_mask(shape, height, width, cx, cy, radius,
                         rng.uniform(0, np.pi / 6))
      jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
      pixels[mask] = np.clip(np.array(colour) + jitter, 0, 255)
      label[mask] = class_id
  if border > 0:
    label[void_band(label, border)] = pascal_records.IGNORE_LABEL
  noise = rng.normal(0.0, _NOISE_STDDEV, size=pixels.shape)
  pixels = np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)
  return pixels, label


def _write(path, data):
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)


def _parse_image_size(image_size):
  """((hmin, hmax), (wmin, wmax)) of (H, W) or of a range, inclusive."""
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
    if not 32 <= lo <= hi:
      raise ValueError(f"image_size {image_size!r}: each side must be >= 32 "
                       "pixels, with min <= max.")
  return ranges


def make_synthetic_pascal(output_dir, num_train=400, num_val=100,
                          image_size=DEFAULT_IMAGE_SIZE, num_classes=4,
                          border=2, seed=0, overwrite=False):
  """Writes a synthetic segmentation dataset in VOC 2012 layout (module doc).

  Args:
    output_dir: str, destination folder (gs:// allowed).
    num_train, num_val: int >= 0, images per split.
    image_size: (height, width) in pixels, or ((min_height, max_height),
      (min_width, max_width)) for sizes drawn per image; sides >= 32.
    num_classes: int in [2, 6], background included.
    border: int >= 0, half width in pixels of the void (255) band along
      object boundaries (0: no band).
    seed: int, seed of everything random.
    overwrite: bool; replace an existing dataset in output_dir (True) or
      raise (False).

  Returns:
    dict "voc_dir" (= output_dir), "num_classes", "class_names", and per
    split "train" / "val": {"num_images": int, "num_empty_images": int}.

  Raises:
    FileExistsError: when the dataset exists and not `overwrite`.
    ValueError: when an argument is out of range.
  """
  if not 2 <= int(num_classes) <= MAX_CLASSES:
    raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got "
                     f"{num_classes}.")
  if min(int(num_train), int(num_val)) < 0 or int(border) < 0:
    raise ValueError(f"num_train, num_val and border must be >= 0, got "
                     f"{num_train}, {num_val} and {border}.")
  (hmin, hmax), (wmin, wmax) = _parse_image_size(image_size)
  folders = [os.path.join(output_dir, d) for d in
             ("JPEGImages", "SegmentationClass", "ImageSets")]
  existing = [f for f in folders if tf.io.gfile.exists(f)]
  if existing:
    if not overwrite:
      raise FileExistsError(
          f"Synthetic PASCAL outputs already exist: {existing}; expected a new "
          "output_dir (or pass overwrite=True / --overwrite).")
    for folder in existing:
      tf.io.gfile.rmtree(folder)
  image_dir, label_dir, set_dir = (
      folders[0], folders[1], os.path.join(folders[2], "Segmentation"))
  for folder in (image_dir, label_dir, set_dir):
    tf.io.gfile.makedirs(folder)

  palette = pascal_records.voc_palette()
  counts = {"train": int(num_train), "val": int(num_val)}
  result = {"voc_dir": output_dir, "num_classes": int(num_classes),
            "class_names": list(class_names(int(num_classes)))}
  all_ids = []
  for split, stream in _SPLITS:
    rng = np.random.default_rng([int(seed), stream])
    ids, empty_count = [], 0
    for index in range(counts[split]):
      image_id = f"{split}_{index + 1:06d}"
      empty = index % _EMPTY_EVERY == _EMPTY_EVERY - 1
      empty_count += int(empty)
      height = int(rng.integers(hmin, hmax + 1))
      width = int(rng.integers(wmin, wmax + 1))
      pixels, label = _make_image(rng, height, width, int(num_classes), empty,
                                  int(border))
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="JPEG",
                                   quality=_JPEG_QUALITY)
      _write(os.path.join(image_dir, f"{image_id}.jpg"), buffer.getvalue())
      label_image = Image.fromarray(label)  # Mode L; putpalette makes it P.
      label_image.putpalette(palette)
      buffer = io.BytesIO()
      label_image.save(buffer, format="PNG")
      _write(os.path.join(label_dir, f"{image_id}.png"), buffer.getvalue())
      ids.append(image_id)
    _write(os.path.join(set_dir, f"{split}.txt"),
           "".join(f"{i}\n" for i in ids).encode())
    all_ids.extend(ids)
    result[split] = {"num_images": len(ids), "num_empty_images": empty_count}
  _write(os.path.join(set_dir, "trainval.txt"),
         "".join(f"{i}\n" for i in all_ids).encode())
  return result
