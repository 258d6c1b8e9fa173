"""Held-out search splits: the digits carving and the COCO train2017 split."""

import numpy as np
import pytest

from dataloaders.datasets import digits


def test_digits_search_split_is_disjoint_and_leaves_validation_untouched():
  parts = digits.search_split_indices()
  train, holdout, validation = (set(parts[k].tolist()) for k in
                                ("train", "holdout", "validation"))
  assert not train & holdout and not train & validation
  assert not holdout & validation
  assert train | holdout | validation == set(range(1797))
  assert (len(train), len(holdout), len(validation)) == (1077, 360, 360)
  # The validation part is exactly the standard split's validation images.
  standard = digits.search_split_indices(holdout_fraction=0.5)
  np.testing.assert_array_equal(standard["validation"], parts["validation"])
  # Seeded: the same seed gives the same carving, another seed another one.
  np.testing.assert_array_equal(digits.search_split_indices()["holdout"],
                                parts["holdout"])
  assert set(digits.search_split_indices(search_seed=1)["holdout"].tolist()) \
      != holdout
  with pytest.raises(ValueError, match="holdout_fraction must be in"):
    digits.search_split_indices(holdout_fraction=1.0)


def test_digits_search_records_hold_the_carved_images(tmp_path):
  result = digits.ensure_digits_search_records(str(tmp_path / "d"))
  assert (result["num_train"], result["num_eval"]) == (1077, 360)
  assert "search_train" in result["train_pattern"]
  assert "holdout" in result["eval_pattern"]
  # Built once: a second call reads the manifest.
  assert digits.ensure_digits_search_records(str(tmp_path / "d")) == result
  with pytest.raises(FileExistsError, match="no digits search split"):
    digits.ensure_digits_search_records(str(tmp_path / "d"),
                                        holdout_fraction=0.3)


def _load_split_tool():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts",
                      "create_coco_search_split.py")
  spec = importlib.util.spec_from_file_location("coco_search_split", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_coco_search_split_on_the_synthetic_set(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from dataloaders.datasets import synthetic_coco  # pylint: disable=g-import-not-at-top
  tool = _load_split_tool()
  data = synthetic_coco.make_synthetic_coco(str(tmp_path / "coco"),
                                            num_train=20, num_val=5)
  args = (data["train"]["annotation_file"], data["val"]["annotation_file"],
          data["train"]["image_dir"])
  summary = tool.create_split(*args, str(tmp_path / "out"), num_holdout=6,
                              seed=1, num_shards=(2, 1), num_processes=1,
                              show_progress=False)
  assert summary["holdout"]["num_records"] == 6
  assert summary["search_train"]["num_records"] == 14
  parts = {n: json.load(open(tmp_path / "out" / f"instances_{n}.json"))
           for n in ("search_train", "holdout")}
  ids = {n: {im["id"] for im in p["images"]} for n, p in parts.items()}
  assert not ids["holdout"] & ids["search_train"]
  train = json.load(open(data["train"]["annotation_file"]))
  assert ids["holdout"] | ids["search_train"] == {im["id"] for im in
                                                   train["images"]}
  for n, p in parts.items():
    assert all(a["image_id"] in ids[n] for a in p["annotations"])
  # Seeded: the same seed draws the same images.
  again, _ = tool.split_instances(train, 6, seed=1)
  assert {im["id"] for im in again["images"]} == ids["search_train"]
  # A train image that is also in val2017 is an error, and nothing is written.
  val = json.load(open(data["val"]["annotation_file"]))
  val["images"].append(dict(train["images"][0]))
  bad_val = tmp_path / "bad_val.json"
  bad_val.write_text(json.dumps(val))
  with pytest.raises(ValueError, match="shares 1 image ids"):
    tool.create_split(args[0], str(bad_val), args[2], str(tmp_path / "out2"),
                      num_holdout=6, num_processes=1, show_progress=False)
  assert not (tmp_path / "out2").exists()
