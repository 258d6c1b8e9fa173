"""The Auto-FPN gradient-based search (Xu et al., ICCV 2019, Sec. 3.4-3.5, 4.1).

One training run, not Vizier trials:

  python -m official.search --space=auto_fpn_neck --controller=darts \
    --search_dir=DIR --gin_file=PROXY.gin [--gin_param=...] \
    [--search_options=size=M,...]

The proxy gin file is an experiment whose model holds a super-network: the
Auto-fusion neck (modeling/decoders/auto_fpn.py, `auto_fpn.search = True`)
for --space=auto_fpn_neck, the Auto-head (modeling/heads/auto_head.py,
`auto_head.search = True` as the Faster R-CNN box head) for
--space=auto_fpn_head. Every link or edge mixes its operations with the
softmax of its architecture weights (Sec. 3.2, 3.4).

The search (Sec. 3.4, first-order DARTS):
- The training set is split at random (seeded) into two halves of equal
  size, trainA and trainB (Sec. 4.1: "We randomly select half of the images
  in training set as trainA, and the other half as trainB"), written once
  as TFRecords under SEARCH_DIR/split/.
- Each step updates the network weights w on a batch of trainA with
  grad_w L_trainA(w, alpha), then, once the architecture phase has begun,
  the architecture weights alpha on a batch of trainB with
  grad_alpha [L_trainB(w, alpha) + lambda C(alpha)]. Sec. 3.4 writes the
  second update as "nabla_w L_trainB"; the gradient is with respect to the
  architecture parameters alpha, beta (the parameters being updated; DARTS
  Sec. 2.3, whose first-order form the paper adopts), which is what is
  computed here.
- Network weights: SGD, momentum 0.9, learning rate cosine from 0.02 to
  0.001 over the search, L2 weight decay 1e-4 on kernels (Sec. 4.1;
  official/core/optimization.py: weight_decay_loss). Architecture weights:
  Adam, learning rate 0.003, weight decay 1e-3 (Sec. 4.1) applied as an L2
  term added to the gradient (PyTorch's Adam weight_decay, which the
  authors used: "We conduct all experiments using Pytorch"); Adam's betas
  are Keras' defaults (0.9, 0.999): the paper does not give them.
- The architecture phase starts after the first third of the epochs
  (Sec. 4.1: "We begin optimizing architecture parameters after the 1/3 of
  the total epochs"; Table 7 calls it "starting ... in the middle of
  searching"). The Sec. 4.1 figure, a precise one, is the default;
  --search_options=arch_start_fraction=0.5 gives the other reading.
- The backbone is frozen (Table 7: "w/o frozen backbone" loses 17 mAP on
  the neck search): its weights are left out of the network weights and
  its batch norm runs in inference mode (Keras' trainable=False). Batch-norm
  moving statistics elsewhere follow every training-mode forward pass, the
  architecture steps' included (as in DARTS); they are not weights.
- The loss is the task's total loss plus lambda * C(alpha) (Sec. 3.5; for
  the neck and head, auto_fpn_ops.expected_cost), lambda = 0.2, 0.02,
  0.002 for the small, middle and big settings (Sec. 4.1), halved for
  PASCAL VOC ("half size for VOC"): --search_options=size=S|M|L,voc=true,
  or resource_lambda=X.
- One epoch is one pass over trainA: ceil(|trainA| / batch) steps;
  Trainer.train_epochs and Trainer.train_batch_size of the proxy give the
  length and the batch (Sec. 4.1: 24 epochs COCO and BDD, 36 VOC, batch 2
  per GPU).

Resumption: every Trainer.checkpoint_every_steps steps (and at the end)
SEARCH_DIR/checkpoints/ receives the model (network and architecture
weights), both optimizers, the step and the positions of both data
iterators (tf.data iterator checkpoints: shuffle buffers included, so a
resumed search reads the same batches as an uninterrupted one). Running the
same command again continues from the latest checkpoint; no step is
re-done, and alpha_log.jsonl drops the lines written after that checkpoint.
A search whose settings differ from the recorded ones (darts_settings.json)
is refused.

Outputs in SEARCH_DIR:
- best_auto_fpn_neck.gin / best_auto_fpn_head.gin: the decoded genotype
  (arg-max per link or edge, every node keeping an input, Sec. 3.2) as gin
  bindings; loaded after the proxy it builds the discrete module, trained
  from scratch with `python -m official.train` (Sec. 4.2). The head's file
  repeats the neck bindings it was searched with, so it stands alone.
- alpha_log.jsonl: per logged step, the softmax weights of every link or
  edge (one line per module and step).
- alpha.png: their evolution (mean weight of each operation over the links
  against the step) and the final weights.
- search_result.json: genotype, lambda, C(alpha), the decoded module's
  parameter count, the operation shares, steps and wall time.

Collapse warning: DARTS-style searches are reported to drift towards
parameter-free operations (skip connections). The decoded share of `skip`
and `none` is printed, with a WARNING above COLLAPSE_SHARE (0.75): a
uniformly random architecture of these 8-operation spaces has 2/8 = 25%
parameter-free edges and the cheapest resource setting is expected to raise
that, but beyond three quarters fewer than one edge in four computes
anything, and the decoded module is mostly wiring.
"""

import copy
import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from modeling.decoders.auto_fpn import AutoFusionNeck, neck_parameter_count
from modeling.heads.auto_head import AutoHead, head_parameter_count
from modeling.layers import auto_fpn_ops
from dataloaders import readers
from official.core import checkpointing
from official.core import distribute
from official.core import gin_config
from official.core import optimization
from official.search import trial_runner

CONTROLLER = "darts"
SPACES = ("auto_fpn_neck", "auto_fpn_head")
# Sec. 4.1: small, middle and big resource settings (halved for VOC).
SIZE_LAMBDAS = {"S": 0.2, "M": 0.02, "L": 0.002}
COLLAPSE_SHARE = 0.75
SETTINGS_FILE = "darts_settings.json"
ALPHA_LOG = "alpha_log.jsonl"
PLOT_FILE = "alpha.png"
RESULT_FILE = "search_result.json"
CHECKPOINT_DIR = "checkpoints"
SPLIT_DIR = "split"
BEST_GIN = {"auto_fpn_neck": "best_auto_fpn_neck.gin",
            "auto_fpn_head": "best_auto_fpn_head.gin"}


@dataclasses.dataclass
class DartsOptions:
  """--search_options of a darts search (module docstring).

  Attributes:
    size: "S", "M" or "L" (Sec. 4.1 lambda 0.2, 0.02, 0.002).
    voc: halve lambda (Sec. 4.1, PASCAL VOC).
    resource_lambda: lambda itself; overrides size and voc when set.
    neck_gin: the decoded neck's gin file (best_auto_fpn_neck.gin) or the
      neck search's directory; required by --space=auto_fpn_head (Table 7:
      searching the head on the searched neck gains 2.9 mAP).
    freeze_backbone: leave the backbone out of the trained weights.
    arch_start_fraction: share of the epochs before the architecture phase.
    network_lr, network_lr_min, network_momentum, network_weight_decay: SGD
      of the network weights.
    arch_lr, arch_weight_decay: Adam of the architecture weights.
    log_every_steps: progress and alpha_log.jsonl cadence (default: 1/4
      epoch, at least 1 step).
  """
  size: str = "M"
  voc: bool = False
  resource_lambda: float = None
  neck_gin: str = None
  freeze_backbone: bool = True
  arch_start_fraction: float = 1.0 / 3.0
  network_lr: float = 0.02
  network_lr_min: float = 0.001
  network_momentum: float = 0.9
  network_weight_decay: float = 1e-4
  arch_lr: float = 0.003
  arch_weight_decay: float = 1e-3
  log_every_steps: int = None

  @property
  def lambda_value(self):
    if self.resource_lambda is not None:
      return float(self.resource_lambda)
    return SIZE_LAMBDAS[self.size] * (0.5 if self.voc else 1.0)


def _parse_bool(key, text):
  lowered = str(text).strip().lower()
  if lowered in ("1", "true", "yes"):
    return True
  if lowered in ("0", "false", "no"):
    return False
  raise ValueError(f"--search_options: {key}={text!r} is not a boolean "
                   "(true or false).")


def parse_options(options):
  """DartsOptions from --search_options (dict str -> str or values).

  Raises:
    ValueError: an unknown key (naming the known ones), or a value of the
      wrong kind or range, naming the key.
  """
  fields = {f.name: f for f in dataclasses.fields(DartsOptions)}
  values = {}
  for key, text in dict(options or {}).items():
    if key not in fields:
      raise ValueError(f"--search_options: unknown key {key!r} for "
                       f"--controller={CONTROLLER}; known: {sorted(fields)}.")
    if key in ("voc", "freeze_backbone"):
      values[key] = _parse_bool(key, text)
    elif key in ("size", "neck_gin"):
      values[key] = str(text)
    else:
      try:
        number = float(text)
      except (TypeError, ValueError):
        raise ValueError(f"--search_options: {key}={text!r} is not a "
                         "number.") from None
      if key == "log_every_steps":
        if number != int(number) or number < 1:
          raise ValueError(f"--search_options: log_every_steps={text!r} must "
                           "be an integer >= 1.")
        number = int(number)
      elif number < 0 or not math.isfinite(number):
        raise ValueError(f"--search_options: {key}={text!r} must be a finite "
                         "number >= 0.")
      values[key] = number
  parsed = DartsOptions(**values)
  if parsed.size not in SIZE_LAMBDAS:
    raise ValueError(f"--search_options: size={parsed.size!r}; expected one "
                     f"of {sorted(SIZE_LAMBDAS)} (Auto-FPN Sec. 4.1: lambda "
                     f"{SIZE_LAMBDAS}).")
  if not 0.0 <= parsed.arch_start_fraction < 1.0:
    raise ValueError(f"--search_options: arch_start_fraction="
                     f"{parsed.arch_start_fraction} must be in [0, 1).")
  return parsed


def _neck_gin_path(neck_gin):
  """The decoded neck's gin file, from a file or a neck search directory."""
  if tf.io.gfile.isdir(neck_gin):
    path = os.path.join(neck_gin, BEST_GIN["auto_fpn_neck"])
  else:
    path = neck_gin
  if not tf.io.gfile.exists(path):
    raise ValueError(f"--search_options: neck_gin={neck_gin!r}: no decoded "
                     f"neck there (expected {BEST_GIN['auto_fpn_neck']} or "
                     "its directory; run --space=auto_fpn_neck first).")
  return path


def search_bindings(path):
  """The gin binding lines of a decoded file (comments and blanks dropped)."""
  with tf.io.gfile.GFile(path) as f:
    return [line.rstrip() for line in f
            if line.strip() and not line.lstrip().startswith("#")]


# Data.


def split_training_records(task, split_dir, seed):
  """Splits the task's training records into trainA / trainB (Sec. 4.1).

  A seeded random permutation of the training examples; the first half
  (ceil(n / 2)) is trainA, the rest trainB. Written once, with a manifest;
  a later call with the same source and seed reads the manifest.

  Args:
    task: a DatasetTask reading TFRecords (its train_pattern).
    split_dir: output directory.
    seed: permutation seed.
  Returns:
    dict "trainA"/"trainB" -> {"pattern": str, "num": int}.
  Raises:
    ValueError: the task reads no TFRecords (TFDS), has fewer than 2
      training examples, or split_dir holds a split of other data or seed.
  """
  pattern = task.record_pattern(training=True)
  if pattern is None:
    raise ValueError(f"{type(task).__name__} reads its training data from "
                     "TFDS; the darts search splits TFRecords only.")
  files = readers.list_files(pattern)
  manifest_path = os.path.join(split_dir, "split.json")
  source = {"pattern": pattern, "files": files, "seed": int(seed)}
  if tf.io.gfile.exists(manifest_path):
    with tf.io.gfile.GFile(manifest_path) as f:
      manifest = json.load(f)
    if manifest["source"] != source:
      raise ValueError(
          f"{split_dir} holds a trainA/trainB split of {manifest['source']}, "
          f"not of {source}; use another --search_dir.")
    return manifest["parts"]
  count = sum(1 for _ in tf.data.TFRecordDataset(files))
  if count < 2:
    raise ValueError(f"{pattern} holds {count} training example(s); the "
                     "search needs at least 2 to split into trainA and "
                     "trainB.")
  order = np.random.default_rng(seed).permutation(count)
  in_a = np.zeros(count, bool)
  in_a[order[:(count + 1) // 2]] = True
  tf.io.gfile.makedirs(split_dir)
  paths = {k: os.path.join(split_dir, f"{k}.tfrecord")
           for k in ("trainA", "trainB")}
  tmp = {k: f"{p}.tmp" for k, p in paths.items()}
  writers = {k: tf.io.TFRecordWriter(p) for k, p in tmp.items()}
  for index, record in enumerate(tf.data.TFRecordDataset(files)):
    writers["trainA" if in_a[index] else "trainB"].write(record.numpy())
  for k, writer in writers.items():
    writer.close()
    tf.io.gfile.rename(tmp[k], paths[k], overwrite=True)
  parts = {"trainA": {"pattern": paths["trainA"], "num": int(in_a.sum())},
           "trainB": {"pattern": paths["trainB"],
                      "num": int(count - in_a.sum())}}
  _write_json(manifest_path, {"source": source, "parts": parts})
  return parts


def task_on_records(task, pattern, num):
  """A shallow copy of `task` whose training split is `pattern` (num examples)."""
  part = copy.copy(task)
  part._data = dict(task.data, train_pattern=pattern, num_train=num)  # pylint: disable=protected-access
  return part


# Files.


def _write_json(path, value):
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(value, f, indent=1)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _write_text(path, text):
  tmp = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_alpha_log(search_dir):
  """The records of SEARCH_DIR/alpha_log.jsonl (list of dict)."""
  path = os.path.join(search_dir, ALPHA_LOG)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_alpha_plot(records, path):
  """alpha.png: per module, the mean softmax weight of each operation over
  its links or edges against the step (left), the final weights (right)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  modules = sorted({r["module"] for r in records})
  fig, axes = plt.subplots(len(modules), 2, figsize=(12, 4.5 * len(modules)),
                           dpi=90, squeeze=False)
  for row, module in enumerate(modules):
    mine = [r for r in records if r["module"] == module]
    ops = mine[-1]["ops"]
    steps = [r["step"] for r in mine]
    means = np.array([np.mean(r["softmax"], axis=0) for r in mine])
    ax = axes[row][0]
    for k, op in enumerate(ops):
      ax.plot(steps, means[:, k], label=op)
    if mine[-1].get("arch_start_step") is not None:
      ax.axvline(mine[-1]["arch_start_step"], color="gray", linestyle=":",
                 label="architecture updates start")
    ax.set_xlabel("step")
    ax.set_ylabel("mean softmax weight over the edges")
    ax.set_title(f"{module}: operation weights")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[row][1]
    final = np.array(mine[-1]["softmax"])
    image = ax.imshow(final, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(ops)))
    ax.set_xticklabels(ops, rotation=60, fontsize=7)
    names = mine[-1]["edges"]
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=6)
    ax.set_title(f"{module}: softmax at step {steps[-1]}")
    fig.colorbar(image, ax=ax)
  fig.tight_layout()
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp)
  plt.close(fig)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _format_seconds(seconds):
  seconds = int(round(max(seconds, 0)))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# The search.


def searched_modules(model):
  """The super-network modules of a model: layers with architecture weights.

  Returns:
    list of AutoFusionNeck / AutoHead with search=True, in layer order.
  """
  found, seen = [], set()
  for layer in model._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
    if (isinstance(layer, (AutoFusionNeck, AutoHead)) and layer.search and
        id(layer) not in seen):
      seen.add(id(layer))
      found.append(layer)
  return found


def decoded_parameter_count(module, genotype):
  """Weights of the discrete module of `genotype`, batch norm included."""
  if isinstance(module, AutoFusionNeck):
    config = module.get_config()
    return neck_parameter_count(
        genotype, config["input_specs"], config["min_level"],
        config["max_level"], config["num_filters"], use_batch_norm=True)
  channels = module._roi_channels  # pylint: disable=protected-access
  return head_parameter_count(genotype, channels, module.num_classes,
                              module.num_filters, module.class_agnostic_boxes,
                              use_batch_norm=True)


class DartsSearch:
  """One Auto-FPN search in SEARCH_DIR (module docstring).

  Args:
    space: "auto_fpn_neck" or "auto_fpn_head".
    search_dir: where everything is written.
    gin_files: the proxy's gin files.
    gin_params: extra gin bindings.
    options: DartsOptions, or a dict for parse_options.
    seed: data split, initialisation and data order.
  Raises:
    ValueError: an unknown space, options of the wrong form, a proxy without
      the super-network the space searches (or, for the head, a neck still
      searched), or settings that differ from those recorded in search_dir.
  """

  def __init__(self, space, search_dir, gin_files, gin_params=(),
               options=None, seed=0):
    if space not in SPACES:
      raise ValueError(f"--controller={CONTROLLER} searches the spaces "
                       f"{SPACES}, not {space!r}.")
    self.space = space
    self.search_dir = search_dir
    self.options = (options if isinstance(options, DartsOptions)
                    else parse_options(options))
    self.seed = int(seed)
    self.gin_files = [trial_runner.resolve_gin_file(p) for p in gin_files]
    self.gin_params = list(gin_params)
    self.neck_bindings = []
    if space == "auto_fpn_head":
      if not self.options.neck_gin:
        raise ValueError(
            "--space=auto_fpn_head searches the head on the decoded neck "
            "(Auto-FPN Sec. 4.1: the modules are searched in turn; Table 7: "
            "+2.9 mAP with the searched neck); give --search_options="
            "neck_gin=NECK_SEARCH_DIR (or its best_auto_fpn_neck.gin).")
      self.neck_bindings = search_bindings(_neck_gin_path(
          self.options.neck_gin))
    self.settings = {
        "space": space, "controller": CONTROLLER, "seed": self.seed,
        "gin_files": list(gin_files), "gin_params": self.gin_params,
        "options": dataclasses.asdict(self.options),
        "neck_bindings": self.neck_bindings,
    }
    self.model = None

  # Setting up.

  def _check_settings(self):
    path = os.path.join(self.search_dir, SETTINGS_FILE)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)
      if recorded != json.loads(json.dumps(self.settings)):
        changed = sorted(k for k in set(recorded) | set(self.settings)
                         if recorded.get(k) != json.loads(json.dumps(
                             self.settings)).get(k))
        raise ValueError(
            f"--search_dir={self.search_dir} holds a darts search with other "
            f"settings ({', '.join(changed)} differ: recorded "
            f"{ {k: recorded.get(k) for k in changed} }); use another "
            "--search_dir or the same flags.")
    else:
      _write_json(path, self.settings)

  def build(self):
    """Parses gin, splits the data, builds the model and the optimizers."""
    # pylint: disable=g-import-not-at-top
    from official import registry  # Registers what the gin files name.
    from official.core import trainer as trainer_lib
    # pylint: enable=g-import-not-at-top
    tf.io.gfile.makedirs(self.search_dir)
    self._check_settings()
    gin_config.parse_gin(self.gin_files,
                         self.gin_params + self.neck_bindings,
                         skip_unknown=False)
    task = registry.experiment()
    if hasattr(task, "seed") and task.seed is None:
      task.seed = self.seed
    task.prepare_data()
    parts = split_training_records(
        task, os.path.join(self.search_dir, SPLIT_DIR), self.seed)
    self.task_a = task_on_records(task, parts["trainA"]["pattern"],
                                  parts["trainA"]["num"])
    self.task_b = task_on_records(task, parts["trainB"]["pattern"],
                                  parts["trainB"]["num"])
    self.parts = parts
    # One device: the search is one process (Sec. 4.1 uses 8 GPUs; a
    # multi-device search is not implemented here).
    strategy = distribute.get_strategy("one_device")
    self.strategy = strategy
    trainer = trainer_lib.Trainer(self.task_a,
                                  os.path.join(self.search_dir, "model"),
                                  strategy)
    keras.utils.set_random_seed(self.seed)
    tf.config.experimental.enable_op_determinism()
    trainer.build(for_training=False)
    self.trainer = trainer
    model = self.model = trainer.model
    self.batch_size = trainer.train_batch_size
    self.steps_per_epoch = trainer.steps_per_epoch
    self.total_steps = trainer.total_steps
    self.arch_start_step = int(round(self.options.arch_start_fraction *
                                     trainer.schedule_steps))
    self.log_every = self.options.log_every_steps or max(
        1, self.steps_per_epoch // 4)
    self.checkpoint_every = trainer.checkpoint_every_steps

    modules = searched_modules(model)
    wanted = AutoFusionNeck if self.space == "auto_fpn_neck" else AutoHead
    targets = [m for m in modules if isinstance(m, wanted)]
    others = [m for m in modules if not isinstance(m, wanted)]
    if len(targets) != 1 or others:
      flag = ("auto_fpn.search = True" if wanted is AutoFusionNeck else
              "auto_head.search = True (FasterRCNNTask.box_head = @auto_head)")
      raise ValueError(
          f"--space={self.space}: the proxy {self.settings['gin_files']} must "
          f"build exactly one {wanted.__name__} super-network ({flag}) and "
          f"no other; it builds {[type(m).__name__ for m in modules]}"
          + (" (the head is searched on the decoded neck: neck_gin)"
             if others else "") + ".")
    self.module = targets[0]
    if isinstance(self.module, AutoHead):
      # The ROI feature width: the input side of the first cell's 1x1 conv
      # (every cell of a super-network is built and reads both inputs).
      self.module._roi_channels = int(  # pylint: disable=protected-access
          self.module.cells[0].preprocess[0].kernel.shape[-2])
    self.edge_names = (self.module.link_names if isinstance(
        self.module, AutoFusionNeck) else self.module.edge_names)
    self.ops = (auto_fpn_ops.NECK_OPS if isinstance(self.module, AutoFusionNeck)
                else auto_fpn_ops.HEAD_OPS)
    self.cost_table = tf.constant(self.module.cost_table(), tf.float32)

    backbone = checkpointing.model_modules(model).get("backbone")
    if "backbone" in trainer.frozen_modules and not self.options.freeze_backbone:
      raise ValueError(
          f"--space={self.space}: --search_options=freeze_backbone=false, but "
          f"the proxy {self.settings['gin_files']} freezes the backbone "
          "(Trainer.frozen_modules = 'backbone'); add --gin_param="
          "\"Trainer.frozen_modules = None\" to train it in the search, or "
          "drop freeze_backbone=false.")
    if self.options.freeze_backbone:
      if backbone is None:
        raise ValueError("freeze_backbone: the model has no backbone.")
      backbone.trainable = False
    self.architecture_weights = list(self.module.architecture_weights)
    arch_ids = {id(v) for v in self.architecture_weights}
    self.network_weights = [v for v in model.trainable_variables
                            if id(v) not in arch_ids]
    self.backbone = backbone

    opts = self.options
    schedule = keras.optimizers.schedules.CosineDecay(
        opts.network_lr, max(trainer.schedule_steps, 1),
        alpha=opts.network_lr_min / opts.network_lr if opts.network_lr else 0)
    with strategy.scope():
      self.network_optimizer = keras.optimizers.SGD(
          learning_rate=schedule, momentum=opts.network_momentum)
      self.arch_optimizer = keras.optimizers.Adam(learning_rate=opts.arch_lr)
      # Keras 3 creates slots lazily (docs/keras3_notes.md); they must exist
      # before a checkpoint is restored.
      self.network_optimizer.build(self.network_weights)
      self.arch_optimizer.build(self.architecture_weights)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                              name="step")
      # A variable, so that one traced step serves any lambda (tests).
      self.resource_lambda = tf.Variable(self.options.lambda_value,
                                         dtype=tf.float32, trainable=False,
                                         name="resource_lambda")
    self.iterator_a = iter(self.task_a.build_inputs(
        training=True, global_batch_size=self.batch_size))
    self.iterator_b = iter(self.task_b.build_inputs(
        training=True, global_batch_size=self.batch_size))
    self.checkpoint = tf.train.Checkpoint(
        model=model, network_optimizer=self.network_optimizer,
        architecture_optimizer=self.arch_optimizer, step=self.step,
        trainA=self.iterator_a, trainB=self.iterator_b)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(self.search_dir, CHECKPOINT_DIR),
        max_to_keep=2)
    # strategy.run gives the replica context Keras' optimizers apply in.
    self._network_step = tf.function(lambda features, labels: strategy.run(
        self._network_step_fn, args=(features, labels)))
    self._arch_step = tf.function(lambda features, labels: strategy.run(
        self._arch_step_fn, args=(features, labels)))
    return self

  # Steps.

  def _loss(self, features, labels):
    outputs = self.model(features, training=True)
    losses = self.task_a.compute_losses(outputs, labels, self.batch_size)
    return tf.cast(losses["total_loss"], tf.float32)

  def resource_cost(self):
    """C(alpha) of the searched module (Sec. 3.5), float32 scalar."""
    return auto_fpn_ops.expected_cost(self.module.alpha, self.cost_table)

  def _network_step_fn(self, features, labels):
    """w <- w - lr grad_w [L_trainA(w, alpha) + weight decay]."""
    with tf.GradientTape() as tape:
      loss = self._loss(features, labels)
      decay = optimization.weight_decay_loss(
          self.network_weights, self.options.network_weight_decay)
      total = loss + decay
    grads = tape.gradient(total, self.network_weights)
    self.network_optimizer.apply_gradients(zip(grads, self.network_weights))
    return loss

  def _arch_step_fn(self, features, labels):
    """alpha <- Adam(grad_alpha [L_trainB(w, alpha) + lambda C(alpha)])."""
    with tf.GradientTape() as tape:
      auto_fpn_ops.watch_architecture(tape, self.architecture_weights)
      loss = self._loss(features, labels)
      cost = self.resource_cost()
      total = loss + self.resource_lambda * cost
    grads = tape.gradient(total, self.architecture_weights)
    # Adam's weight decay as PyTorch applies it: an L2 term in the gradient.
    grads = [g + self.options.arch_weight_decay * tf.convert_to_tensor(v)
             for g, v in zip(grads, self.architecture_weights)]
    self.arch_optimizer.apply_gradients(zip(grads,
                                            self.architecture_weights))
    return loss, cost

  def run_step(self):
    """One search step: a network step on trainA, then (in the architecture
    phase) an architecture step on trainB. Returns a dict of floats."""
    step = int(self.step.numpy())
    features, labels = next(self.iterator_a)
    values = {"loss_trainA": float(self._network_step(features, labels))}
    if step >= self.arch_start_step:
      features, labels = next(self.iterator_b)
      loss, cost = self._arch_step(features, labels)
      values["loss_trainB"] = float(loss)
      values["resource_cost"] = float(cost)
    self.step.assign_add(1)
    return values

  # Logs.

  def mixing(self):
    return tf.nn.softmax(self.module.alpha, axis=-1).numpy()

  def _log_alpha(self, step):
    record = {"step": int(step), "epoch": step / self.steps_per_epoch,
              "module": self.space, "ops": list(self.ops),
              "edges": list(self.edge_names),
              "arch_start_step": self.arch_start_step,
              "softmax": np.round(self.mixing(), 6).tolist()}
    with tf.io.gfile.GFile(os.path.join(self.search_dir, ALPHA_LOG),
                           "a") as f:
      f.write(json.dumps(record) + "\n")

  def _trim_alpha_log(self, step):
    """Drops log lines after `step` (written after the restored checkpoint)."""
    records = [r for r in read_alpha_log(self.search_dir)
               if r["step"] <= step]
    _write_text(os.path.join(self.search_dir, ALPHA_LOG),
                "".join(json.dumps(r) + "\n" for r in records))
    return records

  # Running.

  def run(self, max_steps=None, verbose=True):
    """Searches to the end (or to max_steps, saving there), then decodes.

    Args:
      max_steps: stop after this step (a checkpoint is saved there); None:
        the whole search. Used to test resumption.
      verbose: print progress lines.
    Returns:
      dict: the search_result.json contents when the search is over, else
      {"step": N, "finished": False}.
    """
    if self.model is None:
      self.build()
    restored = self.manager.restore_or_initialize()
    step = int(self.step.numpy())
    if restored:
      records = self._trim_alpha_log(step)
      say = f"Resumed the search from {restored} at step {step}."
    else:
      if self.trainer.init_checkpoint:
        self.trainer.initialize_from_checkpoint()
      records = self._trim_alpha_log(-1)
      say = "Starting the search."
    if verbose:
      print(f"{say} {self.space}: {self.total_steps} steps ("
            f"{self.steps_per_epoch} per epoch of trainA, "
            f"{self.parts['trainA']['num']} + {self.parts['trainB']['num']} "
            f"examples in trainA + trainB), architecture updates from step "
            f"{self.arch_start_step}, lambda {self.options.lambda_value}, "
            f"{len(self.network_weights)} network and "
            f"{len(self.architecture_weights)} architecture variables"
            f"{', backbone frozen' if self.options.freeze_backbone else ''}.",
            flush=True)
    if not records:
      self._log_alpha(step)
    stop = self.total_steps if max_steps is None else min(max_steps,
                                                          self.total_steps)
    start_time, start_step = None, step
    values = {}
    while step < stop:
      values = self.run_step()
      step += 1
      if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(
            f"darts search: non-finite values {values} at step {step}; the "
            f"latest checkpoint is {self.manager.latest_checkpoint}.")
      if start_time is None:  # The first step traces: time from its end.
        start_time, start_step = time.time(), step
      if step % self.log_every == 0 or step == self.total_steps:
        self._log_alpha(step)
        if verbose:
          rate = (step - start_step) / max(time.time() - start_time, 1e-9)
          eta = ((self.total_steps - step) / rate if rate > 0
                 else float("nan"))
          terms = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
          lr = float(self.network_optimizer.learning_rate)
          print(f"step {step}/{self.total_steps} (epoch "
                f"{step / self.steps_per_epoch:.2f}) | {terms} | lr {lr:.5f}"
                f" | {rate:.2f} steps/s | ETA "
                f"{_format_seconds(eta) if math.isfinite(eta) else '?'}",
                flush=True)
      if step % self.checkpoint_every == 0 or step == stop:
        self.manager.save(checkpoint_number=step)
    if step < self.total_steps:
      return {"step": step, "finished": False}
    return self.finish(verbose=verbose)

  def finish(self, verbose=True):
    """Decodes and writes the gin file, the plot and search_result.json."""
    genotype = self.module.decode()
    shares = auto_fpn_ops.op_shares(genotype, self.ops)
    free = shares["skip"] + shares["none"]
    params = decoded_parameter_count(self.module, genotype)
    result = {
        "space": self.space, "genotype": genotype,
        "resource_lambda": self.options.lambda_value,
        "resource_cost": float(self.resource_cost()),
        "decoded_parameters": int(params),
        "op_shares": shares, "skip_none_share": free,
        "steps": int(self.step.numpy()), "epochs": self.trainer.train_epochs,
        "arch_start_step": self.arch_start_step, "seed": self.seed,
        "trainA": self.parts["trainA"]["num"],
        "trainB": self.parts["trainB"]["num"],
    }
    _write_text(os.path.join(self.search_dir, BEST_GIN[self.space]),
                self.gin_text(genotype, result))
    _write_json(os.path.join(self.search_dir, RESULT_FILE), result)
    records = read_alpha_log(self.search_dir)
    if records:
      write_alpha_plot(records, os.path.join(self.search_dir, PLOT_FILE))
    if verbose:
      print(f"Decoded {self.space}: {params} parameters (discrete, batch "
            f"norm included); skip + none share {free:.2f} (skip "
            f"{shares['skip']:.2f}, none {shares['none']:.2f}).", flush=True)
      if free > COLLAPSE_SHARE:
        print(f"WARNING: {free:.0%} of the decoded edges are skip or none "
              f"(threshold {COLLAPSE_SHARE:.0%}): the search may have "
              "collapsed to parameter-free operations. Consider a smaller "
              "resource_lambda or a later arch_start_fraction.", flush=True)
      print(f"Architecture in {os.path.join(self.search_dir, BEST_GIN[self.space])}"
            "; train it with python -m official.train "
            + " ".join(f"--gin_file={f}" for f in self.settings["gin_files"])
            + f" --gin_file={os.path.join(self.search_dir, BEST_GIN[self.space])}"
            " --model_dir=DIR", flush=True)
    if free > COLLAPSE_SHARE:
      logging.warning("darts: skip + none share %.2f > %.2f.", free,
                      COLLAPSE_SHARE)
    return result

  def gin_text(self, genotype, result):
    """The decoded architecture as gin bindings (loaded after the proxy)."""
    name = "auto_fpn" if self.space == "auto_fpn_neck" else "auto_head"
    proxy = " ".join(f"--gin_file={f}" for f in self.settings["gin_files"])
    lines = [
        f"# Decoded {self.space} of a gradient-based Auto-FPN search "
        f"(official/search/darts.py): arg-max per link/edge (Auto-FPN Sec. "
        f"3.2), lambda {result['resource_lambda']}, seed {self.seed}, "
        f"{result['steps']} steps.",
        f"# {result['decoded_parameters']} parameters in the discrete module "
        f"(batch norm included); skip + none share "
        f"{result['skip_none_share']:.2f}.",
        "# Train it from scratch (Auto-FPN Sec. 4.2) after the search proxy:",
        f"#   python -m official.train {proxy} --gin_file=THIS_FILE "
        "--model_dir=DIR",
    ]
    lines += self.neck_bindings
    lines += [f"{name}.search = False",
              f"{name}.genotype = {json.dumps(genotype)}"]
    return "\n".join(lines) + "\n"


def run_from_cli(space, search_dir, gin_files, gin_params, options, seed):
  """python -m official.search --controller=darts (official/search/__main__.py).

  Returns:
    the search result dict.
  Raises:
    ValueError: bad flags or options, naming them.
  """
  if not search_dir:
    raise ValueError("--search_dir is required.")
  if not gin_files:
    raise ValueError("--gin_file: the search proxy is required "
                     "(e.g. configs/search/auto_fpn_neck_digits.gin).")
  for path in gin_files:
    if not os.path.exists(trial_runner.resolve_gin_file(path)):
      raise ValueError(f"--gin_file={path}: no such file (relative paths are "
                       "read from the current directory, then the "
                       "repository root).")
  search = DartsSearch(space, search_dir, gin_files, gin_params, options,
                       seed)
  return search.run()
