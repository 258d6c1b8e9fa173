"""Learning-rate schedules: protocols in epochs, schedules in steps.

Protocol files speak in epochs (SpineNet: 350 epochs, step decay 0.1x and
0.01x at the last 30 and 10 epochs); `learning_rate_schedule` turns them into
steps with the dataset size and global batch size the trainer supplies, so one
protocol serves COCO and a 500-image set. The resulting `WarmupDecaySchedule`
is a plain Keras LearningRateSchedule evaluated at the optimizer's iteration
count (the number of updates applied so far, starting at 0).
"""

import math

import gin
import keras
import tensorflow as tf
from absl import logging

DECAYS = ("step", "cosine", "constant")


def epochs_to_steps(epochs, steps_per_epoch):
  """round(epochs * steps_per_epoch), and at least 1 when epochs > 0.

  Args:
    epochs: a number of epochs, may be fractional.
    steps_per_epoch: optimizer steps in one epoch.

  Returns:
    int steps; 0 only when `epochs` is 0.
  """
  steps = int(round(epochs * steps_per_epoch))
  return max(steps, 1) if epochs > 0 else max(steps, 0)


@keras.saving.register_keras_serializable(package="official")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup, then step, cosine or no decay. All arguments in steps.

  lr(step), for the update with 0-based index `step`:
    step < warmup_steps: base * (r + (1 - r) * step / warmup_steps), with
      r = warmup_start_ratio (so lr(0) = base * r, rising linearly to base).
    "step": base * factors[i] for the last boundaries[i] <= step; base before
      the first boundary.
    "cosine": base * 0.5 * (1 + cos(pi * p)), p = (step - warmup_steps) /
      (total_steps - warmup_steps) clipped to [0, 1]: base at the end of
      warmup, 0 at step == total_steps (after the last update).
    "constant": base.

  Args:
    base_learning_rate: peak learning rate (after any linear scaling).
    total_steps: steps of the whole run (>= 1).
    warmup_steps: steps of linear warmup (0: none).
    warmup_start_ratio: lr at step 0 as a fraction of the base.
    decay: one of DECAYS.
    boundaries: "step" decay: increasing step indices where a factor starts.
    factors: "step" decay: multipliers of the base, one per boundary.
    name: name scope.
  """

  def __init__(self, base_learning_rate, total_steps, warmup_steps=0,
               warmup_start_ratio=0.0, decay="step", boundaries=(),
               factors=(), name="WarmupDecaySchedule"):
    super().__init__()
    if decay not in DECAYS:
      raise ValueError(f"Unknown decay {decay!r}; expected one of "
                       f"{', '.join(DECAYS)}.")
    if total_steps < 1:
      raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
      raise ValueError(f"warmup_steps must be in [0, total_steps="
                       f"{total_steps}], got {warmup_steps}.")
    boundaries, factors = list(boundaries), list(factors)
    if len(boundaries) != len(factors):
      raise ValueError(f"Step decay needs one factor per boundary; got "
                       f"boundaries {boundaries} and factors {factors}.")
    if any(b1 > b2 for b1, b2 in zip(boundaries, boundaries[1:])):
      raise ValueError(f"Step decay boundaries must increase; got "
                       f"{boundaries}.")
    self.base_learning_rate = float(base_learning_rate)
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.warmup_start_ratio = float(warmup_start_ratio)
    self.decay = decay
    self.boundaries = [int(b) for b in boundaries]
    self.factors = [float(f) for f in factors]
    self.name = name

  def __call__(self, step):
    with tf.name_scope(self.name):
      step = tf.cast(step, tf.float32)
      base = tf.constant(self.base_learning_rate, tf.float32)
      warmup = float(self.warmup_steps)
      if self.decay == "step":
        lr = base
        for boundary, factor in zip(self.boundaries, self.factors):
          lr = tf.where(step >= boundary, base * factor, lr)
      elif self.decay == "cosine":
        span = max(float(self.total_steps - self.warmup_steps), 1.0)
        progress = tf.clip_by_value((step - warmup) / span, 0.0, 1.0)
        lr = base * 0.5 * (1.0 + tf.cos(math.pi * progress))
      else:
        lr = base
      if self.warmup_steps > 0:
        ratio = self.warmup_start_ratio
        warm = base * (ratio + (1.0 - ratio) * step / warmup)
        lr = tf.where(step < warmup, warm, lr)
      return lr

  def get_config(self):
    return {
        "base_learning_rate": self.base_learning_rate,
        "total_steps": self.total_steps,
        "warmup_steps": self.warmup_steps,
        "warmup_start_ratio": self.warmup_start_ratio,
        "decay": self.decay,
        "boundaries": list(self.boundaries),
        "factors": list(self.factors),
        "name": self.name,
    }


@gin.configurable
def learning_rate_schedule(base_learning_rate=gin.REQUIRED,
                           steps_per_epoch=None,
                           total_epochs=None,
                           warmup_epochs=0,
                           warmup_start_ratio=0.0,
                           decay="step",
                           step_decay_last_epochs=(30, 10),
                           step_decay_factors=(0.1, 0.01),
                           reference_batch_size=None,
                           global_batch_size=None):
  """Builds a WarmupDecaySchedule from a protocol written in epochs.

  The trainer passes `steps_per_epoch`, `total_epochs` and
  `global_batch_size`; gin files bind the rest.

  Args:
    base_learning_rate: peak learning rate at `reference_batch_size` (or at
      any batch size when `reference_batch_size` is None).
    steps_per_epoch: optimizer steps per epoch (ceil(examples / batch)).
    total_epochs: length of the run in epochs (may be fractional).
    warmup_epochs: epochs of linear warmup (may be fractional).
    warmup_start_ratio: warmup starts at base * ratio and rises linearly.
    decay: "step", "cosine" or "constant".
    step_decay_last_epochs: "step": the lr is multiplied by the matching factor
      from epoch total_epochs - N on; (30, 10) with 350 epochs: from epochs
      320 and 340. Must decrease.
    step_decay_factors: "step": multipliers of the base, one per entry above.
    reference_batch_size: linear scaling: when set, the base lr is multiplied
      by global_batch_size / reference_batch_size.
    global_batch_size: examples per step over all replicas.

  Returns:
    A WarmupDecaySchedule.

  Raises:
    ValueError: a missing or inconsistent argument (named in the message).
  """
  if steps_per_epoch is None or steps_per_epoch < 1:
    raise ValueError(f"learning_rate_schedule: steps_per_epoch must be >= 1, "
                     f"got {steps_per_epoch}.")
  if total_epochs is None or total_epochs <= 0:
    raise ValueError(f"learning_rate_schedule: total_epochs must be > 0, got "
                     f"{total_epochs}.")
  base = float(base_learning_rate)
  if reference_batch_size is not None:
    if not global_batch_size:
      raise ValueError("learning_rate_schedule: reference_batch_size is set "
                       "but global_batch_size is not; linear scaling needs "
                       "both.")
    base *= global_batch_size / reference_batch_size
  total_steps = epochs_to_steps(total_epochs, steps_per_epoch)
  warmup_steps = min(epochs_to_steps(warmup_epochs, steps_per_epoch),
                     total_steps)
  boundaries, factors = [], []
  if decay == "step":
    last = list(step_decay_last_epochs)
    if len(last) != len(step_decay_factors):
      raise ValueError(
          f"learning_rate_schedule: step_decay_last_epochs {tuple(last)} and "
          f"step_decay_factors {tuple(step_decay_factors)} differ in length.")
    if any(a <= b for a, b in zip(last, last[1:])):
      raise ValueError(f"learning_rate_schedule: step_decay_last_epochs must "
                       f"decrease (e.g. (30, 10)); got {tuple(last)}.")
    for n in last:
      boundary = int(round((total_epochs - n) * steps_per_epoch))
      if boundary < 0:
        logging.warning("Step decay at the last %s epochs starts before step "
                        "0 of a %s-epoch run; it applies from step 0.", n,
                        total_epochs)
      boundaries.append(max(boundary, 0))
    factors = list(step_decay_factors)
  return WarmupDecaySchedule(base, total_steps, warmup_steps,
                             warmup_start_ratio, decay, boundaries, factors)
