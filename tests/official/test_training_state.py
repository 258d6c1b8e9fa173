"""What the trainer saves when a run diverges, and when it is preempted.

Divergence (in-process, the toy task of tests/official/toy_task.py on one
CPU device, checkpoints every step, a constant learning rate far too high):
a step's loss is computed before its update, so the update that diverges is
seen one step late. Before the fix that update was saved and named "the last
good checkpoint", and every resume failed at once. Now
- the state is checked for NaN/Inf before every save (weights, optimizer
  slots, batch-norm statistics), and a non-finite one is not saved;
- a checkpoint whose state gives a non-finite loss at the very next step
  (finite weights that overflow in the forward pass) is moved aside;
and the checkpoint the error names resumes with a sane learning rate.

Preemption (subprocesses of `python -m official.train`): SIGTERM mid-run
saves the step boundary's checkpoint, exits with status 143 and the
message, and the next start resumes from it.
"""

import functools
import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from official.core import diagnostics
from official.core import distribute
from official.core import preemption
from official.core import schedules
from official.core import trainer as trainer_lib
from tests.official import toy_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOY_GIN = os.path.join(REPO, "tests", "official", "toy.gin")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


@pytest.fixture(scope="module")
def strategy():
  return distribute.get_strategy("one_device")


def _trainer(strategy, model_dir, learning_rate, **kwargs):
  """The toy task, 8 steps of batch 8, checkpoints every step, seeded."""
  kwargs.setdefault("train_epochs", 1)
  return trainer_lib.Trainer(
      toy_task.ToyTask(), str(model_dir), strategy, train_batch_size=8,
      steps_per_loop=1, checkpoint_every_steps=1, keep_checkpoints=100,
      deterministic_seed=1, learning_rate_fn=functools.partial(
          schedules.learning_rate_schedule,
          base_learning_rate=learning_rate, decay="constant"), **kwargs)


def _values(prefix):
  """Floating-point tensors of a checkpoint: name -> array."""
  reader = tf.train.load_checkpoint(prefix)
  values = {}
  for name in reader.get_variable_to_shape_map():
    value = np.asarray(reader.get_tensor(name))
    if np.issubdtype(value.dtype, np.floating):
      values[name] = value
  return values


def _assert_every_checkpoint_finite(model_dir):
  prefixes = [p[:-len(".index")] for p in glob.glob(f"{model_dir}/ckpt-*"
                                                     ".index")]
  assert prefixes
  for prefix in prefixes:
    for name, value in _values(prefix).items():
      assert np.all(np.isfinite(value)), f"{prefix}: {name}"


def _named_checkpoint(message):
  return re.search(r"last good checkpoint: (\S+)\. ", message).group(1)


def test_an_update_that_makes_the_state_non_finite_is_not_saved(
    strategy, tmp_path):
  # At lr 1e6 the update of step 4 overflows the conv kernel and its
  # momentum (steps 1-4 have finite losses); measured with seed 1.
  with pytest.raises(diagnostics.NonFiniteStateError) as error:
    _trainer(strategy, tmp_path, 1e6).train()
  message = str(error.value)
  assert message.startswith("The updates of steps 4..4 made the training "
                            "state non-finite although their losses were "
                            "finite"), message
  # The optimizer is "sgd_<n>" when others were made in this process.
  assert re.search(r"2 of 12 variables hold NaN or Inf: conv/kernel, "
                   r"sgd(_\d+)?/conv_kernel_momentum\. Step 4 was not saved",
                   message), message
  named = _named_checkpoint(message)
  assert named == f"{tmp_path}/ckpt-3"
  assert tf.train.latest_checkpoint(str(tmp_path)) == named
  assert not glob.glob(f"{tmp_path}/ckpt-4*")
  _assert_every_checkpoint_finite(tmp_path)

  # The same command resumes from it, and step 4's loss is finite again:
  # the run stops at the same check, not with a NaN loss at once (before the
  # fix, every resume did). The state of ckpt-3 (|w| up to 1e19) is finite
  # but already diverged, which no finiteness check can tell.
  with pytest.raises(diagnostics.NonFiniteStateError) as again:
    _trainer(strategy, tmp_path, 1e6).train()
  unnumbered = functools.partial(re.sub, r"sgd_\d+/", "sgd/")
  assert unnumbered(str(again.value)) == unnumbered(message)
  assert not glob.glob(f"{tmp_path}/ckpt-4*")


def test_a_checkpoint_whose_next_loss_is_not_finite_is_moved_aside(
    strategy, tmp_path):
  # At lr 1e12 the state after step 2 is finite (|w| up to 1.7e23) but the
  # forward pass of step 3 overflows: ckpt-2 is as bad as a NaN one.
  with pytest.raises(diagnostics.NonFiniteLossError) as error:
    _trainer(strategy, tmp_path, 1e12).train()
  message = str(error.value)
  aside = f"{tmp_path}/ckpt-2-diverged"
  assert message.startswith(
      "Non-finite loss in steps 3..3, first at step 3 (mean over the loop: "
      "total_loss=nan"), message
  assert (f"computed from the state saved in {tmp_path}/ckpt-2, so a resume "
          f"from it would fail again at once: it was moved to {aside}") in (
              message)
  named = _named_checkpoint(message)
  assert named == f"{tmp_path}/ckpt-1"
  assert tf.train.latest_checkpoint(str(tmp_path)) == named
  state = tf.train.get_checkpoint_state(str(tmp_path))
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      "ckpt-1"]
  assert not glob.glob(f"{tmp_path}/ckpt-2.*")
  # Kept for inspection, readable, and finite: only the forward pass fails.
  assert max(np.max(np.abs(v)) for v in _values(aside).values()) > 1e20
  _assert_every_checkpoint_finite(tmp_path)

  # The named checkpoint resumes: with the hint followed, steps 2 and 3
  # have finite losses and finite checkpoints.
  resumed = _trainer(strategy, tmp_path, 1e-3, max_train_steps=3)
  losses = resumed.train()
  assert int(resumed.global_step.numpy()) == 3
  assert all(np.isfinite(v) for v in losses.values())
  _assert_every_checkpoint_finite(tmp_path)


@pytest.mark.parametrize("which", ["one_device", "mirrored"])
def test_state_check_names_non_finite_statistics_and_slots(
    strategy, mirrored_strategy, tmp_path, which):
  chosen = strategy if which == "one_device" else mirrored_strategy
  trainer = _trainer(chosen, tmp_path, 0.1)
  trainer.build()
  check = trainer._make_state_check()  # pylint: disable=protected-access
  assert check() == ([], 12)
  bn = trainer.model.get_layer("bn")
  bn.moving_variance.assign(np.array([1.0] * 7 + [np.inf], np.float32))
  slot = [v for v in trainer.optimizer.variables
          if v.path.endswith("/logits_bias_momentum")][0]
  slot.assign(np.array([0.0, np.nan, 0.0], np.float32))
  assert check() == (["bn/moving_variance", slot.path], 12)


def _train_command(model_dir, *params):
  return [sys.executable, "-m", "official.train", f"--model_dir={model_dir}",
          "--strategy=one_device", f"--gin_file={TOY_GIN}", "--mode=train",
          "--gin_param=Trainer.deterministic_seed=7",
          "--gin_param=Trainer.steps_per_loop=1",
          # Periodic checkpoints far apart: what SIGTERM saves is new.
          "--gin_param=Trainer.checkpoint_every_steps=100", *params]


def test_sigterm_saves_the_step_boundary_and_the_next_start_resumes(
    tmp_path):
  model_dir = str(tmp_path / "run")
  slow = "--gin_param=ToyTask.input_delay_secs=0.2"
  process = subprocess.Popen(
      _train_command(model_dir, slow), cwd=REPO, env=ENV, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  # Wait for training to be under way (the progress line of step 2 of 16).
  output = []
  deadline = time.time() + 120
  for line in process.stdout:
    output.append(line)
    if "step 2/16" in line or time.time() > deadline:
      break
  process.send_signal(signal.SIGTERM)
  rest = process.communicate(timeout=60)[0]
  text = "".join(output) + rest
  assert process.returncode == preemption.EXIT_CODE, text
  lines = [line for line in text.splitlines() if line.strip()]
  match = re.fullmatch(
      r"official\.train: PreemptedError: Preempted \(SIGTERM\) after step "
      r"(\d+): saved (\S+)\. Run the same command again to resume from it "
      r"\(exit status 143\)\.", lines[-1])
  assert match, text
  step, path = int(match.group(1)), match.group(2)
  assert 2 <= step < 16, text
  assert path == os.path.join(model_dir, f"ckpt-{step}")
  assert tf.train.latest_checkpoint(model_dir) == path
  assert tf.train.load_checkpoint(path).get_tensor(
      "step/.ATTRIBUTES/VARIABLE_VALUE") == step

  result = subprocess.run(
      _train_command(model_dir, "--gin_param=Trainer.max_train_steps=" +
                     str(step + 2)), cwd=REPO, env=ENV, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
      check=False)
  assert result.returncode == 0, result.stdout
  assert f"Resumed from step {step} ({path})" in result.stdout
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{step + 2}")
