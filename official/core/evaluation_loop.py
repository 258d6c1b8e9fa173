"""The evaluation loop: padded batches, gathering, the final verdict.

Every replica and worker gets a full batch at every step (the eval dataset is
followed by all-padding batches whose labels are not "valid"); outputs are
fetched per replica or, across workers, gathered tensor by tensor, and fed to
the task's evaluator on the host. The final evaluation of a run checks the
experiment's expected result (official/core/expectations.py).

`EvaluationLoop` is a mixin of official.core.trainer.Trainer and uses the
Trainer's attributes: task, strategy, model, global_step, checkpointer,
chief, model_dir, eval_batch_size, total_steps, schedule_steps, expectation
and last_losses.
"""

import math
import time

import numpy as np
import tensorflow as tf
from absl import logging

from official.core import expectations
from official.core import gin_config

# dtypes collective all-gather supports (MultiWorkerMirroredStrategy).
GATHER_DTYPES = (tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


class EvaluationLoop:
  """Evaluation: one pass of the eval split, continuous evaluation."""

  def evaluate(self, check_expected=False):
    """Evaluates the current model on one pass of the eval split.

    Builds the model and restores the latest checkpoint when nothing was
    built yet (eval mode).

    Args:
      check_expected: the run's final evaluation: check the experiment's
        `expected_result` declaration (official/core/expectations.py), log
        whether it held and add the verdict under "expected_result".

    Returns:
      dict metric name -> float, plus "step" (int), plus "expected_result"
      (a dict, see expectations.check_expectation) with check_expected
      when the experiment declares one.
    """
    if self.model is None:
      self.build(for_training=False)
      self.checkpointer.restore_for_eval()
    step = int(self.global_step.numpy())
    start = time.time()
    evaluator = self.task.build_evaluator()
    evaluator.reset()
    eval_step = self._make_eval_step()
    dataset = self.strategy.distribute_datasets_from_function(
        self._padded_eval_dataset)
    # The padded stream never ends: stop at the first step whose examples
    # are all padding, on every replica and worker alike.
    max_batches = 2 * math.ceil((self.task.num_eval_examples or 0) /
                                self.eval_batch_size) + 2
    batches = 0
    for batch in dataset:
      outputs, num_valid = eval_step(batch)
      if num_valid == 0:
        break
      evaluator.update(outputs)
      batches += 1
      if self.task.num_eval_examples and batches > max_batches:
        raise ValueError(
            f"{type(self.task).__name__}.build_inputs(training=False) gave "
            f"more than {max_batches} batches of {self.eval_batch_size} for "
            f"{self.task.num_eval_examples} examples; an evaluation dataset "
            f"must make one pass (no repeat()).")
    metrics = {k: float(v) for k, v in evaluator.result().items()}
    elapsed = time.time() - start
    lines = [f"Evaluation at step {step} ({batches} batches of "
             f"{self.eval_batch_size}, {elapsed:.1f} s):"]
    width = max([len(k) for k in metrics] + [6])
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    logging.info("\n".join(lines))
    self._write_summaries("eval", step, metrics)
    result = dict(metrics, step=step)
    if check_expected:
      verdict = self.check_expected_result(metrics, step)
      if verdict is not None:
        result["expected_result"] = verdict
    if self.chief:
      gin_config.write_json(
          tf.io.gfile.join(self.model_dir, "eval_metrics.json"), result)
    return result

  def _padded_eval_dataset(self, input_context):
    """The task's eval dataset followed by endless all-padding batches.

    Every replica then gets a full batch at every step, even when the real
    batches do not divide evenly among replicas and workers: no replica sees
    an empty batch (TPUs need static shapes; oneDNN's CPU conv mishandles
    empty batches), and all workers make the same number of steps.
    """
    dataset = self.task.build_inputs(
        training=False, global_batch_size=self.eval_batch_size,
        input_context=input_context)
    batch = input_context.get_per_replica_batch_size(self.eval_batch_size)
    features, labels = dataset.element_spec
    if not isinstance(labels, dict) or "valid" not in labels:
      raise ValueError(
          f"{type(self.task).__name__}.build_inputs(training=False) must "
          f"give labels as a dict with a bool 'valid' entry (Task contract); "
          f"got labels {labels}.")

    def zeros(spec):
      shape = list(spec.shape)
      shape[0] = shape[0] if shape[0] is not None else batch
      if any(d is None for d in shape):
        raise ValueError(
            f"{type(self.task).__name__}: evaluation batches must have static "
            f"shapes (Task contract); got {spec}.")
      return tf.zeros(shape, spec.dtype)

    padding = tf.nest.map_structure(zeros, (features, labels))
    return dataset.concatenate(
        tf.data.Dataset.from_tensors(padding).repeat())

  def _make_eval_step(self):
    """Returns eval_step(batch) -> (dict name -> numpy [global_batch, ...],
    number of valid examples in the global batch).

    One worker: each replica's outputs are fetched and concatenated on the
    host. Several workers (MultiWorkerMirroredStrategy): outputs are gathered
    across workers tensor by tensor; collectives take only float and
    int32/int64, so other dtypes travel as int32/float32 and are cast back.
    """
    if self._eval_step is not None:
      return self._eval_step
    strategy, model, task = self.strategy, self.model, self.task
    multi_worker = isinstance(strategy,
                              tf.distribute.MultiWorkerMirroredStrategy)
    dtypes = {}

    def replica_eval(features, labels):
      num_valid = tf.reduce_sum(tf.cast(labels["valid"], tf.int32))
      outputs = task.eval_outputs(model(features, training=False), labels)
      if multi_worker:
        for name, value in outputs.items():
          dtypes[name] = value.dtype
          if value.dtype not in GATHER_DTYPES:
            wire = tf.float32 if value.dtype.is_floating else tf.int32
            outputs[name] = tf.cast(value, wire)
      return outputs, num_valid

    @tf.function
    def gather_step(batch):
      per_replica, num_valid = strategy.run(replica_eval, args=batch)
      num_valid = strategy.reduce(tf.distribute.ReduceOp.SUM, num_valid,
                                  axis=None)
      if multi_worker:
        return {name: strategy.gather(value, axis=0)
                for name, value in per_replica.items()}, num_valid
      return strategy.experimental_local_results(per_replica), num_valid

    def eval_step(batch):
      """Returns (outputs: name -> numpy [global_batch, ...], num_valid)."""
      outputs, num_valid = gather_step(batch)
      if multi_worker:
        outputs = {name: value.numpy().astype(dtypes[name].as_numpy_dtype)
                   for name, value in outputs.items()}
      else:
        outputs = {name: np.concatenate([np.asarray(r[name])
                                         for r in outputs])
                   for name in outputs[0]}
      return outputs, int(num_valid)

    self._eval_step = eval_step
    return eval_step

  def continuous_evaluate(self, timeout=None):
    """Evaluates each new checkpoint until the final step is evaluated.

    Args:
      timeout: seconds to wait for a new checkpoint before giving up (None:
        wait forever).

    Returns:
      The last metrics dict, or None when no checkpoint appeared in time.
    """
    self.build(for_training=False)
    result = None
    for path in tf.train.checkpoints_iterator(
        self.model_dir, min_interval_secs=1, timeout=timeout):
      try:
        step = self.checkpointer.restore(path)
      except tf.errors.NotFoundError:
        logging.warning("Checkpoint %s vanished before it was read (rotated "
                        "out); waiting for the next.", path)
        continue
      result = self.evaluate(check_expected=step >= self.total_steps)
      if step >= self.total_steps:
        logging.info("Evaluated the final step %d; done.", step)
        break
    else:
      logging.warning("No new checkpoint in %s within %s s; stopping.",
                      self.model_dir, timeout)
    return result

  def check_expected_result(self, metrics, step):
    """Checks the experiment's declared result; logs one line.

    A result that does not hold is logged as a warning and returned, never
    raised: the run's exit status does not change (a shortened or
    exploratory run of a paper experiment is expected to fall short).

    Args:
      metrics: dict metric name -> float of the final evaluation.
      step: the evaluated checkpoint's step.

    Returns:
      The verdict dict (expectations.check_expectation), or None when the
      experiment declares no expected result.
    """
    if self.expectation is None:
      logging.info("No expected result declared (bind expected_result.* in "
                   "the experiment file to have it checked).")
      return None
    verdict, line = expectations.check_expectation(
        self.expectation, metrics, losses=self.last_losses, step=step,
        schedule_steps=self.schedule_steps)
    if verdict["held"]:
      logging.info("%s", line)
    else:
      logging.warning("%s", line)
    return verdict
