r"""Writes a small synthetic segmentation dataset in PASCAL VOC 2012 layout.

Images, palette label maps with void borders and image sets
(output_dir/{JPEGImages,SegmentationClass,ImageSets/Segmentation}):
  python scripts/make_synthetic_pascal.py --output_dir=/tmp/shapes_voc

Also as TFRecords (output_dir/tfrecords/{train,val}-SSSSS-of-NNNNN.tfrecord),
converted by the PASCAL converter exactly as real VOC is:
  python scripts/make_synthetic_pascal.py --output_dir=/tmp/shapes_voc \
    --records

See dataloaders/datasets/synthetic_pascal.py for the content.
"""

import json
import os
import sys

# scripts/ is not a package: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from dataloaders.datasets import pascal_records  # pylint: disable=g-import-not-at-top,wrong-import-position
from dataloaders.datasets import synthetic_pascal  # pylint: disable=g-import-not-at-top,wrong-import-position

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Destination folder.",
                                  required=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 400, "Train images.")
_NUM_VAL = flags.DEFINE_integer("num_val", 100, "Validation images.")
_IMAGE_SIZE = flags.DEFINE_string(
    "image_size", "96-160,96-160",
    "HEIGHT,WIDTH in pixels, each a number or a range MIN-MAX.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", 4,
    f"Classes with background, 2..{synthetic_pascal.MAX_CLASSES}.")
_BORDER = flags.DEFINE_integer(
    "border", 2, "Half width of the void (255) band along object boundaries.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of everything random.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace an existing dataset in output_dir.")
_RECORDS = flags.DEFINE_bool(
    "records", False, "Also convert both splits to TFRecords under "
    "output_dir/tfrecords.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4,
                                   "With --records: shards per split.")


def _parse_image_size(text):
  """'160,120' -> (160, 120); '96-160,96-160' -> ((96, 160), (96, 160))."""
  sides = []
  for part in text.split(","):
    bounds = [int(b) for b in part.split("-")]
    if len(bounds) not in (1, 2):
      raise app.UsageError(f"--image_size={text!r}: expected HEIGHT,WIDTH, "
                           "each a number or MIN-MAX.")
    sides.append(bounds[0] if len(bounds) == 1 else tuple(bounds))
  if len(sides) != 2:
    raise app.UsageError(f"--image_size={text!r}: expected HEIGHT,WIDTH.")
  if all(isinstance(s, int) for s in sides):
    return tuple(sides)
  return tuple(s if isinstance(s, tuple) else (s, s) for s in sides)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = synthetic_pascal.make_synthetic_pascal(
      _OUTPUT_DIR.value, num_train=_NUM_TRAIN.value, num_val=_NUM_VAL.value,
      image_size=_parse_image_size(_IMAGE_SIZE.value),
      num_classes=_NUM_CLASSES.value, border=_BORDER.value, seed=_SEED.value,
      overwrite=_OVERWRITE.value)
  print(json.dumps(result, indent=2))
  if _RECORDS.value:
    for split in ("train", "val"):
      prefix = os.path.join(_OUTPUT_DIR.value, "tfrecords", split)
      # Shards of a dataset just replaced (maybe another shard count).
      for stale in tf.io.gfile.glob(f"{prefix}-*-of-*.tfrecord"):
        tf.io.gfile.remove(stale)
      summary = pascal_records.convert_pascal(
          _OUTPUT_DIR.value, split, prefix, num_shards=_NUM_SHARDS.value,
          num_classes=_NUM_CLASSES.value)
      print(pascal_records.format_summary(summary))


if __name__ == "__main__":
  app.run(main)
