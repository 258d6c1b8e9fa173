"""The training and evaluation loop.

Why a compact custom loop rather than `model.fit`:
- Loss normalisation follows the Task contract exactly: each replica returns
  its share of the global-batch mean (local sum / global batch size), the
  replicas' shares are summed, and weight decay is added once (divided by the
  number of replicas on each). `fit` would average per-replica means itself.
- Every loss term the task returns is logged and written to TensorBoard, not
  just one scalar.
- A NaN/Inf guard runs after every host loop, before anything is saved, so the
  last good checkpoint is never overwritten by a diverged model.
- The host runs `steps_per_loop` steps per call (a `tf.range` loop around
  `strategy.run` inside one tf.function), which TPUs need so the host never
  paces the accelerator; loops end exactly on checkpoint and evaluation
  boundaries.
- XLA is asked for explicitly: Keras 3's `jit_compile="auto"` turns XLA off
  whenever a distribution strategy is set (DESIGN.md, Known Keras 3 facts).

Per replica and step:
    outputs = model(features, training=True)
    losses = task.compute_losses(outputs, labels, global_batch_size)
    total = losses["total_loss"] + weight_decay_loss / num_replicas
    grads = d(scale_loss(total)) / d(trainable variables)
    optimizer.apply_gradients(grads)   # Keras 3 sums grads over replicas

The logged "total_loss" is the optimised objective (task total + weight
decay); "weight_decay_loss" is logged on its own when weight_decay > 0.

Steps: steps_per_epoch = ceil(task.num_train_examples / train_batch_size);
total steps = round(train_epochs * steps_per_epoch) (at least 1), capped by
max_train_steps. The learning-rate schedule always spans the uncapped run.

Fine-tuning: `init_checkpoint` (a checkpoint path prefix or a model_dir)
initialises `init_checkpoint_modules` of the model ("backbone" by default,
e.g. a segmenter's backbone from a RetinaNet trained with the same backbone
config) when a run starts fresh; a run that resumes from its own checkpoint
never applies it. The variables left at their initial values (the new heads)
are logged and listed in init_checkpoint.json; a module that does not fit
fails before the first step, naming the variables
(checkpointing.restore_modules).

Files in model_dir: config.gin (at start), operative_config.gin (after the
model is built and at the end), ckpt-<step>.* and `checkpoint`, train/ and
eval/ TensorBoard event files, eval_metrics.json ({"step": N, metric: value}),
init_checkpoint.json (fine-tuning: what was and was not restored).
"""

import math
import time
import uuid

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from dataloaders import readers
from official.core import checkpointing
from official.core import distribute
from official.core import gin_config
from official.core import optimization
from official.core import precision as precision_lib
from official.core import schedules

MODES = ("train", "eval", "train_and_eval", "continuous_eval")

INIT_REPORT_FILE = "init_checkpoint.json"
_MAX_LOGGED_NAMES = 50

# dtypes collective all-gather supports (MultiWorkerMirroredStrategy).
_GATHER_DTYPES = (tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


class CorruptRecordError(RuntimeError):
  """A training TFRecord failed its checksum; the message names the file."""


class NonFiniteLossError(RuntimeError):
  """A loss became NaN or Inf; nothing was saved after the last good step."""


class UnwritableModelDirError(OSError):
  """The model directory cannot be created or written to."""


def ensure_writable(model_dir):
  """Creates model_dir and checks a file can be written there.

  Raises:
    UnwritableModelDirError: naming the directory and the underlying error.
  """
  if not model_dir:
    raise UnwritableModelDirError("No model_dir given; pass --model_dir.")
  probe = tf.io.gfile.join(model_dir, f".write_probe-{uuid.uuid4().hex}")
  try:
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    raise UnwritableModelDirError(
        f"model_dir {model_dir!r} is not writable "
        f"({type(e).__name__}: {e}). Pass a --model_dir that can be created "
        f"and written to.") from e


@gin.configurable(denylist=["task", "model_dir", "strategy"])
class Trainer:
  """Trains and evaluates a Task under a tf.distribute strategy.

  Args:
    task: an official.core.task.Task.
    model_dir: directory (local or gs://) for checkpoints, configs, summaries.
    strategy: a tf.distribute.Strategy (official.core.distribute).
    train_epochs: length of training in epochs (may be fractional).
    train_batch_size: global batch size (over all replicas).
    eval_batch_size: global evaluation batch size (default: train's).
    steps_per_loop: steps run per host call.
    checkpoint_every_steps: save every this many steps (and at the end).
    keep_checkpoints: number of checkpoints kept.
    log_every_steps: console and TensorBoard cadence (default steps_per_loop).
    eval_every_epochs: train_and_eval evaluates every this many epochs
      (None: only at the end).
    weight_decay: L2 coefficient on kernels (optimization.weight_decay_loss).
    optimizer_fn: builds the optimizer from a learning rate or schedule.
    learning_rate_fn: builds the schedule; called with steps_per_epoch,
      total_epochs and global_batch_size.
    precision: "auto" or a Keras policy name (official.core.precision).
    jit_compile: compile each replica's step with XLA (one device, or all
      replicas on GPUs; TPUs compile anyway).
    deterministic_seed: int: seeds Python, NumPy, TF and Keras, enables op
      determinism, sets `task.seed` if the task has that attribute and it is
      unset, and on resume replays the input pipeline up to the restored step
      so that a resumed run sees the same batches as an uninterrupted one.
    max_train_steps: cap on the number of steps (smoke runs).
    init_checkpoint: fine-tuning: a checkpoint path prefix or a model_dir
      (its latest checkpoint) whose `init_checkpoint_modules` initialise a
      fresh run (see the module docstring); None: no initialisation.
    init_checkpoint_modules: "backbone", "decoder" or "all", or several
      ("backbone,decoder" or a tuple).
  """

  def __init__(self, task, model_dir, strategy, train_epochs=gin.REQUIRED,
               train_batch_size=gin.REQUIRED, eval_batch_size=None,
               steps_per_loop=100, checkpoint_every_steps=1000,
               keep_checkpoints=5, log_every_steps=None,
               eval_every_epochs=None, weight_decay=0.0,
               optimizer_fn=optimization.build_optimizer,
               learning_rate_fn=schedules.learning_rate_schedule,
               precision="auto", jit_compile=False, deterministic_seed=None,
               max_train_steps=None, init_checkpoint=None,
               init_checkpoint_modules="backbone"):
    self.task = task
    self.model_dir = model_dir
    self.strategy = strategy
    self.chief = distribute.is_chief(strategy)
    if self.chief:
      ensure_writable(model_dir)
    for name, value in (("train_batch_size", train_batch_size),
                        ("steps_per_loop", steps_per_loop),
                        ("checkpoint_every_steps", checkpoint_every_steps),
                        ("keep_checkpoints", keep_checkpoints)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"Trainer.{name} must be a positive int, got "
                         f"{value!r}.")
    if not train_epochs or train_epochs <= 0:
      raise ValueError(f"Trainer.train_epochs must be > 0, got "
                       f"{train_epochs!r}.")
    self.train_epochs = train_epochs
    self.train_batch_size = train_batch_size
    self.eval_batch_size = eval_batch_size or train_batch_size
    replicas = strategy.num_replicas_in_sync
    for name, size in (("train_batch_size", self.train_batch_size),
                       ("eval_batch_size", self.eval_batch_size)):
      if size % replicas:
        raise ValueError(f"Trainer.{name}={size} is not divisible by the "
                         f"{replicas} replicas of {type(strategy).__name__}.")
    self.steps_per_loop = steps_per_loop
    self.checkpoint_every_steps = checkpoint_every_steps
    self.keep_checkpoints = keep_checkpoints
    self.log_every_steps = log_every_steps or steps_per_loop
    self.weight_decay = weight_decay or 0.0
    self.optimizer_fn = optimizer_fn
    self.learning_rate_fn = learning_rate_fn
    self.precision = precision
    self.jit_compile = jit_compile
    self.deterministic_seed = deterministic_seed
    if jit_compile and not distribute.is_tpu(strategy) and replicas > 1 and (
        not distribute.uses_gpus(strategy)):
      raise ValueError(
          f"Trainer.jit_compile=True with {replicas} replicas needs every "
          f"replica on a GPU ({type(strategy).__name__} on "
          f"{strategy.extended.worker_devices}): TensorFlow only compiles a "
          f"replica step that syncs (gradients, sync BN) for GPUs. Use "
          f"jit_compile=False or one device.")

    num_examples = task.num_train_examples
    if not num_examples or num_examples < 1:
      raise ValueError(f"{type(task).__name__}.num_train_examples must be a "
                       f"positive int to turn epochs into steps, got "
                       f"{num_examples!r}.")
    self.steps_per_epoch = math.ceil(num_examples / train_batch_size)
    self.schedule_steps = schedules.epochs_to_steps(train_epochs,
                                                    self.steps_per_epoch)
    self.total_steps = self.schedule_steps
    if max_train_steps is not None:
      self.total_steps = max(1, min(self.total_steps, int(max_train_steps)))
    self.eval_every_steps = (
        schedules.epochs_to_steps(eval_every_epochs, self.steps_per_epoch)
        if eval_every_epochs else None)
    self.init_checkpoint = init_checkpoint or None
    self.init_checkpoint_modules = _parse_modules(init_checkpoint_modules)
    self.init_report = None

    self.model = None
    self.optimizer = None
    self.global_step = None
    self.checkpointer = None
    self._for_training = None
    self._eval_step = None
    self._writers = {}

  # Building.

  def build(self, for_training=True):
    """Builds model (and optimizer) under the strategy; idempotent.

    Args:
      for_training: also build the optimizer and checkpoint it.
    """
    if self.model is not None and (self._for_training or not for_training):
      return
    seed = self.deterministic_seed
    if seed is not None:
      keras.utils.set_random_seed(seed)
      tf.config.experimental.enable_op_determinism()
      if hasattr(self.task, "seed"):
        if self.task.seed is None:
          self.task.seed = seed
      else:
        logging.warning("%s has no `seed` attribute; its input pipeline is "
                        "seeded only through the global TF seed.",
                        type(self.task).__name__)
    self.task.prepare_data()
    policy = precision_lib.policy_for(self.strategy, self.precision)
    precision_lib.set_global_policy(policy)
    self.policy = policy

    with self.strategy.scope():
      if self.model is None:
        self.model = self.task.build_model()
        self._ensure_built(self.model)
        self.global_step = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="global_step",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      if for_training:
        schedule = self.learning_rate_fn(
            steps_per_epoch=self.steps_per_epoch,
            total_epochs=self.train_epochs,
            global_batch_size=self.train_batch_size)
        optimizer = self.optimizer_fn(learning_rate=schedule)
        self.optimizer = precision_lib.wrap_optimizer(optimizer, policy)
        # Keras 3 creates slots lazily; under a strategy they must exist
        # before the first step (and before a checkpoint is restored).
        self.optimizer.build(self.model.trainable_variables)
    self._for_training = for_training
    self.checkpointer = checkpointing.Checkpointer(
        self.model_dir, self.model, self.global_step,
        optimizer=self.optimizer if for_training else None,
        keep=self.keep_checkpoints, chief=self.chief)
    logging.info("Built %s: %d parameters, policy %s, %d replica(s).",
                 self.model.name, self.model.count_params(), policy,
                 self.strategy.num_replicas_in_sync)
    if for_training:  # Eval runs keep the training run's operative config.
      self.write_operative_config()

  def _ensure_built(self, model):
    """Creates a subclassed model's variables by calling it on zeros."""
    if model.built and model.variables:
      return
    spec = self.task.build_inputs(
        training=False, global_batch_size=self.eval_batch_size).element_spec
    def zeros(s):
      shape = [1] + list(s.shape[1:])
      if any(d is None for d in shape):
        raise ValueError(f"Cannot build {type(model).__name__}: input "
                         f"feature shape {s.shape} is not static.")
      return tf.zeros(shape, s.dtype)
    model(tf.nest.map_structure(zeros, spec[0]), training=False)

  # Training.

  def train(self, evaluate_every=False):
    """Trains to total_steps, resuming from the latest checkpoint.

    Args:
      evaluate_every: also evaluate every eval_every_steps (train_and_eval).

    Returns:
      dict loss name -> float, the mean over the last host loop (empty when
      the run had already finished).

    Raises:
      NonFiniteLossError: a loss became NaN/Inf (nothing saved after it).
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
    values = {}
    start_time, start_step = None, step
    last_log_step = step
    while step < self.total_steps:
      num_steps = self._steps_to_next_boundary(step, evaluate_every)
      loop_start = time.time()
      try:
        outputs = loop(iterator, tf.constant(num_steps, tf.int32))
      except tf.errors.DataLossError as e:
        raise CorruptRecordError(self._corrupt_record_message(e)) from None
      values = {k: float(v) for k, v in outputs.items()}
      loop_time = time.time() - loop_start
      if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLossError(self._non_finite_message(
            step, step + num_steps, values))
      step += num_steps
      # The first loop includes tracing and compilation: time from its end.
      if start_time is None:
        start_time, start_step = time.time(), step
        rate = num_steps / max(loop_time, 1e-9)
      else:
        rate = (step - start_step) / max(time.time() - start_time, 1e-9)
      if (step // self.log_every_steps > last_log_step // self.log_every_steps
          or step == self.total_steps):
        self._log_train(step, values, rate)
        last_log_step = step
      if step % self.checkpoint_every_steps == 0 or step == self.total_steps:
        saved = self.checkpointer.save()
        if self.chief:
          logging.info("Saved checkpoint %s.", saved)
      if (evaluate_every and self.eval_every_steps and
          step % self.eval_every_steps == 0 and step != self.total_steps):
        self.evaluate()
    self.write_operative_config()
    return values

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

  def _corrupt_record_message(self, error):
    """Names the corrupted file and record (scanning the inputs on the host)."""
    pattern = self.task.input_files(training=True)
    found = readers.locate_corrupt_record(pattern) if pattern else None
    where = (f"{found[0]}, record {found[1]} (0-based)" if found else
             f"a file matching {pattern!r}" if pattern else "the input data")
    return (f"Corrupted TFRecord in the training data: {where}: "
            f"{error.message.splitlines()[0]}. Nothing was saved after the "
            f"last checkpoint ({self.checkpointer.latest}). Re-create that "
            "file with its conversion script, or leave it out of the file "
            "pattern, then run the same command again to resume.")

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
      grads = _poison_unless_all_finite(grads)
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
      for _ in tf.range(num_steps):
        features, labels = next(iterator)
        per_replica = strategy.run(replica_step, args=(features, labels))
        sums = {name: sums[name] + strategy.reduce(
            tf.distribute.ReduceOp.SUM, per_replica[name], axis=None)
                for name in names}
      self.global_step.assign_add(tf.cast(num_steps, tf.int64))
      count = tf.cast(num_steps, tf.float32)
      return {name: sums[name] / count for name in names}

    return train_loop

  def _non_finite_message(self, first_step, last_step, values):
    """The NonFiniteLossError text; steps are counted from 1."""
    latest = self.checkpointer.latest
    terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
    return (
        f"Non-finite loss in steps {first_step + 1}..{last_step} (mean over "
        f"the loop: {terms}). Nothing was saved after the last good "
        f"checkpoint: "
        f"{latest or 'none yet (no checkpoint was written)'}. Rerunning "
        f"resumes from it. Hints: lower the learning rate "
        f"(learning_rate_schedule.base_learning_rate), use a longer warmup "
        f"(learning_rate_schedule.warmup_epochs), or clip gradients "
        f"(build_optimizer.clipnorm); check the inputs and labels.")

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
                 _format_seconds(remaining))
    scalars = dict(values, learning_rate=learning_rate,
                   examples_per_second=examples_per_second)
    self._write_summaries("train", step, scalars)

  # Evaluation.

  def evaluate(self):
    """Evaluates the current model on one pass of the eval split.

    Builds the model and restores the latest checkpoint when nothing was
    built yet (eval mode).

    Returns:
      dict metric name -> float, plus "step".
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
          if value.dtype not in _GATHER_DTYPES:
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
      result = self.evaluate()
      if step >= self.total_steps:
        logging.info("Evaluated the final step %d; done.", step)
        break
    else:
      logging.warning("No new checkpoint in %s within %s s; stopping.",
                      self.model_dir, timeout)
    return result

  # Files.

  def _write_summaries(self, name, step, scalars):
    if not self.chief:
      return
    if name not in self._writers:
      self._writers[name] = tf.summary.create_file_writer(
          tf.io.gfile.join(self.model_dir, name))
    writer = self._writers[name]
    with writer.as_default(step=step):
      for key, value in scalars.items():
        # tf.summary.scalar needs the tensorboard package; this is the same
        # record (TensorBoard's "scalars" plugin) without it.
        tf.summary.write(key, tf.constant(value, tf.float32),
                         metadata=_SCALAR_METADATA)
    writer.flush()

  def write_operative_config(self):
    """Writes gin's operative config (what was actually used) on the chief."""
    if self.chief:
      gin_config.write_config(self.model_dir,
                              gin_config.OPERATIVE_CONFIG_FILE,
                              gin.operative_config_str())


def _poison_unless_all_finite(grads):
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


def _parse_modules(modules):
  """("backbone", ...) of "backbone", "backbone,decoder" or a sequence."""
  if isinstance(modules, str):
    modules = [m.strip() for m in modules.split(",") if m.strip()]
  modules = tuple(modules or ())
  unknown = [m for m in modules if m not in checkpointing.MODULES]
  if not modules or unknown:
    raise ValueError(f"Trainer.init_checkpoint_modules={modules!r}: expected "
                     f"one or more of {', '.join(checkpointing.MODULES)}.")
  return modules


def _format_seconds(seconds):
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@gin.configurable(denylist=["task", "mode", "model_dir", "strategy"])
def run_experiment(task, mode, model_dir, strategy,
                   continuous_eval_timeout=None):
  """Runs `mode` for `task` in `model_dir`; Trainer settings come from gin.

  Args:
    task: the Task instance (official.train gets it from gin's
      `experiment.task`).
    mode: one of MODES.
    model_dir: directory for everything the run writes.
    strategy: the tf.distribute.Strategy.
    continuous_eval_timeout: continuous_eval gives up after this many seconds
      without a new checkpoint (None: waits forever).

  Returns:
    The final eval metrics dict (eval modes), or the last losses (train).
  """
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; expected one of "
                     f"{', '.join(MODES)}.")
  chief = distribute.is_chief(strategy)
  if chief:
    ensure_writable(model_dir)
    if mode in ("train", "train_and_eval"):
      gin_config.write_config(model_dir, gin_config.CONFIG_FILE,
                              gin.config_str())
  trainer = Trainer(task, model_dir, strategy)
  if mode == "train":
    return trainer.train()
  if mode == "train_and_eval":
    trainer.train(evaluate_every=True)
    return trainer.evaluate()
  if mode == "eval":
    return trainer.evaluate()
  return trainer.continuous_evaluate(timeout=continuous_eval_timeout)
