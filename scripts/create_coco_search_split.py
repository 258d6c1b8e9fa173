r"""Holds images out of COCO train2017 for architecture-search rewards.

  python scripts/create_coco_search_split.py --coco_dir=/data/coco \
    --output_dir=gs://BUCKET/coco_search [--num_holdout=7392] [--seed=0]

The SpineNet search rewards its proxy with AP on 7,392 images held out of
COCO train2017 (SpineNet paper §5.1), so the architecture is never chosen by
the val2017 images it is finally reported on. This tool draws that holdout
(seeded, reproducible: the same seed and annotations give the same images),
writes both parts' instances JSON (instances_search_train.json,
instances_holdout.json) and TFRecords (search_train-*, holdout-*) through the
repository's converter (dataloaders/datasets/coco_records.py), and checks
that no image id or file name of either part appears in val2017's instances
JSON (error otherwise). Layout read: COCO_DIR/train2017/,
COCO_DIR/annotations/instances_{train,val}2017.json.
"""

import argparse
import json
import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataloaders.datasets import coco_records  # pylint: disable=g-import-not-at-top,wrong-import-position


def split_instances(train, num_holdout, seed):
  """(search_train, holdout) instances dicts of a train instances dict.

  Images are drawn uniformly without replacement by numpy's seeded
  generator over the image ids in sorted order; annotations follow their
  image; "categories", "info" and "licenses" are copied to both parts.

  Raises:
    ValueError: num_holdout not in [1, number of images - 1].
  """
  ids = sorted(image["id"] for image in train["images"])
  if not 1 <= num_holdout < len(ids):
    raise ValueError(f"--num_holdout={num_holdout}: expected 1..{len(ids) - 1} "
                     f"(the train annotations have {len(ids)} images).")
  rng = np.random.default_rng(seed)
  held = set(np.asarray(ids)[rng.choice(len(ids), num_holdout,
                                        replace=False)].tolist())
  parts = {}
  for name, keep in (("search_train", lambda i: i not in held),
                     ("holdout", lambda i: i in held)):
    part = {k: v for k, v in train.items()
            if k not in ("images", "annotations")}
    part["images"] = [im for im in train["images"] if keep(im["id"])]
    part["annotations"] = [a for a in train.get("annotations", [])
                           if keep(a["image_id"])]
    parts[name] = part
  return parts["search_train"], parts["holdout"]


def check_disjoint_from_val(parts, val, val_file):
  """Raises ValueError if an image id or file name of `parts` is in val."""
  val_ids = {im["id"] for im in val["images"]}
  val_names = {im["file_name"] for im in val["images"]}
  for name, part in parts.items():
    ids = sorted({im["id"] for im in part["images"]} & val_ids)
    names = sorted({im["file_name"] for im in part["images"]} & val_names)
    if ids or names:
      raise ValueError(
          f"The {name} part shares {len(ids)} image ids (e.g. {ids[:5]}) and "
          f"{len(names)} file names (e.g. {names[:5]}) with {val_file}; the "
          "search split must come from train2017 only.")


def create_split(train_file, val_file, image_dir, output_dir, num_holdout=7392,
                 seed=0, num_shards=(32, 4), num_processes=None,
                 show_progress=True):
  """Writes the split; returns a summary dict (counts and file names).

  Raises:
    ValueError: overlap with val2017 (nothing is written then), or a bad
      num_holdout.
  """
  train = coco_records.read_annotation_file(train_file)
  val = coco_records.read_annotation_file(val_file)
  search_train, holdout = split_instances(train, num_holdout, seed)
  parts = {"search_train": search_train, "holdout": holdout}
  check_disjoint_from_val(parts, val, val_file)
  tf.io.gfile.makedirs(output_dir)
  summary = {"seed": seed, "num_holdout": num_holdout}
  for (name, part), shards in zip(parts.items(), num_shards):
    json_path = os.path.join(output_dir, f"instances_{name}.json")
    with tf.io.gfile.GFile(json_path, "w") as f:
      json.dump(part, f)
    result = coco_records.convert_coco(
        image_dir, json_path, os.path.join(output_dir, name),
        num_shards=shards, num_processes=num_processes,
        show_progress=show_progress)
    summary[name] = {"instances": json_path, "num_images": len(part["images"]),
                     "num_annotations": len(part["annotations"]),
                     "num_records": result["num_images"]}
  with tf.io.gfile.GFile(os.path.join(output_dir, "split.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--coco_dir", required=True)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--num_holdout", type=int, default=7392)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--train_shards", type=int, default=256)
  parser.add_argument("--holdout_shards", type=int, default=16)
  parser.add_argument("--num_processes", type=int, default=None)
  args = parser.parse_args()
  join = os.path.join
  try:
    summary = create_split(
        join(args.coco_dir, "annotations", "instances_train2017.json"),
        join(args.coco_dir, "annotations", "instances_val2017.json"),
        join(args.coco_dir, "train2017"), args.output_dir, args.num_holdout,
        args.seed, (args.train_shards, args.holdout_shards),
        args.num_processes)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
