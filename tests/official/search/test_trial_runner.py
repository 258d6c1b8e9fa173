"""One trial as a subprocess: reward, failures recorded infeasible, reuse."""

import json
import sys

from official.search import trial_runner
from tests.official.search import tiny


def settings(*params, metric="top_1_accuracy"):
  return {"trainer": tiny.__file__, "gin_files": [], "gin_params": list(params),
          "metric": metric}


def test_command_is_official_train_with_the_candidate_bindings():
  argv = trial_runner.trainer_command(
      "official.train", ["configs/search/spinenet_mini_digits.gin"],
      ["Trainer.train_epochs = 1"], ["spinenet.block_specs = []"], "/m")
  assert argv[:3] == [sys.executable, "-m", "official.train"]
  assert argv[3].startswith("--gin_file=/") and argv[3].endswith(
      "configs/search/spinenet_mini_digits.gin")
  assert argv[4:] == ["--gin_param=Trainer.train_epochs = 1",
                      "--gin_param=spinenet.block_specs = []",
                      "--model_dir=/m", "--mode=train_and_eval"]


def test_reward_is_read_from_eval_metrics_and_kept(tmp_path):
  result = trial_runner.run_trial(str(tmp_path), settings(),
                                  ["fake.decisions = [2, 0, 2]"])
  assert result.status == "completed" and result.reward == 4 / 6
  assert result.metric == "top_1_accuracy" and result.attempts == 1
  assert "=== attempt 1" in (tmp_path / "log.txt").read_text()
  # Asked again (a worker killed before reporting), the result is reused.
  again = trial_runner.run_trial(str(tmp_path), settings(),
                                 ["fake.decisions = [2, 0, 2]"])
  assert again == result
  assert (tmp_path / "starts.txt").read_text().split() == ["0"]


def test_failures_are_infeasible_with_the_reason(tmp_path):
  nan_loss = trial_runner.run_trial(str(tmp_path / "a"), settings(),
                                    ["fake.decisions = [1, 0, 1]"])
  assert nan_loss.status == "infeasible" and nan_loss.reward is None
  assert nan_loss.reason.startswith("NaN/Inf loss")
  missing = trial_runner.run_trial(str(tmp_path / "b"), settings(metric="AP"),
                                   ["fake.decisions = [0, 1, 0]"])
  assert missing.status == "infeasible"
  assert "has no metric AP" in missing.reason and "top_1_accuracy" in \
      missing.reason
  nan_reward = trial_runner.run_trial(
      str(tmp_path / "c"), settings("fake.nan_reward = true"),
      ["fake.decisions = [0, 1, 0]"])
  assert nan_reward.status == "infeasible"
  assert nan_reward.reason.startswith("non-finite top_1_accuracy")
  saved = json.loads((tmp_path / "c" / "result.json").read_text())
  assert saved["status"] == "infeasible"
