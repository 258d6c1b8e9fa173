"""Errors a training run stops with, and messages that say what to do.

Both errors are raised by the train loop (official/core/train_loop.py) before
anything is saved, so the last good checkpoint is never overwritten.
"""

from dataloaders import readers


class CorruptRecordError(RuntimeError):
  """A training TFRecord failed its checksum; the message names the file."""


class NonFiniteLossError(RuntimeError):
  """A loss became NaN or Inf; nothing was saved after the last good step."""


def corrupt_record_message(task, error, latest_checkpoint):
  """Names the corrupted file and record (scanning the inputs on the host).

  Args:
    task: the Task whose training input failed (its `input_files`).
    error: the tf.errors.DataLossError raised by the input pipeline.
    latest_checkpoint: path of the last saved checkpoint, or None.

  Returns:
    The CorruptRecordError text.
  """
  pattern = task.input_files(training=True)
  found = readers.locate_corrupt_record(pattern) if pattern else None
  where = (f"{found[0]}, record {found[1]} (0-based)" if found else
           f"a file matching {pattern!r}" if pattern else "the input data")
  return (f"Corrupted TFRecord in the training data: {where}: "
          f"{error.message.splitlines()[0]}. Nothing was saved after the "
          f"last checkpoint ({latest_checkpoint}). Re-create that "
          "file with its conversion script, or leave it out of the file "
          "pattern, then run the same command again to resume.")


def non_finite_message(first_step, last_step, values, latest_checkpoint):
  """The NonFiniteLossError text; steps are counted from 1.

  Args:
    first_step: steps completed before the failing host loop.
    last_step: steps completed at its end.
    values: loss name -> mean over that loop.
    latest_checkpoint: path of the last saved checkpoint, or None.
  """
  terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
  return (
      f"Non-finite loss in steps {first_step + 1}..{last_step} (mean over "
      f"the loop: {terms}). Nothing was saved after the last good "
      f"checkpoint: "
      f"{latest_checkpoint or 'none yet (no checkpoint was written)'}. "
      f"Rerunning resumes from it. Hints: lower the learning rate "
      f"(learning_rate_schedule.base_learning_rate), use a longer warmup "
      f"(learning_rate_schedule.warmup_epochs), or clip gradients "
      f"(build_optimizer.clipnorm); check the inputs and labels.")
