r"""Converts COCO detection annotations and images into sharded TFRecords.

The flags are those of the TF Model Garden's create_coco_tf_record.py, and
so are the record keys: records from either project work in the other.

COCO 2017 train, with instance masks (for Mask R-CNN):
  python scripts/create_coco_tf_record.py \
    --image_dir=/data/coco/train2017 \
    --object_annotations_file=/data/coco/annotations/instances_train2017.json \
    --output_file_prefix=gs://bucket/coco/train --num_shards=256 \
    --include_masks

COCO 2017 val (boxes only, for RetinaNet):
  python scripts/create_coco_tf_record.py \
    --image_dir=/data/coco/val2017 \
    --object_annotations_file=/data/coco/annotations/instances_val2017.json \
    --output_file_prefix=gs://bucket/coco/val --num_shards=32

Writes <output_file_prefix>-SSSSS-of-NNNNN.tfrecord and prints a summary
(images, objects, skipped annotations and why); see
dataloaders/datasets/coco_records.py for the record format.
"""

import json
import os
import sys

# scripts/ is not a package: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from dataloaders.datasets import coco_records  # pylint: disable=g-import-not-at-top,wrong-import-position
from dataloaders.datasets import encoded_images  # pylint: disable=g-import-not-at-top,wrong-import-position

_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None, "Folder of the images (e.g. .../train2017); each image "
    "is read from image_dir/<file_name>.", required=True)
_OBJECT_ANNOTATIONS_FILE = flags.DEFINE_string(
    "object_annotations_file", None,
    "COCO instances JSON (e.g. .../annotations/instances_train2017.json).",
    required=True)
_OUTPUT_FILE_PREFIX = flags.DEFINE_string(
    "output_file_prefix", None,
    "Output path prefix: <prefix>-SSSSS-of-NNNNN.tfrecord.", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 32, "Number of shard files.")
_INCLUDE_MASKS = flags.DEFINE_bool(
    "include_masks", False,
    "Also write image/object/mask: one PNG instance mask per object.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "Worker processes (one shard per task); default min(num_shards, CPUs).")
_EXIF_ORIENTATION = flags.DEFINE_enum(
    "exif_orientation", encoded_images.EXIF_APPLY,
    list(encoded_images.EXIF_MODES),
    "Images with an EXIF orientation tag: 'apply' turns them into the "
    "displayed frame, the frame most annotation tools draw in, and "
    "re-encodes them; 'error' refuses them; 'ignore' keeps the stored "
    "pixels (annotations drawn on those).")
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", None,
    "Refuse images of more pixels (height x width); default: no limit.",
    lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  summary = coco_records.convert_coco(
      _IMAGE_DIR.value, _OBJECT_ANNOTATIONS_FILE.value,
      _OUTPUT_FILE_PREFIX.value, num_shards=_NUM_SHARDS.value,
      include_masks=_INCLUDE_MASKS.value, num_processes=_NUM_PROCESSES.value,
      exif_orientation=_EXIF_ORIENTATION.value,
      max_image_pixels=_MAX_IMAGE_PIXELS.value)
  print(coco_records.format_summary(summary))
  print(json.dumps({k: v for k, v in summary.items() if k != "files"},
                   indent=2))


if __name__ == "__main__":
  app.run(main)
