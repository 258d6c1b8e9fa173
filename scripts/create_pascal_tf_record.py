r"""Converts PASCAL VOC 2012 semantic segmentation into sharded TFRecords.

VOC 2012 val (1,449 images):
  python scripts/create_pascal_tf_record.py \
    --voc_dir=/data/VOCdevkit/VOC2012 --split=val \
    --output_file_prefix=gs://bucket/pascal/val --num_shards=8

The augmented train set (10,582 images: VOC train + SBD - VOC val), with
SBD's label maps from SegmentationClassAug/ (PNG) or cls/ (.mat) in --sbd_dir:
  python scripts/create_pascal_tf_record.py \
    --voc_dir=/data/VOCdevkit/VOC2012 --split=train \
    --sbd_dir=/data/benchmark_RELEASE/dataset \
    --output_file_prefix=gs://bucket/pascal/train_aug --num_shards=64

Writes <output_file_prefix>-SSSSS-of-NNNNN.tfrecord and prints a summary; see
dataloaders/datasets/pascal_records.py for the layouts and the record keys.
"""

import json
import os
import sys

# scripts/ is not a package: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from dataloaders.datasets import encoded_images  # pylint: disable=g-import-not-at-top,wrong-import-position
from dataloaders.datasets import pascal_records  # pylint: disable=g-import-not-at-top,wrong-import-position

_VOC_DIR = flags.DEFINE_string(
    "voc_dir", None, "The VOC2012 folder (JPEGImages/, SegmentationClass/, "
    "ImageSets/Segmentation/).", required=True)
_SPLIT = flags.DEFINE_string(
    "split", "train", "Image set: ImageSets/Segmentation/<split>.txt (train, "
    "val, trainval).")
_SBD_DIR = flags.DEFINE_string(
    "sbd_dir", None, "Optional SBD folder holding SegmentationClassAug/ (PNG, "
    "preferred) or cls/ (.mat); with --split=train makes the augmented set.")
_OUTPUT_FILE_PREFIX = flags.DEFINE_string(
    "output_file_prefix", None,
    "Output path prefix: <prefix>-SSSSS-of-NNNNN.tfrecord.", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "Number of shard files.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", len(pascal_records.VOC_CLASSES),
    "Class ids must lie in [0, num_classes) or be 255.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "Worker processes (one shard per task); default min(num_shards, CPUs).")
_EXIF_ORIENTATION = flags.DEFINE_enum(
    "exif_orientation", encoded_images.EXIF_APPLY,
    list(encoded_images.EXIF_MODES),
    "Images with an EXIF orientation tag: 'apply' turns them into the "
    "displayed frame (label maps drawn on the displayed image) and "
    "re-encodes them; 'error' refuses them; 'ignore' keeps the stored "
    "pixels (label maps drawn on those).")
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", None,
    "Refuse images of more pixels (height x width); default: no limit.",
    lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  summary = pascal_records.convert_pascal(
      _VOC_DIR.value, _SPLIT.value, _OUTPUT_FILE_PREFIX.value,
      sbd_dir=_SBD_DIR.value, num_shards=_NUM_SHARDS.value,
      num_classes=_NUM_CLASSES.value, num_processes=_NUM_PROCESSES.value,
      exif_orientation=_EXIF_ORIENTATION.value,
      max_image_pixels=_MAX_IMAGE_PIXELS.value)
  print(pascal_records.format_summary(summary))
  print(json.dumps({k: v for k, v in summary.items() if k != "files"},
                   indent=2))


if __name__ == "__main__":
  app.run(main)
