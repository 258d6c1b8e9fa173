"""The training and evaluation loop.

Why a compact custom loop rather than `model.fit`:
- Loss normalisation follows the Task contract exactly: each replica returns
  its share of the global-batch mean (local sum / global batch size), the
  replicas' shares are summed, and weight decay is added once (divided by the
  number of replicas on each). `fit` would average per-replica means itself.
- Every loss term the task returns is logged and written to TensorBoard, not
  just one scalar.
- A NaN/Inf guard runs after every host loop, before anything is saved, so the
  last good checkpoint is never overwritten by a diverged model; since a
  step's loss is computed before its update, the state itself (weights,
  optimizer slots, batch-norm statistics) is also checked before every save,
  and a checkpoint whose next loss is not finite is moved aside
  (official/core/train_loop.py).
- SIGTERM (preemption) saves the next step boundary and stops the run
  (official/core/preemption.py).
- The host runs `steps_per_loop` steps per call (a `tf.range` loop around
  `strategy.run` inside one tf.function), which TPUs need so the host never
  paces the accelerator; loops end exactly on checkpoint and evaluation
  boundaries.
- XLA is asked for explicitly: Keras 3's `jit_compile="auto"` turns XLA off
  whenever a distribution strategy is set (docs/keras3_notes.md).

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
eval/ TensorBoard event files, eval_metrics.json ({"step": N, metric: value};
the final evaluation adds "expected_result", the verdict on the experiment's
declared result),
init_checkpoint.json (fine-tuning: what was and was not restored),
inherited_weights.json (weight inheritance: what was copied, aliased, left
at its initial value, not copied for its shape) and inheritable_weights.npz
(every weight by layer-name key, for the next search trial to inherit).

Weight inheritance (architecture search, SP-NAS paper Sec. 3.1, Algorithm 1):
`inherit_weights_from` (.npz files or model_dirs of finished runs) copies
into a fresh run every variable whose layer-name key one of them holds,
whatever else differs between the two architectures
(official/core/weight_inheritance.py); `save_inheritable_weights` makes the
chief write MODEL_DIR/inheritable_weights.npz when training is over.

Where each concern lives: the train loop in official/core/train_loop.py,
padded evaluation, multi-worker gathering and the expected-result check in
official/core/evaluation_loop.py, fine-tuning reports in
official/core/fine_tuning.py, training errors and corrupt-record diagnosis
in official/core/diagnostics.py; this module builds the model and runs the
experiment.
"""

import math
import uuid

import gin
import keras
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from modeling.backbones import spnet_spec
from official.core import checkpointing
from official.core import distribute
from official.core import evaluation_loop
from official.core import expectations
from official.core import fine_tuning
from official.core import gin_config
from official.core import optimization
from official.core import precision as precision_lib
from official.core import schedules
from official.core import train_loop
from official.core import weight_inheritance

# Names callers and gin files know from this module.
# pylint: disable=unused-import
from official.core.diagnostics import CorruptRecordError
from official.core.diagnostics import NonFiniteLossError
from official.core.fine_tuning import INIT_REPORT_FILE
from official.core.fine_tuning import required_init_checkpoint
# pylint: enable=unused-import

MODES = ("train", "eval", "train_and_eval", "continuous_eval")

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


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
class Trainer(train_loop.TrainLoop, evaluation_loop.EvaluationLoop,
              fine_tuning.FineTuning, weight_inheritance.WeightInheritance):
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
    inherit_weights_from: architecture search (SP-NAS paper Sec. 3.1, Algorithm
      1: a candidate trains from the current best's weights): None, or a
      path or list of paths, each a model_dir of a run that saved
      inheritable weights or an .npz written by
      weight_inheritance.save_inheritable_weights. When the run starts
      fresh (never on resume), every variable whose layer-name key a source
      holds is copied, earlier sources first; the rest keep their initial
      values. Logged (counts and first names) and written to
      MODEL_DIR/inherited_weights.json. A missing source raises
      FileNotFoundError before the first step. Exclusive with
      init_checkpoint (ValueError).
    inherit_weights_aliases: (regex, replacement) rules tried on a key that
      no source holds (weight_inheritance.inherit_weights); None: the
      SP-NAS rules (modeling/backbones/spnet_spec.py INHERITANCE_ALIASES),
      under which a parallel subnet's block "sub2_block7" inherits the
      serial block "block7" (Sec. 3.2).
    frozen_modules: None, or "backbone" / "decoder" (or both, as for
      init_checkpoint_modules): those modules are not trained (Keras'
      trainable=False: no gradient, no optimizer slot, and their batch norms
      normalise with their moving statistics). Model Garden's
      `freeze_backbone`; the Auto-FPN search protocol (Sec. 4.1, Table 7)
      trains necks and heads on a frozen backbone.
    save_inheritable_weights: the chief writes every weight to
      MODEL_DIR/inheritable_weights.npz when training is over: after the
      last step, and also when a resumed run has no step left to train.

  The experiment's `expected_result.*` bindings (official/core/expectations.py)
  are read when the Trainer is made and checked by the run's final
  evaluation (`evaluate(check_expected=True)`).
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
               init_checkpoint_modules="backbone", inherit_weights_from=None,
               inherit_weights_aliases=None, save_inheritable_weights=False,
               frozen_modules=None):
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
    self.init_checkpoint_modules = fine_tuning.parse_modules(
        init_checkpoint_modules)
    self.init_report = None
    self.frozen_modules = (fine_tuning.parse_modules(frozen_modules)
                           if frozen_modules else ())
    if "all" in self.frozen_modules:
      raise ValueError("Trainer.frozen_modules='all' would train nothing; "
                       "expected 'backbone', 'decoder' or both.")
    self.inherit_weights_from = _inherit_sources(inherit_weights_from)
    if self.inherit_weights_from and self.init_checkpoint:
      raise ValueError(
          f"Trainer.inherit_weights_from={self.inherit_weights_from!r} and "
          f"Trainer.init_checkpoint={self.init_checkpoint!r} are both set; "
          "choose one: inherit_weights_from copies every variable by layer "
          "name from another architecture (search trials), init_checkpoint "
          "restores whole modules of the same architecture (fine-tuning).")
    if inherit_weights_aliases is None:
      inherit_weights_aliases = spnet_spec.INHERITANCE_ALIASES
    # Compiled here so that a bad rule fails before anything is built.
    weight_inheritance.compile_aliases(inherit_weights_aliases)
    self.inherit_weights_aliases = tuple(inherit_weights_aliases)
    self.save_inheritable_weights = bool(save_inheritable_weights)
    self.inherit_report = None
    # Read here, so that a malformed declaration fails before training and
    # the declaration is part of the operative config.
    self.expectation = expectations.expected_result()
    self.last_losses = None

    self.model = None
    self.optimizer = None
    self.global_step = None
    self.checkpointer = None
    self._for_training = None
    self._eval_step = None
    self._writers = {}

  def train(self, evaluate_every=False):
    """TrainLoop.train, with weight inheritance before and after it.

    A fresh run first inherits from `inherit_weights_from`; once training
    is over (or was already), the chief writes inheritable_weights.npz when
    `save_inheritable_weights` is set (see the class docstring). Arguments,
    return value and errors are TrainLoop.train's.
    """
    self.inherit_weights_if_fresh()
    values = super().train(evaluate_every=evaluate_every)
    if self.save_inheritable_weights:
      self.write_inheritable_weights()
    return values

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
        self._freeze(self.model)
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

  def _freeze(self, model):
    """Sets trainable=False on the modules of `frozen_modules`.

    Raises:
      ValueError: a named module the model does not have.
    """
    if not self.frozen_modules:
      return
    modules = checkpointing.model_modules(model)
    for name in self.frozen_modules:
      if name not in modules:
        raise ValueError(
            f"Trainer.frozen_modules names {name!r}, but {model.name} has "
            f"only {sorted(m for m in modules if m != 'all')}.")
      modules[name].trainable = False
      logging.info("Frozen: %s (%d weights not trained).", name,
                   len(modules[name].weights))

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


def _inherit_sources(value):
  """Trainer.inherit_weights_from as a list of paths ([] for None)."""
  if value is None or value == "":
    return []
  paths = [value] if isinstance(value, str) else value
  if not isinstance(paths, (list, tuple)) or not all(
      isinstance(p, str) and p for p in paths):
    raise ValueError(
        f"Trainer.inherit_weights_from must be None, a path or a list of "
        f"paths (model_dirs or .npz files), got {value!r}.")
  return list(paths)


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
    The final eval metrics dict (eval modes; with "expected_result" when the
    experiment declares one: a result that does not hold is logged and
    recorded, not raised, so the exit status stays 0), or the last losses
    (train).
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
    return trainer.evaluate(check_expected=True)
  if mode == "eval":
    return trainer.evaluate(check_expected=True)
  return trainer.continuous_evaluate(timeout=continuous_eval_timeout)
