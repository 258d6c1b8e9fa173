"""Fine-tuning: initialising a fresh run's modules from another checkpoint.

`Trainer.init_checkpoint` (a checkpoint path prefix or a model_dir) and
`Trainer.init_checkpoint_modules` choose what is restored; the train loop
calls `initialize_from_checkpoint` only when a run starts fresh (a run that
resumes from its own checkpoint never applies it). What was and was not
restored is logged and written to model_dir/init_checkpoint.json.

`FineTuning` is a mixin of official.core.trainer.Trainer and uses the
Trainer's attributes: model, model_dir, chief, init_checkpoint,
init_checkpoint_modules and init_report.
"""

import gin
import tensorflow as tf
from absl import logging

from official.core import checkpointing
from official.core import gin_config

INIT_REPORT_FILE = "init_checkpoint.json"
_MAX_LOGGED_NAMES = 50


class FineTuning:
  """Restores init_checkpoint_modules from init_checkpoint."""

  def initialize_from_checkpoint(self):
    """Restores init_checkpoint_modules from init_checkpoint (fine-tuning).

    Called by `train` when a run starts fresh; builds the model if needed.
    Logs the variables that were not restored and writes the report to
    model_dir/init_checkpoint.json (chief).

    Returns:
      The report of checkpointing.restore_modules.

    Raises:
      checkpointing.NoCheckpointError: init_checkpoint names no checkpoint.
      checkpointing.CheckpointMismatchError: a module does not fit it.
    """
    self.build(for_training=True)
    path = checkpointing.resolve_checkpoint(self.init_checkpoint,
                                            "Trainer.init_checkpoint")
    report = checkpointing.restore_modules(path, self.model,
                                           self.init_checkpoint_modules)
    not_restored = report["not_restored"]
    shown = not_restored[:_MAX_LOGGED_NAMES]
    more = len(not_restored) - len(shown)
    logging.info(
        "Initialised %s from %s: %d variables restored; %d variables were "
        "NOT restored (they keep their initial values)%s%s%s",
        " and ".join(self.init_checkpoint_modules), path,
        len(report["restored"]), len(not_restored),
        ":\n  " if shown else ".", "\n  ".join(shown),
        f"\n  ... and {more} more (all in init_checkpoint.json)." if more
        else "")
    if report["num_checkpoint_unused"]:
      logging.info("%d variables of %s's model were not used (its other "
                   "parts).", report["num_checkpoint_unused"], path)
    if self.chief:
      gin_config.write_json(
          tf.io.gfile.join(self.model_dir, INIT_REPORT_FILE), report)
    self.init_report = report
    return report


@gin.configurable
def required_init_checkpoint(pretrained_by=None):
  """Stands for a Trainer.init_checkpoint that the command must give.

  An experiment that fine-tunes binds
  `Trainer.init_checkpoint = @required_init_checkpoint()`; the Trainer is
  then built only once --gin_param sets Trainer.init_checkpoint (gin's
  %gin.REQUIRED would already fail when the file is parsed, so that the
  experiment could not even be built and inspected without a checkpoint).

  Args:
    pretrained_by: the experiment that trains the checkpoint, for the message.

  Raises:
    ValueError: always, saying what to pass.
  """
  where = f" (a run of {pretrained_by})" if pretrained_by else ""
  raise ValueError(
      "This experiment fine-tunes from a checkpoint: pass "
      "--gin_param=\"Trainer.init_checkpoint='MODEL_DIR_OR_CHECKPOINT'\""
      f"{where}, or Trainer.init_checkpoint=None to train from scratch.")


def parse_modules(modules):
  """("backbone", ...) of "backbone", "backbone,decoder" or a sequence."""
  if isinstance(modules, str):
    modules = [m.strip() for m in modules.split(",") if m.strip()]
  modules = tuple(modules or ())
  unknown = [m for m in modules if m not in checkpointing.MODULES]
  if not modules or unknown:
    raise ValueError(f"Trainer.init_checkpoint_modules={modules!r}: expected "
                     f"one or more of {', '.join(checkpointing.MODULES)}.")
  return modules
