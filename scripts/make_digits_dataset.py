r"""Writes scikit-learn's handwritten digits as PNG folders (and TFRecords).

Folders only (output_dir/{train,validation}/<digit>/NNNN.png):
  python scripts/make_digits_dataset.py --output_dir=/tmp/digits

Folders and TFRecords, as the classification task's prepare_data builds them
(output_dir/digits_png/..., output_dir/digits-{train,validation}-*.tfrecord;
nothing is rewritten when they already exist):
  python scripts/make_digits_dataset.py --output_dir=/tmp/digits --records
"""

import json
import os
import sys

# scripts/ is not a package: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from dataloaders.datasets import digits  # pylint: disable=g-import-not-at-top,wrong-import-position

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Destination folder.",
                                  required=True)
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.2, "Share of each digit held out for validation.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the stratified split.")
_RECORDS = flags.DEFINE_bool(
    "records", False, "Also convert to TFRecords (idempotent; see the module "
    "doc for the layout).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4,
                                   "Shards per split (with --records).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace existing train/validation folders (without "
    "--records).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _RECORDS.value:
    result = digits.ensure_digits_records(
        _OUTPUT_DIR.value, num_shards=_NUM_SHARDS.value,
        validation_fraction=_VALIDATION_FRACTION.value, seed=_SEED.value)
    print(json.dumps(result, indent=2))
  else:
    counts = digits.write_digits_folders(
        _OUTPUT_DIR.value, validation_fraction=_VALIDATION_FRACTION.value,
        seed=_SEED.value, overwrite=_OVERWRITE.value)
    print(f"Wrote {counts['train']} train and {counts['validation']} "
          f"validation images under '{_OUTPUT_DIR.value}'.")


if __name__ == "__main__":
  app.run(main)
