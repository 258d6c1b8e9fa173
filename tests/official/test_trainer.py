"""Trainer behaviour in-process on one CPU device: cadence, resume, modes."""

import functools
import json
import logging

import gin
import keras
import pytest
import tensorflow as tf

from official.core import distribute
from official.core import schedules
from official.core import trainer as trainer_lib
from tests.official import toy_task


@pytest.fixture(scope="module")
def strategy():
  return distribute.get_strategy("one_device")


@pytest.fixture(autouse=True)
def _float32_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


def _trainer(strategy, model_dir, task=None, **kwargs):
  kwargs.setdefault("train_epochs", 1)
  kwargs.setdefault("train_batch_size", 8)
  kwargs.setdefault("learning_rate_fn", functools.partial(
      schedules.learning_rate_schedule, base_learning_rate=0.1,
      decay="constant"))
  return trainer_lib.Trainer(task or toy_task.ToyTask(), str(model_dir),
                             strategy, **kwargs)


def test_steps_come_from_epochs_and_batch_size(strategy, tmp_path):
  t = _trainer(strategy, tmp_path, toy_task.ToyTask(num_train_examples=60),
               train_epochs=2.5)
  assert t.steps_per_epoch == 8  # ceil(60 / 8).
  assert t.total_steps == 20
  capped = _trainer(strategy, tmp_path, train_epochs=2.5, max_train_steps=3)
  assert (capped.total_steps, capped.schedule_steps) == (3, 20)


def test_loops_end_on_checkpoint_and_eval_boundaries(strategy, tmp_path):
  t = _trainer(strategy, tmp_path, train_epochs=2, steps_per_loop=5,
               checkpoint_every_steps=4, eval_every_epochs=0.75)
  # 16 steps; checkpoints at 4, 8, 12, 16; evaluations at 6, 12.
  steps, step = [], 0
  while step < t.total_steps:
    # pylint: disable-next=protected-access
    step += t._steps_to_next_boundary(step, evaluate_every=True)
    steps.append(step)
  assert steps == [4, 6, 8, 12, 16]


def test_train_and_eval_evaluates_every_epoch_and_at_the_end(strategy,
                                                           tmp_path):
  t = _trainer(strategy, tmp_path, train_epochs=2, steps_per_loop=3,
               eval_every_epochs=1)
  evaluated = []
  evaluate = t.evaluate
  t.evaluate = lambda: evaluated.append(int(t.global_step.numpy())) or (
      evaluate())
  losses = t.train(evaluate_every=True)
  t.evaluate()
  assert evaluated == [8, 16]
  assert set(losses) == {"total_loss", "cross_entropy"}
  metrics = json.loads(tf.io.gfile.GFile(
      f"{tmp_path}/eval_metrics.json").read())
  assert metrics["step"] == 16 and metrics["num_examples"] == 20
  assert sorted(tf.io.gfile.listdir(f"{tmp_path}/eval"))  # Summaries.


def test_finished_run_is_not_retrained(strategy, tmp_path):
  first = _trainer(strategy, tmp_path, max_train_steps=2)
  assert first.train()
  again = _trainer(strategy, tmp_path, max_train_steps=2)
  assert again.train() == {}
  assert int(again.global_step.numpy()) == 2


def test_continuous_eval_stops_after_the_final_step(strategy, tmp_path):
  _trainer(strategy, tmp_path, max_train_steps=2).train()
  result = _trainer(strategy, tmp_path,
                    max_train_steps=2).continuous_evaluate(timeout=30)
  assert result["step"] == 2
  # Nothing new to evaluate: the timeout ends the wait.
  empty = tmp_path / "empty"
  assert _trainer(strategy, empty).continuous_evaluate(timeout=1) is None


def test_mixed_float16_wraps_the_optimizer_in_loss_scaling(strategy,
                                                           tmp_path):
  t = _trainer(strategy, tmp_path, max_train_steps=2, steps_per_loop=2,
               precision="mixed_float16")
  losses = t.train()
  assert isinstance(t.optimizer, keras.optimizers.LossScaleOptimizer)
  assert t.model.get_layer("conv").compute_dtype == "float16"
  assert t.model.get_layer("conv").kernel.dtype == "float32"
  assert all(tf.math.is_finite(v) for v in losses.values())


def test_configuration_errors_name_the_setting(strategy, tmp_path):
  with pytest.raises(ValueError, match="num_train_examples"):
    _trainer(strategy, tmp_path, toy_task.ToyTask(num_train_examples=0))
  with pytest.raises(ValueError, match="train_epochs"):
    _trainer(strategy, tmp_path, train_epochs=0)
  with pytest.raises(ValueError, match="steps_per_loop"):
    _trainer(strategy, tmp_path, steps_per_loop=0)
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(trainer_lib.UnwritableModelDirError,
                     match=f"model_dir '{blocker}/run' is not writable"):
    _trainer(strategy, blocker / "run")
  with pytest.raises(ValueError, match="Unknown mode 'tran'"):
    trainer_lib.run_experiment(toy_task.ToyTask(), "tran", str(tmp_path),
                               strategy)


def _run_with_expectation(strategy, model_dir, declaration, mode):
  """run_experiment on the toy task with `declaration` (gin text) bound."""
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config(
        "Trainer.train_epochs = 0.25\n"  # 2 steps of 8 of the 64 examples.
        "Trainer.train_batch_size = 8\n"
        "Trainer.steps_per_loop = 2\n"
        "learning_rate_schedule.base_learning_rate = 0.1\n" + declaration)
  try:
    return trainer_lib.run_experiment(toy_task.ToyTask(), mode,
                                      str(model_dir), strategy)
  finally:
    gin.clear_config()


def test_final_evaluation_says_whether_the_expected_result_held(
    strategy, tmp_path, caplog):
  # The toy evaluator counts the valid examples: exactly the 20 eval
  # examples (padding excluded), so this declaration must hold...
  held = ("expected_result.metric = 'num_examples'\n"
          "expected_result.value = 20.0\n"
          "expected_result.comparison = 'within'\n"
          "expected_result.source = 'ToyTask(num_eval_examples=20)'\n")
  with caplog.at_level(logging.INFO, logger="absl"):
    result = _run_with_expectation(strategy, tmp_path / "held", held,
                                   "train_and_eval")
  line = ("Expected result held: num_examples = 20 within [20, 20] "
          "(ToyTask(num_eval_examples=20)).")
  assert line in caplog.text
  verdict = result["expected_result"]
  assert verdict["held"] is True and verdict["value"] == 20.0
  with open(tmp_path / "held" / "eval_metrics.json") as f:
    written = json.load(f)
  assert written["expected_result"] == verdict
  assert written["num_examples"] == 20.0 and written["step"] == 2

  # ...and accuracy cannot exceed 1: this one fails, and says so without
  # raising; an eval-only rerun checks the same declaration.
  caplog.clear()
  not_held = ("expected_result.metric = 'accuracy'\n"
              "expected_result.value = 1.5\n"
              "expected_result.tolerance = 0.25\n"
              "expected_result.source = 'impossible'\n")
  with caplog.at_level(logging.INFO, logger="absl"):
    result = _run_with_expectation(strategy, tmp_path / "held", not_held,
                                   "eval")
  verdict = result["expected_result"]
  assert verdict["held"] is False and verdict["target"] == 1.5
  assert (f"Expected result NOT held: accuracy = {verdict['value']:.4g}, "
          "expected >= 1.25 (1.5 - 0.25) (impossible).") in caplog.text
  with open(tmp_path / "held" / "eval_metrics.json") as f:
    assert json.load(f)["expected_result"]["held"] is False


def test_a_misnamed_metric_or_comparison_is_reported(strategy, tmp_path,
                                                     caplog):
  with pytest.raises(ValueError, match="expected_result.comparison='>'"):
    _run_with_expectation(strategy, tmp_path, "expected_result.metric = 'x'\n"
                          "expected_result.value = 1.0\n"
                          "expected_result.comparison = '>'\n"
                          "expected_result.source = 's'\n", "train")
  with caplog.at_level(logging.INFO, logger="absl"):
    result = _run_with_expectation(
        strategy, tmp_path, "expected_result.metric = 'AP'\n"
        "expected_result.value = 0.5\nexpected_result.source = 's'\n"
        "Trainer.max_train_steps = 1\n", "train_and_eval")
  verdict = result["expected_result"]
  assert verdict["held"] is False and verdict["value"] is None
  assert verdict["shortened"] and verdict["schedule_steps"] == 2
  assert ("Expected result NOT held: AP was not reported (reported: "
          "accuracy, cross_entropy, num_examples, total_loss), expected "
          ">= 0.5 (s); evaluated at step 1 of the 2-step schedule, so the "
          "run was shortened.") in caplog.text
