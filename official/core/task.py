"""The contract between the trainer and a task.

A task (classification, RetinaNet, ...) owns everything specific to a problem:
the model, the input pipeline, the losses and the evaluation. The trainer owns
everything generic: strategy, optimizer, schedule, weight decay, checkpoints,
summaries, logging. Tasks are gin-configurable subclasses of `Task`.

Distribution rules a task must follow:
- `build_model` is called inside `strategy.scope()`.
- `build_inputs` is called once per input pipeline (tf.distribute), and batches
  by the per-replica batch size `input_context.get_per_replica_batch_size`.
  Shapes are static. Training datasets repeat forever; evaluation datasets
  make one pass and pad the last batch, marking padding with labels["valid"]
  = False (so every batch has the same shape and nothing is counted twice).
- `compute_losses` runs in replica context; each returned loss is this
  replica's share of the global mean, i.e. sum over local examples divided by
  the *global* batch size, so that summing over replicas gives the mean.
"""

import abc

from dataloaders import readers


class MissingRecordsError(FileNotFoundError):
  """A dataset's TFRecord pattern matches no file; names the tool to run."""


# The script that writes the TFRecords each gin data function reads, by the
# function's name ("TaskClass.function" for one task only). The one place
# DatasetTask.record_pattern takes the tool from, so that a missing-records
# error names what makes them for that task.
RECORD_TOOLS = {
    "coco_records": "scripts/create_coco_tf_record.py",
    # Mask R-CNN needs the instance masks in the records.
    "MaskRCNNTask.coco_records":
        "scripts/create_coco_tf_record.py --include_masks",
    "synthetic_coco_records": "scripts/make_synthetic_coco.py --records",
    "synthetic_coco_mask_records":
        "scripts/make_synthetic_coco.py --records --include_masks",
    "pascal_records": "scripts/create_pascal_tf_record.py",
    "synthetic_pascal_records": "scripts/make_synthetic_pascal.py --records",
    "classification_records": "scripts/create_imagenet_tf_record.py",
    "digits_records": "scripts/make_digits_dataset.py --records",
}


def record_tool(task):
  """(data function name, command writing its records) of a DatasetTask.

  The command is None when RECORD_TOOLS has no entry for the function.
  """
  name = getattr(getattr(task, "data_fn", None), "__name__", None)
  tool = (RECORD_TOOLS.get(f"{type(task).__name__}.{name}") or
          RECORD_TOOLS.get(name))
  return name, tool


class Evaluator(abc.ABC):
  """Accumulates evaluation outputs on the host, with bounded memory."""

  @abc.abstractmethod
  def reset(self):
    """Forgets everything seen so far."""

  @abc.abstractmethod
  def update(self, outputs):
    """Adds one global batch: dict name -> numpy array [batch, ...]."""

  @abc.abstractmethod
  def result(self):
    """Returns dict metric name -> float."""


class Task(abc.ABC):
  """Base class of tasks. Subclasses are gin-configurable.

  Attributes a subclass sets:
    num_train_examples: examples in one training epoch (to turn epochs into steps).
    num_eval_examples: examples in the evaluation split (for progress output).
  """

  num_train_examples = None
  num_eval_examples = None

  def prepare_data(self):
    """Creates missing generated datasets (e.g. the digits records). Host only."""

  def input_files(self, training):
    """The TFRecord file pattern read in training/eval, or None (TFDS, ...).

    Used to name the file when a record turns out to be corrupted.
    """
    del training
    return None

  @abc.abstractmethod
  def build_model(self):
    """Returns a keras.Model: model(features, training) -> outputs."""

  @abc.abstractmethod
  def build_inputs(self, training, global_batch_size, input_context=None):
    """Returns a tf.data.Dataset of (features, labels) per-replica batches."""

  @abc.abstractmethod
  def compute_losses(self, outputs, labels, global_batch_size):
    """Returns dict name -> scalar float32 loss; must contain "total_loss"."""

  @abc.abstractmethod
  def eval_outputs(self, outputs, labels):
    """Returns dict name -> tensor [per_replica_batch, ...] for the evaluator."""

  @abc.abstractmethod
  def build_evaluator(self):
    """Returns an Evaluator."""

  # Serving (official/export.py). A task that can be exported implements
  # serving_preprocess and serving_outputs; the exporter adds the input
  # decoding (image tensors, encoded images, tf.Examples) around them.

  def serving_preprocess(self, image):
    """Prepares one image for the model, exactly as evaluation does.

    Args:
      image: uint8 [height, width, 3] RGB, any size.
    Returns:
      (model_input float32 [S, S, 3], image_info float32 [4, 2]); the
      layout of image_info is the task's (it is passed back to
      serving_outputs).
    """
    raise NotImplementedError(f"{type(self).__name__} cannot be exported "
                              f"(it has no serving_preprocess).")

  def serving_outputs(self, model, images, image_info=None, for_tflite=False):
    """The served outputs of a batch of preprocessed images.

    Args:
      model: the task's model.
      images: float32 [batch, S, S, 3] from serving_preprocess.
      image_info: float32 [batch, 4, 2] from serving_preprocess, or None
        (TFLite: outputs stay in model-input pixels).
      for_tflite: use only ops TFLite has as builtins.
    Returns:
      dict name -> tensor [batch, ...].
    """
    raise NotImplementedError(f"{type(self).__name__} cannot be exported "
                              f"(it has no serving_outputs).")

  def label_map(self):
    """dict class id (int) -> name, or None when the dataset has no names."""
    return None


class DatasetTask(Task):
  """A Task whose data is described by a gin-bound dataset function.

  Subclasses set `self.data_fn`: a callable returning a dict with
  "train_pattern", "eval_pattern" (TFRecord globs, or TFDS keys instead),
  "num_train", "num_eval" and optionally "num_classes". It is called once, on
  first use, so that generated datasets are made only when needed.
  """

  data_fn = None
  _data = None

  @property
  def data(self):
    if self._data is None:
      self._data = self.data_fn()
      self.check_data(self._data)
    return self._data

  def check_data(self, data):
    """Raises ValueError when the dataset does not fit the task."""

  def prepare_data(self):
    return self.data

  def input_files(self, training):
    return self.data.get("train_pattern" if training else "eval_pattern")

  def record_pattern(self, training):
    """The split's TFRecord pattern, checked to match at least one file.

    Tasks read their records through this, so that a pattern matching
    nothing fails with the tool that writes this dataset's records.

    Args:
      training: the training split, else the evaluation split.

    Returns:
      The pattern (str), or None when the dataset has none (TFDS).

    Raises:
      MissingRecordsError: the pattern, or one of its comma-separated parts,
        matches no file; the message names the pattern, the data function
        and the script that writes its records (RECORD_TOOLS).
    """
    pattern = self.input_files(training)
    if pattern is None:
      return None
    try:
      readers.list_files(pattern)
    except FileNotFoundError as e:
      name, tool = record_tool(self)
      where = (f"{type(self).__name__} reads the "
               f"{'training' if training else 'evaluation'} records of {name}")
      if tool is None:
        hint = (f"{where}, for which no script is known (RECORD_TOOLS in "
                f"official/core/task.py).")
      else:
        hint = (f"{where}; they are written by `python {tool}` (its --help "
                f"lists the flags).")
      raise MissingRecordsError(f"{e} {hint}") from None
    return pattern

  @property
  def num_train_examples(self):
    return self.data["num_train"]

  @property
  def num_eval_examples(self):
    return self.data["num_eval"]
