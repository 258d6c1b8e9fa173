"""A run SIGKILLed 8 times at random moments ends where an uninterrupted one
does, bit for bit, and never leaves an unreadable checkpoint.

The cheapest run that exercises it: the toy task (tests/official/toy.gin) in
deterministic mode (Trainer.deterministic_seed: op determinism, seeded
shuffles, the input pipeline replayed to the restored step on resume), one
step per host loop and a checkpoint after every step, so that most of a
run's time is spent saving and the kills land in saves as well as in steps.
Each kill comes a random 0-0.25 s (seeded, printed on failure) after the run
wrote a checkpoint past the one it resumed from, so every restart makes
progress. After each kill every checkpoint in the directory (every
ckpt-N.index) is read whole, and the index's latest checkpoint must be among
them. (Measured in one such series: 4 of the 8 kills landed inside a
save, leaving its temporary files; before Checkpointer.save renamed the
.index into place last, such a kill could leave a truncated ckpt-N.index.)

It starts 10 processes (the reference, 8 killed runs, the last one): about
2 minutes on a 2-core CPU, mostly TensorFlow's start-up.
"""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from official.core import checkpointing
from tests.official import toy_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOY_GIN = os.path.join(REPO, "tests", "official", "toy.gin")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
KILLS = 8
TOTAL_STEPS = 160  # Toy epochs of 8 steps.
TIMEOUT = 180


def _command(model_dir):
  return [sys.executable, "-m", "official.train", f"--model_dir={model_dir}",
          "--strategy=one_device", f"--gin_file={TOY_GIN}", "--mode=train",
          "--gin_param=Trainer.deterministic_seed=11",
          f"--gin_param=Trainer.train_epochs={TOTAL_STEPS // 8}",
          "--gin_param=Trainer.steps_per_loop=1",
          "--gin_param=Trainer.checkpoint_every_steps=1",
          "--gin_param=Trainer.keep_checkpoints=3",
          "--gin_param=Trainer.log_every_steps=1000"]


def _latest_step(model_dir):
  latest = tf.train.latest_checkpoint(model_dir)
  return int(latest.rsplit("-", 1)[1]) if latest else 0


def _read_all(prefix):
  """Every tensor of a checkpoint (save_counter aside): name -> array."""
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith(("save_counter", "_CHECKPOINTABLE"))}


def _check_readable(model_dir, context):
  prefixes = sorted(p[:-len(".index")]
                    for p in glob.glob(f"{model_dir}/ckpt-*.index"))
  for prefix in prefixes:
    try:
      _read_all(prefix)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{prefix} is unreadable ({type(e).__name__}: {e}); "
                  f"{context}")
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is not None:
    assert latest in prefixes, f"index names {latest}, files {prefixes}; " + (
        context)


def test_random_kills_resume_to_the_uninterrupted_weights(tmp_path):
  reference = str(tmp_path / "reference")
  result = subprocess.run(_command(reference), cwd=REPO, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=TIMEOUT, check=False)
  assert result.returncode == 0, result.stdout
  assert _latest_step(reference) == TOTAL_STEPS

  killed = str(tmp_path / "killed")
  rng = random.Random(0)
  history = []  # (resumed from, delay, step when killed) per kill.
  for kill in range(KILLS):
    start_step = _latest_step(killed)
    process = subprocess.Popen(_command(killed), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while (_latest_step(killed) <= start_step and process.poll() is None and
           time.time() < deadline):
      time.sleep(0.01)
    delay = rng.uniform(0.0, 0.25)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    history.append((start_step, round(delay, 3), _latest_step(killed)))
    context = f"kill {kill + 1}; (resumed from, delay s, latest): {history}"
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended before it was killed; {context}")
    _check_readable(killed, context)
    assert _latest_step(killed) > start_step, context

  result = subprocess.run(_command(killed), cwd=REPO, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=TIMEOUT, check=False)
  assert result.returncode == 0, result.stdout
  assert f"Resumed from step {history[-1][2]}" in result.stdout
  assert _latest_step(killed) == TOTAL_STEPS
  expected = _read_all(f"{reference}/ckpt-{TOTAL_STEPS}")
  found = _read_all(f"{killed}/ckpt-{TOTAL_STEPS}")
  assert sorted(found) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(found[name], value, err_msg=name)


def test_a_save_replaces_what_a_killed_save_left(tmp_path):
  """The debris of kills (seen above) is replaced or removed by the next save.

  A kill inside a save used to leave a truncated ckpt-N.index (TensorFlow
  writes it in place; "file is too short to be an sstable"); now the .index
  is renamed into place last. Here the debris is made by hand: a truncated
  index of the step being saved, a temporary checkpoint, data without index.
  """
  model = toy_task.ToyTask().build_model()
  step = tf.Variable(5, dtype=tf.int64, trainable=False)
  model_dir = str(tmp_path)
  debris = {"ckpt-5.index": b"\x00" * 7,
            ".tmp-ckpt-4-0123.index": b"\x00" * 3,
            "ckpt-2.data-00000-of-00001": b"\x00" * 11}
  for name, content in debris.items():
    (tmp_path / name).write_bytes(content)
  path = checkpointing.Checkpointer(model_dir, model, step, keep=2).save()
  assert path == f"{model_dir}/ckpt-5"
  assert sorted(os.listdir(model_dir)) == [
      "checkpoint", "ckpt-5.data-00000-of-00001", "ckpt-5.index"]
  assert tf.train.latest_checkpoint(model_dir) == path
  np.testing.assert_array_equal(
      _read_all(path)["model/_operations/1/_kernel/.ATTRIBUTES/"
                      "VARIABLE_VALUE"], model.get_layer("conv").kernel)

