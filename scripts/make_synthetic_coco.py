r"""Writes a small synthetic detection dataset of shapes in COCO format.

Images and COCO JSON (output_dir/{train,val}/*.jpg,
output_dir/annotations/instances_{train,val}.json):
  python scripts/make_synthetic_coco.py --output_dir=/tmp/shapes

Also as TFRecords with instance masks
(output_dir/tfrecords/{train,val}-SSSSS-of-NNNNN.tfrecord):
  python scripts/make_synthetic_coco.py --output_dir=/tmp/shapes \
    --records --include_masks

Image sizes: --image_size=160,120 (height,width) for one size, or
--image_size=120-256,120-256 for sizes drawn per image (the default). See
dataloaders/datasets/synthetic_coco.py for the content.
"""

import json
import os
import sys

# scripts/ is not a package: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from dataloaders.datasets import coco_records  # pylint: disable=g-import-not-at-top,wrong-import-position
from dataloaders.datasets import synthetic_coco  # pylint: disable=g-import-not-at-top,wrong-import-position

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Destination folder.",
                                  required=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 500, "Train images.")
_NUM_VAL = flags.DEFINE_integer("num_val", 100, "Validation images.")
_IMAGE_SIZE = flags.DEFINE_string(
    "image_size", "120-256,120-256",
    "HEIGHT,WIDTH in pixels, each a number or a range MIN-MAX.")
_NUM_CATEGORIES = flags.DEFINE_integer(
    "num_categories", 3,
    f"Categories, 1..{synthetic_coco.MAX_CATEGORIES} (ids 1, 3, 7, ...).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of everything random.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace an existing dataset in output_dir.")
_RECORDS = flags.DEFINE_bool(
    "records", False, "Also convert both splits to TFRecords under "
    "output_dir/tfrecords.")
_INCLUDE_MASKS = flags.DEFINE_bool(
    "include_masks", False, "With --records: write instance masks too.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4,
                                   "With --records: shards per split.")


def _parse_image_size(text):
  """'160,120' -> (160, 120); '120-256,96-200' -> ((120, 256), (96, 200))."""
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
  result = synthetic_coco.make_synthetic_coco(
      _OUTPUT_DIR.value, num_train=_NUM_TRAIN.value, num_val=_NUM_VAL.value,
      image_size=_parse_image_size(_IMAGE_SIZE.value),
      num_categories=_NUM_CATEGORIES.value, seed=_SEED.value,
      overwrite=_OVERWRITE.value)
  print(json.dumps(result, indent=2))
  if _RECORDS.value:
    for split, info in result.items():
      prefix = os.path.join(_OUTPUT_DIR.value, "tfrecords", split)
      # Shards of a dataset just replaced (maybe another shard count).
      for stale in tf.io.gfile.glob(f"{prefix}-*-of-*.tfrecord"):
        tf.io.gfile.remove(stale)
      summary = coco_records.convert_coco(
          info["image_dir"], info["annotation_file"], prefix,
          num_shards=_NUM_SHARDS.value, include_masks=_INCLUDE_MASKS.value)
      print(coco_records.format_summary(summary))


if __name__ == "__main__":
  app.run(main)
