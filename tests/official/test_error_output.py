"""A command that fails on a checkpoint of another architecture ends with
the project's message.

Before the fix, `python -m official.export` printed the variable list and then
TensorFlow's warnings about the half-finished restore (one line per unused
checkpoint value, 882 for a RetinaNet) when the process exited, pushing the
message off the screen; `python -m official.train` did the same after its
traceback. Both commands run here in subprocesses on the toy task
(tests/official/toy_task.py), with a checkpoint written in-process by a model
of 4 instead of 8 conv filters.
"""

import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from official.core import checkpointing
from official.core import gin_config
from official.core import optimization
from tests.official import toy_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOY_GIN = os.path.join(REPO, "tests", "official", "toy.gin")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
LAST_LINE = ("Was the checkpoint written with another config (backbone, "
             "number of classes, input size)? Use a fresh model_dir or the "
             "config it was trained with.")

pytestmark = pytest.mark.usefixtures("no_gin_bindings")


def _write_checkpoint(model_dir, filters):
  """A training checkpoint (model, optimizer slots, step 3) of the toy model."""
  model = toy_task.ToyTask(filters=filters).build_model()
  optimizer = optimization.build_optimizer(0.1)
  optimizer.build(model.trainable_variables)
  step = tf.Variable(3, dtype=tf.int64, trainable=False)
  return checkpointing.Checkpointer(str(model_dir), model, step,
                                    optimizer).save()


def _run(*command):
  result = subprocess.run(
      [sys.executable, "-m", *command], cwd=REPO, env=ENV,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=120, check=False)
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  return result.returncode, lines, result.stdout


def _check_ends_with_the_message(returncode, lines, output, command):
  assert returncode == 1, output
  # The list of variables is there, and nothing follows the message.
  assert any("conv/kernel: expected [3, 3, 3, 8], found [3, 3, 3, 4]" in line
             for line in lines), output
  assert lines[-1] == LAST_LINE, output
  start = [i for i, line in enumerate(lines)
           if line.startswith(f"{command}: ")]
  assert start, output
  assert lines[start[-1]].endswith("does not fit the model built from the "
                                   "config."), output
  assert not any(line.startswith(("WARNING", "W1", "W0", "Traceback"))
                 for line in lines[start[-1]:]), output


def test_export_of_another_architecture_ends_with_the_message(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  shutil.copy(TOY_GIN, run_dir / gin_config.CONFIG_FILE)  # 8 filters.
  other = _write_checkpoint(tmp_path / "other", filters=4)
  export_dir = tmp_path / "export"
  returncode, lines, output = _run(
      "official.export", f"--model_dir={run_dir}",
      f"--export_dir={export_dir}", f"--checkpoint={other}")
  _check_ends_with_the_message(returncode, lines, output, "official.export")
  # The message alone: not the flag list of a usage error.
  assert not any("--quantization" in line for line in lines), output
  assert not export_dir.exists()


def test_training_on_another_architecture_ends_with_the_message(tmp_path):
  model_dir = tmp_path / "run"
  _write_checkpoint(model_dir, filters=4)
  returncode, lines, output = _run(
      "official.train", f"--model_dir={model_dir}", "--strategy=one_device",
      f"--gin_file={TOY_GIN}", "--mode=train")
  _check_ends_with_the_message(returncode, lines, output, "official.train")
