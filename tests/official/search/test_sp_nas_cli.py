"""python -m official.search --space=sp_nas: flag errors, and a 2-candidate
serial + 2-candidate parallel search on the synthetic COCO set through the
engine and official.train (plumbing), whose found network then trains."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vizier")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PROXY = "--gin_file=configs/search/sp_nas_synthetic_coco.gin"


def run(module, *args, timeout=300):
  # A bound on a hang, not a speed check: importing TensorFlow alone can take
  # a minute on a loaded 2-core machine.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--controller=random"], "runs with --controller=sp_nas"),
    (["--controller=sp_nas", "--seed_architectures=resnet18"],
     "start_backbone=NAME"),
    (["--controller=sp_nas", "--search_options=nstuck=2"],
     "Unknown sp_nas search option 'nstuck'"),
    (["--controller=sp_nas", "--search_options=start_backbone=resnet7"],
     "start_backbone='resnet7' is not known"),
    (["--controller=sp_nas", "--search_options=n_stuck"], "is not key=value"),
    (["--controller=sp_nas", "--pretrain_gin_file=nope.gin"],
     "--pretrain_gin_file=nope.gin: no such file"),
])
def test_bad_flags_fail_before_anything_starts(tmp_path, args, message):
  result = run("official.search", "--space=sp_nas", *args,
               f"--search_dir={tmp_path}", "--num_trials=2", PROXY)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert not os.listdir(tmp_path)


def test_pretrain_proxy_only_with_sp_nas(tmp_path):
  result = run("official.search", "--space=mini", "--controller=evolution",
               f"--search_dir={tmp_path}", "--num_trials=2",
               "--gin_file=configs/search/spinenet_mini_digits.gin",
               "--pretrain_gin_file=configs/search/sp_nas_pretrain_digits.gin")
  assert result.returncode != 0
  assert "used by the sp_nas controller only" in result.stderr


def test_serial_then_parallel_search_on_synthetic_coco(tmp_path):
  search_dir = tmp_path / "search"
  data = f"--gin_param=synthetic_coco_records.data_dir='{tmp_path / 'coco'}'"
  result = run(
      "official.search", "--space=sp_nas", "--controller=sp_nas",
      f"--search_dir={search_dir}", "--num_workers=1", "--num_trials=8",
      PROXY, data,
      "--search_options=start_backbone=resnet18,n_stuck=2,n_stuck_parallel=2",
      timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "Search space 'sp_nas'" in result.stdout
  records = [json.loads(l) for l in
             (search_dir / "trials.jsonl").read_text().splitlines()]
  roles = [r["architecture"]["role"] for r in records]
  # Two steps of training score AP 0 everywhere: no candidate improves, so
  # each phase ends after n_stuck = 2 candidates and the controller stops.
  assert [r["reward"] for r in records] == [0.0] * len(records)
  assert roles == ["start", "serial", "serial", "parallel_base", "parallel",
                   "parallel"], roles
  assert "The controller finished its search after 6 trials" in result.stdout
  by_id = {r["trial_id"]: r for r in records}
  for r in records[1:]:
    arch, run_info = r["architecture"], r["run"]
    trial_dir = search_dir / "trials" / str(r["trial_id"])
    report = json.loads((trial_dir / "inherited_weights.json").read_text())
    parent_dir = str(search_dir / "trials" / str(arch["parent_trial"]))
    assert report["sources"] == [os.path.join(parent_dir,
                                              "inheritable_weights.npz")]
    assert report["inherited"] and not report["shape_mismatch"]
    if arch["role"] == "serial":
      assert len(arch["modifications"]) == 3
      new_blocks = {f"block{i}" for i in arch["block_ids"]} - {
          f"block{i}" for i in by_id[arch["parent_trial"]]["architecture"][
              "block_ids"]}
      assert {k.split("/")[1] for k in report["initialised"]
              if k.startswith("spnet/")} == new_blocks
    if arch["role"] == "parallel":
      assert run_info["inherit_from_trials"] == [4]
      assert report["aliased"], "sub-networks inherit their stage's weights"
    operative = (trial_dir / "operative_config.gin").read_text()
    assert f"spnet.serial = '{arch['serial']}'" in operative
  best = (search_dir / "best_spnet.gin").read_text()
  assert "spnet.serial = 'BB(11,d1,d1,d1)'" in best  # Ties: the earliest.
  assert (search_dir / "rewards.png").exists()
  # The found network trains with the training command.
  result = run("official.train", PROXY, data,
               f"--gin_file={search_dir / 'best_spnet.gin'}",
               f"--model_dir={tmp_path / 'retrain'}", "--mode=train",
               timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "retrain" / "checkpoint").exists()
