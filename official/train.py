r"""Trains and evaluates an experiment described by gin files.

  python -m official.train \
    --gin_file=configs/experiments/classification/spinenet49_imagenet.gin \
    [--gin_param="Trainer.train_epochs = 1"] [--model_dir=DIR] \
    [--mode=train_and_eval] [--strategy=auto] [--tpu=NAME]

The experiment's gin files bind `experiment.task = @SomeTask()` (the task) and
`Trainer.*` (epochs, batch size, cadence; official/core/trainer.py). The model
directory defaults to ./runs/<stem of the first gin file>. With no --gin_file,
the model directory's config.gin (written when it was trained) is used, so

  python -m official.train --mode=eval --model_dir=DIR

rebuilds and evaluates the trained model.

Exit status: 0 when the mode ran to its end; 1 on an error; 143
(official/core/preemption.py) when SIGTERM stopped training after saving
the checkpoint of the next step boundary, so that rerunning the same command
resumes from it. The project's own errors (a checkpoint of another config, a
NaN loss, a corrupted or missing record, a preemption, ...) are printed
alone, as "official.train: ErrorName: message", the last thing on the screen.
"""

import gc
import os
import re
import sys

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

# First: another top-level `official` (Model Garden's) is named, not an
# ImportError from deep inside (official/package_check.py).
from official import package_check  # pylint: disable=g-bad-import-order
package_check.ensure_ours()

from official.core import checkpointing
from official.core import diagnostics
from official.core import distribute
from official.core import gin_config
from official.core import preemption
from official.core import task as task_lib
from official.core import trainer

try:
  from official import registry  # Registers every task and builder with gin.
except ModuleNotFoundError as e:
  if e.name != "official.registry":
    raise
  raise ImportError("official.registry is missing: it registers the tasks and "
                    "builders the gin files name, and official.train cannot "
                    "run without it.") from e

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, parsed after files.")
flags.DEFINE_string("model_dir", None, "Checkpoints, configs, summaries "
                    "(default: ./runs/<first gin file's stem>).")
flags.DEFINE_enum("mode", "train_and_eval", list(trainer.MODES), "What to run.")
flags.DEFINE_enum("strategy", "auto", list(distribute.STRATEGIES),
                  "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address.")


def resolve_model_dir_and_config(gin_files, model_dir):
  """Returns (model_dir, gin_files), falling back to model_dir/config.gin."""
  if model_dir is None:
    if not gin_files:
      raise app.UsageError("Pass --gin_file, or --model_dir of a trained run "
                           "(its config.gin is used).")
    stem = os.path.splitext(os.path.basename(gin_files[0]))[0]
    model_dir = os.path.join("runs", stem)
  if not gin_files:
    saved = tf.io.gfile.join(model_dir, gin_config.CONFIG_FILE)
    if not tf.io.gfile.exists(saved):
      raise app.UsageError(f"No --gin_file given and {saved} does not exist; "
                           f"pass the experiment's --gin_file.")
    gin_files = [saved]
  return model_dir, gin_files


# Errors whose message says what happened and what to do: no traceback.
_EXPLAINED_ERRORS = (
    checkpointing.CheckpointMismatchError, checkpointing.NoCheckpointError,
    diagnostics.CorruptRecordError, diagnostics.NonFiniteLossError,
    diagnostics.PreemptedError, gin_config.GinConfigError,
    task_lib.MissingRecordsError, trainer.UnwritableModelDirError)

# The line gin appends to an exception raised inside a configurable.
_GIN_CONTEXT = re.compile(r"(\n  In call to configurable '[^']*' \(.*\))+$")


def main(argv):
  del argv
  model_dir, gin_files = resolve_model_dir_and_config(FLAGS.gin_file,
                                                      FLAGS.model_dir)
  logging.info("Model directory: %s; gin files: %s", model_dir, gin_files)
  try:
    gin_config.parse_gin(gin_files, FLAGS.gin_param, skip_unknown=False)
    if FLAGS.strategy != "multi_worker_mirrored":  # Only its chief writes.
      trainer.ensure_writable(model_dir)  # Before connecting to accelerators.
    strategy = distribute.get_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    task = registry.experiment()
    trainer.run_experiment(task, FLAGS.mode, model_dir, strategy)
    return
  except _EXPLAINED_ERRORS as e:
    message = _GIN_CONTEXT.sub("", str(e))
    print(f"official.train: {type(e).__name__}: {message}", file=sys.stderr,
          flush=True)
    status = (preemption.EXIT_CODE
              if isinstance(e, diagnostics.PreemptedError) else 1)
  # The error's traceback held the train loop's frames, and with them its
  # input iterator; freed by the interpreter's final garbage collection, the
  # iterator could not be destroyed and the process hung there (3 of 4
  # preempted runs of tests/official/toy.gin with ToyTask.input_delay_secs,
  # single- and multi-worker). Collected here, with the error gone.
  gc.collect()
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
