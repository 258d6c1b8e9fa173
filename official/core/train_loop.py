"""The training loop: host loops of `steps_per_loop` replica steps.

The step contract (what each replica computes, how losses are normalised and
summed) is written at the top of official/core/trainer.py; this module
implements it. `TrainLoop` is a mixin of official.core.trainer.Trainer and
uses the Trainer's attributes: task, strategy, model, optimizer, global_step,
checkpointer, chief, train_batch_size, total_steps, steps_per_epoch,
steps_per_loop, checkpoint_every_steps, log_every_steps, eval_every_steps,
weight_decay, jit_compile, deterministic_seed and init_checkpoint.

What is saved when a run diverges. A step's loss is computed before its
update, so the loss guard after each host loop sees a diverging update one
step late, after the checkpoint of its step may have been written. Hence:
- before every save the whole state (weights, optimizer slots, batch-norm
  statistics) is checked for NaN/Inf; a non-finite state is not saved
  (NonFiniteStateError);
- when the first non-finite loss is the first step after the latest
  checkpoint, that checkpoint's state produced it (finite weights can
  overflow in the forward pass, e.g. |w| ~ 1e36 in float32): it is moved to
  ckpt-N-diverged and out of the index, so that the error names, and a rerun
  resumes from, the checkpoint before it.
A state that is finite and whose next loss is finite is kept even when it is
already far off (|w| ~ 1e19): no threshold tells such a state from a large
but healthy one.

Preemption: SIGTERM saves the next host-loop boundary and raises
PreemptedError (official/core/preemption.py).
"""

import math
import os
import time

import keras
import tensorflow as tf
from absl import logging

from official.core import diagnostics
from official.core import distribute
from official.core import optimization
from official.core import preemption


class TrainLoop:
  """Training: resumption, host loops, logging, checkpoint cadence."""

  def train(self, evaluate_every=False):
    """Trains to total_steps, resuming from the latest checkpoint.

    Args:
      evaluate_every: also evaluate every eval_every_steps (train_and_eval).

    Returns:
      dict loss name -> float, the mean over the last host loop (empty when
      the run had already finished).

    Raises:
      diagnostics.NonFiniteLossError: a loss became NaN/Inf (nothing saved
        after it; a checkpoint whose state gave it is moved aside, see
        `_stop_on_non_finite_loss`).
      diagnostics.NonFiniteStateError: an update made the training state
        NaN/Inf (found before a save, which is skipped).
      diagnostics.PreemptedError: SIGTERM arrived; the checkpoint of the
        step boundary after it was saved (official/core/preemption.py).
    """
    self.build(for_training=True)
    path, step = self.checkpointer.restore_latest()
    step = step or 0
    if path and self.init_checkpoint:
      logging.info("Trainer.init_checkpoint=%s is not applied: the run "
                   "resumes from its own checkpoint %s.", self.init_checkpoint,
                   path)
    if step >= self.total_steps:
      logging.info("Training already finished: %s is at step %d of %d; "
                   "skipping to evaluation.", path, step, self.total_steps)
      return {}
    if path:
      logging.info("Resumed from step %d (%s); training to step %d.", step,
                   path, self.total_steps)
    else:
      if self.init_checkpoint:
        self.initialize_from_checkpoint()
      logging.info("Training from %s to step %d (%d steps per epoch, global "
                   "batch %d).", "the initial checkpoint" if
                   self.init_checkpoint else "scratch", self.total_steps,
                   self.steps_per_epoch, self.train_batch_size)

    iterator = iter(self._train_dataset(skip_steps=step))
    loop = self._make_train_loop(iterator)
    check_state = self._make_state_check()
    values = {}
    loop_first = step  # Steps completed before the current host loop.
    start_time, start_step = None, step
    last_log_step = step

    def save():
      """Saves after checking the state (also PreemptionCheckpointHandler's)."""
      bad, num_checked = check_state()
      if bad:
        raise diagnostics.NonFiniteStateError(
            diagnostics.non_finite_state_message(
                loop_first, int(self.global_step.numpy()), values, bad,
                num_checked, self.checkpointer.latest))
      saved = self.checkpointer.save()
      if self.chief:
        logging.info("Saved checkpoint %s.", saved)
      return saved

    def latest():
      # Another worker may read the index before the chief rewrites it; the
      # chief saves every step as MODEL_DIR/ckpt-<step>.
      if self.chief:
        return self.checkpointer.latest
      return tf.io.gfile.join(self.model_dir,
                              f"ckpt-{int(self.global_step.numpy())}")

    with preemption.Watcher(
        self.strategy, save, step=lambda: int(self.global_step.numpy()),
        latest=latest,
        checkpoint_manager_fn=self.checkpointer.manager) as watcher:
      while step < self.total_steps:
        num_steps = self._steps_to_next_boundary(step, evaluate_every)
        loop_start = time.time()
        loop_first = step
        try:
          outputs, first_bad = watcher.run(
              loop, iterator, tf.constant(num_steps, tf.int32))
        except tf.errors.DataLossError as e:
          raise diagnostics.CorruptRecordError(
              diagnostics.corrupt_record_message(
                  self.task, e, self.checkpointer.latest)) from None
        values = {k: float(v) for k, v in outputs.items()}
        first_bad = int(first_bad)
        loop_time = time.time() - loop_start
        if first_bad >= 0 or not all(math.isfinite(v)
                                     for v in values.values()):
          self._stop_on_non_finite_loss(step, num_steps, values, first_bad)
        step += num_steps
        # The first loop includes tracing and compilation: time from its end.
        if start_time is None:
          start_time, start_step = time.time(), step
          rate = num_steps / max(loop_time, 1e-9)
        else:
          rate = (step - start_step) / max(time.time() - start_time, 1e-9)
        if (step // self.log_every_steps > last_log_step //
            self.log_every_steps or step == self.total_steps):
          self._log_train(step, values, rate)
          last_log_step = step
        saved = (step % self.checkpoint_every_steps == 0 or
                 step == self.total_steps)
        if saved:
          save()
        watcher.stop_if_requested(saved)
        if (evaluate_every and self.eval_every_steps and
            step % self.eval_every_steps == 0 and step != self.total_steps):
          self.evaluate()
    self.write_operative_config()
    self.last_losses = values
    return values

  def _stop_on_non_finite_loss(self, step, num_steps, values, first_bad):
    """Raises NonFiniteLossError for the host loop after `step` steps.

    When the loss of the loop's first step is not finite and the latest
    checkpoint is the state it was computed from, that checkpoint would fail
    the same way at every resume (its weights can be finite and still
    overflow in the forward pass, e.g. |w| ~ 1e36 in float32), so it is
    moved aside and the index falls back to the one before it.

    Args:
      step: steps completed before the loop.
      num_steps: steps in the loop.
      values: loss name -> mean over the loop.
      first_bad: 0-based index in the loop of the first step whose loss was
        not finite (-1 when only the mean overflowed).

    Raises:
      diagnostics.NonFiniteLossError: always.
    """
    set_aside = None
    latest = self.checkpointer.latest
    if first_bad == 0 and latest and (
        os.path.basename(latest) == f"ckpt-{step}"):
      set_aside = (latest, self.checkpointer.set_aside(latest, "diverged"))
      latest = self.checkpointer.latest
    raise diagnostics.NonFiniteLossError(diagnostics.non_finite_message(
        step, step + num_steps, values, latest,
        first_bad_step=step + first_bad + 1 if first_bad >= 0 else None,
        set_aside=set_aside))

  def _steps_to_next_boundary(self, step, evaluate_every):
    """Steps to run in the next host loop: ends on every boundary."""
    boundaries = [self.total_steps,
                  (step // self.checkpoint_every_steps + 1) *
                  self.checkpoint_every_steps]
    if evaluate_every and self.eval_every_steps:
      boundaries.append((step // self.eval_every_steps + 1) *
                        self.eval_every_steps)
    return max(1, min(self.steps_per_loop, min(boundaries) - step))

  def _train_dataset(self, skip_steps=0):
    """The distributed training dataset, replayed to `skip_steps` if seeded."""
    replay = skip_steps if self.deterministic_seed is not None else 0
    def dataset_fn(input_context):
      dataset = self.task.build_inputs(
          training=True, global_batch_size=self.train_batch_size,
          input_context=input_context)
      if replay:
        per_pipeline = max(1, input_context.num_replicas_in_sync //
                           input_context.num_input_pipelines)
        dataset = dataset.skip(replay * per_pipeline)
      return dataset
    if replay:
      logging.info("Deterministic resume: replaying the input pipeline "
                   "through step %d.", replay)
    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _replica_step(self, features, labels):
    """One step on one replica; returns this replica's shares of the losses."""
    model, optimizer = self.model, self.optimizer
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
      outputs = model(features, training=True)
      losses = self.task.compute_losses(outputs, labels,
                                        self.train_batch_size)
      losses = {k: tf.cast(v, tf.float32) for k, v in losses.items()}
      decay = optimization.weight_decay_loss(variables, self.weight_decay)
      total = losses["total_loss"] + decay / replicas
      scaled = optimizer.scale_loss(total)
    grads = tape.gradient(scaled, variables)
    if replicas > 1 and isinstance(optimizer,
                                   keras.optimizers.LossScaleOptimizer):
      grads = poison_unless_all_finite(grads)
    optimizer.apply_gradients(zip(grads, variables))
    losses["total_loss"] = total
    if self.weight_decay:
      losses["weight_decay_loss"] = decay / replicas
    return losses

  def _loss_names(self, iterator):
    """Names of the logged loss terms, found by tracing (not running) a step."""
    names = []
    def forward(features, labels):
      outputs = self.model(features, training=True)
      losses = self.task.compute_losses(outputs, labels,
                                        self.train_batch_size)
      if "total_loss" not in losses:
        raise ValueError(f"{type(self.task).__name__}.compute_losses must "
                         f"return a dict with 'total_loss'; got keys "
                         f"{sorted(losses)}.")
      names.extend(losses)
      return losses["total_loss"]
    def trace(batch):
      return self.strategy.run(forward, args=batch)
    tf.function(trace).get_concrete_function(iterator.element_spec)
    names = list(dict.fromkeys(names))
    if self.weight_decay:
      names.append("weight_decay_loss")
    return names

  def _make_train_loop(self, iterator):
    """tf.function running num_steps steps; returns per-step mean losses."""
    names = self._loss_names(iterator)
    strategy = self.strategy
    replica_step = self._replica_step
    if self.jit_compile and distribute.is_tpu(strategy):
      logging.info("jit_compile: TPU steps are compiled with XLA anyway.")
    elif self.jit_compile:
      replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
      sums = {name: tf.constant(0.0, tf.float32) for name in names}
      first_bad = tf.constant(-1, tf.int32)
      for index in tf.range(num_steps):
        features, labels = next(iterator)
        per_replica = strategy.run(replica_step, args=(features, labels))
        step_losses = {name: strategy.reduce(
            tf.distribute.ReduceOp.SUM, per_replica[name], axis=None)
                       for name in names}
        sums = {name: sums[name] + step_losses[name] for name in names}
        finite = tf.reduce_all([tf.math.is_finite(step_losses[name])
                                for name in names])
        first_bad = tf.where(
            tf.logical_and(first_bad < 0, tf.logical_not(finite)), index,
            first_bad)
      self.global_step.assign_add(tf.cast(num_steps, tf.int64))
      count = tf.cast(num_steps, tf.float32)
      return {name: sums[name] / count for name in names}, first_bad

    return train_loop

  def _make_state_check(self):
    """A function returning (names of non-finite variables, number checked).

    Checks every floating-point variable a checkpoint holds: the model's
    weights and batch-norm statistics and the optimizer's slots. One
    tf.function: on each replica, one all-finite flag per variable from the
    replica's own copy, on its device; the flags are summed over the
    replicas and only that [num_variables] vector reaches the host. It reads
    every variable once, as the save it precedes does. Measured for the
    SpineNet-49 RetinaNet of
    configs/experiments/retinanet/spinenet49_coco.gin (1,320 variables,
    57.2M values with the momentum slots) on a 2-core CPU that other jobs
    were using: 130-150 ms per check against 1.7-1.8 s for the save itself,
    once per checkpoint_every_steps steps.
    """
    variables, seen = [], set()
    for variable in list(self.model.variables) + list(
        self.optimizer.variables):
      if id(variable) not in seen and tf.as_dtype(
          variable.dtype).is_floating:
        seen.add(id(variable))
        variables.append(variable)
    names = [getattr(v, "path", None) or v.name for v in variables]
    strategy = self.strategy

    def replica_flags():
      return tf.stack([
          tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(
              tf.convert_to_tensor(v)))), tf.float32) for v in variables])

    @tf.function
    def non_finite_counts():
      return strategy.reduce(tf.distribute.ReduceOp.SUM,
                             strategy.run(replica_flags), axis=None)

    def check():
      if not variables:
        return [], 0
      counts = non_finite_counts().numpy()
      return [n for n, c in zip(names, counts) if c > 0], len(variables)

    return check

  def _log_train(self, step, values, steps_per_second):
    """Logs a progress line and writes train summaries.

    Args:
      step: steps completed.
      values: loss name -> mean over the last host loop.
      steps_per_second: measured since the end of the first loop.
    """
    # The rate the optimizer applies at its next update.
    learning_rate = float(self.optimizer.learning_rate)
    examples_per_second = steps_per_second * self.train_batch_size
    remaining = (self.total_steps - step) / max(steps_per_second, 1e-9)
    terms = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
    logging.info("step %d/%d | %s | lr %.6g | %.1f examples/s | ETA %s", step,
                 self.total_steps, terms, learning_rate, examples_per_second,
                 format_seconds(remaining))
    scalars = dict(values, learning_rate=learning_rate,
                   examples_per_second=examples_per_second)
    self._write_summaries("train", step, scalars)


def poison_unless_all_finite(grads):
  """Makes every replica's gradients NaN when any replica's are not finite.

  Keras 3's LossScaleOptimizer decides to skip a step from the first
  replica's gradients alone, before they are summed; an overflow on another
  replica would then reach the weights. With this, every replica agrees.

  Args:
    grads: this replica's gradients (None for unconnected variables).

  Returns:
    The same gradients, or NaN-filled ones on every replica.
  """
  present = [g for g in grads if g is not None]
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                          for g in present])
  bad = tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
  factor = tf.where(bad > 0, float("nan"), 1.0)
  return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads]


def format_seconds(seconds):
  """H:MM:SS of a duration in seconds."""
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
