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
"""

import os

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from official.core import distribute
from official.core import gin_config
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


def main(argv):
  del argv
  model_dir, gin_files = resolve_model_dir_and_config(FLAGS.gin_file,
                                                      FLAGS.model_dir)
  logging.info("Model directory: %s; gin files: %s", model_dir, gin_files)
  gin_config.parse_gin(gin_files, FLAGS.gin_param, skip_unknown=False)
  if FLAGS.strategy != "multi_worker_mirrored":  # Only its chief writes.
    trainer.ensure_writable(model_dir)  # Before connecting to accelerators.
  strategy = distribute.get_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
  task = registry.experiment()
  trainer.run_experiment(task, FLAGS.mode, model_dir, strategy)


if __name__ == "__main__":
  app.run(main)
