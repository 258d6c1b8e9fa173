r"""Converts class-per-folder images (e.g. ILSVRC2012) into sharded TFRecords.

Train (one folder per synset):
  python scripts/create_imagenet_tf_record.py \
    --input_dir=/data/ILSVRC/Data/CLS-LOC/train \
    --output_prefix=gs://bucket/imagenet/train --num_shards=1024 \
    --label_file=/data/LOC_synset_mapping.txt

Validation (a flat folder, labels from a CSV of filename,class; Kaggle's
LOC_val_solution.csv works as it is). Pass the train labels file so both
splits use the same label order:
  python scripts/create_imagenet_tf_record.py \
    --input_dir=/data/ILSVRC/Data/CLS-LOC/val \
    --output_prefix=gs://bucket/imagenet/validation --num_shards=128 \
    --label_file=gs://bucket/imagenet/train-labels.txt \
    --labels_csv=/data/LOC_val_solution.csv

Writes <output_prefix>-SSSSS-of-NNNNN.tfrecord and <output_prefix>-labels.txt;
see dataloaders/datasets/image_folder_records.py for the record format.
"""

import os
import sys

# scripts/ is not a package: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from dataloaders.datasets import encoded_images  # pylint: disable=g-import-not-at-top,wrong-import-position
from dataloaders.datasets import image_folder_records  # pylint: disable=g-import-not-at-top,wrong-import-position

_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None,
    "Folder of class folders (input_dir/<class>/<image>), or a flat folder "
    "of images with --labels_csv.", required=True)
_OUTPUT_PREFIX = flags.DEFINE_string(
    "output_prefix", None,
    "Output path prefix: <prefix>-SSSSS-of-NNNNN.tfrecord, "
    "<prefix>-labels.txt.", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "Number of shard files.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None,
    "Worker processes (one shard per task); default min(num_shards, CPUs).")
_EXIF_ORIENTATION = flags.DEFINE_enum(
    "exif_orientation", encoded_images.EXIF_APPLY,
    list(encoded_images.EXIF_MODES),
    "Images with an EXIF orientation tag: 'apply' turns them into the "
    "displayed frame and re-encodes them; 'error' refuses them; 'ignore' "
    "keeps the stored pixels.")
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", None,
    "Refuse images of more pixels (height x width); default: no limit.",
    lower_bound=1)
_LABEL_FILE = flags.DEFINE_string(
    "label_file", None,
    "Class names in label order, one per line (first token of each line, so "
    "LOC_synset_mapping.txt works); default: class folders sorted by name.")
_LABELS_CSV = flags.DEFINE_string(
    "labels_csv", None,
    "CSV of 'filename,class' for a flat folder such as ILSVRC validation "
    "(the class is the first token of the second column; a header row is "
    "skipped).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  image_labels = None
  if _LABELS_CSV.value:
    image_labels = image_folder_records.read_labels_csv(_LABELS_CSV.value)
  result = image_folder_records.convert_image_folders(
      _INPUT_DIR.value, _OUTPUT_PREFIX.value, num_shards=_NUM_SHARDS.value,
      num_processes=_NUM_PROCESSES.value, label_file=_LABEL_FILE.value,
      image_labels=image_labels, exif_orientation=_EXIF_ORIENTATION.value,
      max_image_pixels=_MAX_IMAGE_PIXELS.value)
  print(f"Wrote {result['num_examples']} examples of "
        f"{result['num_classes']} classes to {len(result['files'])} shards "
        f"'{_OUTPUT_PREFIX.value}-*'; class names in "
        f"'{result['labels_file']}'.")


if __name__ == "__main__":
  app.run(main)
