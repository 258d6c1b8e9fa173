"""Errors a training run stops with, and messages that say what to do.

The train loop (official/core/train_loop.py) raises them. CorruptRecordError
and NonFiniteLossError come before anything is saved, so the last good
checkpoint is never overwritten; PreemptedError comes after the checkpoint
that SIGTERM asked for was saved (official/core/preemption.py).
"""

from dataloaders import readers


class CorruptRecordError(RuntimeError):
  """A training TFRecord failed its checksum; the message names the file."""


class NonFiniteLossError(RuntimeError):
  """A loss became NaN or Inf; nothing was saved after the last good step."""


class NonFiniteStateError(NonFiniteLossError):
  """An update made a weight, optimizer slot or BN statistic NaN or Inf.

  The loss of a step is computed before its update, so it can still be
  finite; the state check before every save (official/core/train_loop.py)
  raises this instead of saving.
  """


class PreemptedError(RuntimeError):
  """SIGTERM: the checkpoint of the step boundary was saved; rerun to resume."""


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


_HINTS = ("Hints: lower the learning rate "
          "(learning_rate_schedule.base_learning_rate), use a longer warmup "
          "(learning_rate_schedule.warmup_epochs), or clip gradients "
          "(build_optimizer.clipnorm); check the inputs and labels.")


def non_finite_message(first_step, last_step, values, latest_checkpoint,
                       first_bad_step=None, set_aside=None):
  """The NonFiniteLossError text; steps are counted from 1.

  Args:
    first_step: steps completed before the failing host loop.
    last_step: steps completed at its end.
    values: loss name -> mean over that loop.
    latest_checkpoint: path of the last saved checkpoint, or None.
    first_bad_step: the first step of the loop whose loss was not finite.
    set_aside: (path it had, path it has now) of a checkpoint whose state
      gave the non-finite loss of the very next step, which the train loop
      took out of the model directory's index (TrainLoop.train).
  """
  terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
  first = (f", first at step {first_bad_step}"
           if first_bad_step is not None else "")
  text = (f"Non-finite loss in steps {first_step + 1}..{last_step}{first} "
          f"(mean over the loop: {terms}). ")
  if set_aside:
    text += (f"That loss was computed from the state saved in "
             f"{set_aside[0]}, so a resume from it would fail again at once: "
             f"it was moved to {set_aside[1]} (for inspection) and left out "
             f"of the model directory's checkpoint index. ")
  return text + (
      f"Nothing was saved after the last good checkpoint: "
      f"{latest_checkpoint or 'none yet (no checkpoint was written)'}. "
      f"Rerunning resumes from it. {_HINTS}")


def non_finite_state_message(first_step, last_step, values, names,
                             num_variables, latest_checkpoint):
  """The NonFiniteStateError text; steps are counted from 1.

  Args:
    first_step: steps completed before the host loop that ends at the save.
    last_step: steps completed at its end (the step that was to be saved).
    values: loss name -> mean over that loop (finite).
    names: the variables holding NaN or Inf.
    num_variables: how many floating-point variables were checked.
    latest_checkpoint: path of the last saved checkpoint, or None.
  """
  terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
  shown = ", ".join(names[:_MAX_NAMED])
  more = f" and {len(names) - _MAX_NAMED} more" if len(
      names) > _MAX_NAMED else ""
  return (
      f"The updates of steps {first_step + 1}..{last_step} made the training "
      f"state non-finite although their losses were finite (mean over the "
      f"loop: {terms}; a step's loss is computed before its update): "
      f"{len(names)} of {num_variables} variables hold NaN or Inf: "
      f"{shown}{more}. Step {last_step} was not saved, and nothing after "
      f"the last good checkpoint: "
      f"{latest_checkpoint or 'none yet (no checkpoint was written)'}. "
      f"Rerunning resumes from it. {_HINTS}")


_MAX_NAMED = 5


def preempted_message(step, checkpoint, exit_code):
  """The PreemptedError text (official/core/preemption.py)."""
  return (f"Preempted (SIGTERM) after step {step}: saved {checkpoint}. Run "
          f"the same command again to resume from it (exit status "
          f"{exit_code}).")
