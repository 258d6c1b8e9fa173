"""python -m official.search: flag errors, and a real detection search."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vizier")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def run_search(*args, timeout=300):
  # A bound on a hang, not a speed check: importing TensorFlow alone can take
  # a minute on a loaded 2-core machine.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  return subprocess.run([sys.executable, "-m", "official.search", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_unknown_space_and_controller_list_the_valid_ones(tmp_path):
  result = run_search("--space=nope", "--controller=random",
                      f"--search_dir={tmp_path}", "--num_trials=2")
  assert result.returncode != 0
  assert "Unknown search space 'nope'" in result.stderr
  assert "'mini'" in result.stderr
  result = run_search("--space=mini", "--controller=nope",
                      f"--search_dir={tmp_path}", "--num_trials=2")
  assert result.returncode != 0
  assert "evolution" in result.stderr and "nope" in result.stderr
  result = run_search("--space=mini", "--controller=random",
                      f"--search_dir={tmp_path}", "--num_trials=2",
                      "--seed_architectures=spinenet49,nope")
  assert result.returncode != 0 and "['nope'] not known" in result.stderr
  assert not os.listdir(tmp_path)  # Nothing started, nothing written.


def test_a_search_dir_of_another_study_is_refused(tmp_path):
  (tmp_path / "study.json").write_text(json.dumps(
      {"space": "R0-SP53", "controller": "ppo", "seed": 0}))
  result = run_search("--space=mini", "--controller=random",
                      f"--search_dir={tmp_path}", "--num_trials=2")
  assert result.returncode != 0
  assert ("space 'R0-SP53' with controller 'ppo'" in result.stderr and
          "space 'mini' with controller 'random'" in result.stderr)
  assert sorted(os.listdir(tmp_path)) == ["study.json"]


def test_detection_search_on_synthetic_coco_through_official_train(tmp_path):
  """Plumbing: 2 trials (SpineNet-49 seeded, one suggestion) train RetinaNet
  through python -m official.train and are rewarded with their AP."""
  search_dir = tmp_path / "search"
  result = run_search(
      "--space=mini", "--controller=random", f"--search_dir={search_dir}",
      "--num_workers=1", "--num_trials=2", "--metric=AP",
      "--gin_file=configs/search/detection_plumbing.gin",
      f"--gin_param=synthetic_coco_records.data_dir='{tmp_path / 'coco'}'",
      "--seed_architectures=spinenet49", timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "Search space 'mini'" in result.stdout
  assert "Estimated cost: 2 trials x 60 s" in result.stdout
  records = [json.loads(l) for l in
             (search_dir / "trials.jsonl").read_text().splitlines()]
  assert [r["trial_id"] for r in records] == [1, 2]
  assert records[0]["seed_name"] == "spinenet49"
  for r in records:
    assert r["status"] == "completed", r
    assert r["metric"] == "AP" and 0.0 <= r["reward"] <= 1.0
    metrics = json.loads((search_dir / "trials" / str(r["trial_id"]) /
                          "eval_metrics.json").read_text())
    assert metrics["AP"] == r["reward"] and metrics["step"] == 2
    # The trial trained the candidate's block specs, not the default ones.
    operative = (search_dir / "trials" / str(r["trial_id"]) /
                 "operative_config.gin").read_text()
    assert "spinenet.block_specs" in operative
  assert "spinenet.block_specs = [" in (
      search_dir / "best_block_specs.gin").read_text()
  assert (search_dir / "rewards.png").exists()
  assert "Search finished: 2 trials" in result.stdout


def test_a_misspelt_gin_param_is_refused_before_the_study_exists(tmp_path):
  """Otherwise every trial fails the same way and the typo is stored with
  the study (a re-run with the fix would be refused as another study)."""
  result = run_search(
      "--space=mini", "--controller=random", f"--search_dir={tmp_path}",
      "--num_trials=2", "--gin_file=configs/search/spinenet_mini_digits.gin",
      "--gin_param=Trainer.train_epoch = 1")
  assert result.returncode != 0
  assert "does not parse" in result.stderr
  assert "train_epoch" in result.stderr
  assert not os.listdir(tmp_path)
