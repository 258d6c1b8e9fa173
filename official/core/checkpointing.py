"""Checkpoints of (model, optimizer, step) via tf.train.CheckpointManager.

- `Checkpointer.save` writes MODEL_DIR/ckpt-<step> and keeps the last K.
  Under MultiWorkerMirroredStrategy every worker must call it (variables are
  read collectively); the chief writes to the model directory, the others to a
  temporary directory that is removed straight after.
- `Checkpointer.restore_latest` resumes from MODEL_DIR's latest checkpoint.
- `Checkpointer.restore_for_eval` is the same for evaluation, but fails with
  NoCheckpointError when there is none.
- A checkpoint that does not fit the model (another architecture, another
  number of classes) raises CheckpointMismatchError, which lists the variables
  by name with the expected and the found shape.

tf.train.CheckpointManager writes the checkpoint files first and the
`checkpoint` index file last (atomically), so a run killed while saving resumes
from the previous complete checkpoint.
"""

import tempfile

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

_MAX_LISTED = 20


class NoCheckpointError(FileNotFoundError):
  """Evaluation was asked for, but the model directory has no checkpoint."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's variables do not fit the model built from the config."""


class Checkpointer:
  """Saves and restores the training state.

  Args:
    model_dir: directory (local or gs://) holding ckpt-<step>.* files and the
      `checkpoint` index.
    model: the keras.Model (built: its variables exist).
    global_step: scalar int64 tf.Variable, steps completed.
    optimizer: the optimizer (built: its slots exist), or None to save and
      restore the model and step only (evaluation).
    keep: number of checkpoints kept.
    chief: whether this worker writes to `model_dir` (see module docstring).
  """

  def __init__(self, model_dir, model, global_step, optimizer=None, keep=5,
               chief=True):
    self.model_dir = model_dir
    self.chief = chief
    objects = {"model": model, "step": global_step}
    if optimizer is not None:
      objects["optimizer"] = optimizer
    self.checkpoint = tf.train.Checkpoint(**objects)
    self.global_step = global_step
    self.keep = keep
    self._manager = None

  @property
  def latest(self):
    """Path prefix of the latest checkpoint in model_dir, or None."""
    return tf.train.latest_checkpoint(self.model_dir)

  def save(self):
    """Writes a checkpoint numbered by the global step; returns its path.

    On a non-chief worker, the returned path was already removed.
    """
    step = int(self.global_step.numpy())
    if self.chief:
      if self._manager is None:
        self._manager = tf.train.CheckpointManager(
            self.checkpoint, self.model_dir, max_to_keep=self.keep)
      return self._manager.save(checkpoint_number=step)
    scratch = tempfile.mkdtemp(prefix="ckpt_nonchief_")
    try:
      manager = tf.train.CheckpointManager(self.checkpoint, scratch,
                                           max_to_keep=1)
      return manager.save(checkpoint_number=step)
    finally:
      tf.io.gfile.rmtree(scratch)

  def restore(self, path):
    """Restores `path` into the model (and optimizer, step); returns the step.

    Raises:
      CheckpointMismatchError: the checkpoint does not fit the objects.
    """
    try:
      status = self.checkpoint.restore(path)
      status.expect_partial()  # Evaluation restores no optimizer.
      status.assert_existing_objects_matched()
    except (ValueError, AssertionError) as e:
      raise CheckpointMismatchError(describe_mismatch(self.checkpoint, path,
                                                      e)) from e
    return int(self.global_step.numpy())

  def restore_latest(self):
    """Restores the latest checkpoint of model_dir if any.

    Returns:
      (path, step) of the restored checkpoint, or (None, None).
    """
    path = self.latest
    if path is None:
      return None, None
    step = self.restore(path)
    logging.info("Restored %s (step %d).", path, step)
    return path, step

  def restore_for_eval(self, mode="eval"):
    """Restores the latest checkpoint for evaluation; returns (path, step).

    Raises:
      NoCheckpointError: model_dir has no checkpoint.
    """
    path = self.latest
    if path is None:
      raise NoCheckpointError(
          f"--mode={mode}: no checkpoint in {self.model_dir}; train first or "
          f"pass a model_dir that has one.")
    return path, self.restore(path)


def describe_mismatch(root, path, error=None):
  """Explains why checkpoint `path` does not fit the objects under `root`.

  Walks the checkpoint's object graph and the Python objects side by side and
  lists variables whose shapes differ (name, expected shape, shape found in
  the checkpoint), and model variables the checkpoint lacks.

  Args:
    root: the tf.train.Checkpoint being restored into.
    path: checkpoint path prefix.
    error: the exception the restore raised, quoted at the end.

  Returns:
    A multi-line message.
  """
  try:
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  except Exception as e:  # An unreadable checkpoint: say so.
    return (f"Checkpoint {path} could not be read ({type(e).__name__}: {e}); "
            f"restoring it failed with: {error}")

  mismatched, matched_ids = [], set()
  stack = [(0, root, "")]
  seen_nodes = set()
  while stack:
    node_id, obj, obj_path = stack.pop()
    if node_id in seen_nodes:
      continue
    seen_nodes.add(node_id)
    matched_ids.add(id(obj))
    node = graph.nodes[node_id]
    for attribute in node.attributes:
      if attribute.name != "VARIABLE_VALUE" or not hasattr(obj, "shape"):
        continue
      found = shapes.get(attribute.checkpoint_key)
      expected = [int(d) for d in obj.shape]
      if found is not None and list(found) != expected:
        mismatched.append((_variable_name(obj, obj_path), expected, found))
    try:
      children = tf.train.TrackableView.children(obj)
    except Exception:  # Not a trackable we can walk.
      continue
    for child in node.children:
      if child.local_name in children:
        stack.append((child.node_id, children[child.local_name],
                      f"{obj_path}/{child.local_name}".lstrip("/")))

  lines = [f"Checkpoint {path} does not fit the model built from the config."]
  if mismatched:
    lines.append("Variables whose shapes differ (name: expected in the model, "
                 "found in the checkpoint):")
    for name, expected, found in mismatched[:_MAX_LISTED]:
      lines.append(f"  {name}: expected {expected}, found {found}")
    if len(mismatched) > _MAX_LISTED:
      lines.append(f"  ... and {len(mismatched) - _MAX_LISTED} more.")
  model = getattr(root, "model", None)
  if model is not None:
    missing = [v for v in model.variables if id(v) not in matched_ids]
    if missing:
      lines.append(f"Model variables not in the checkpoint "
                   f"({len(missing)}):")
      for v in missing[:_MAX_LISTED]:
        lines.append(f"  {_variable_name(v, '?')} {list(v.shape)}")
      if len(missing) > _MAX_LISTED:
        lines.append(f"  ... and {len(missing) - _MAX_LISTED} more.")
  lines.append("Was the checkpoint written with another config (backbone, "
               "number of classes, input size)? Use a fresh model_dir or the "
               "config it was trained with.")
  if error is not None:
    lines.append(f"TensorFlow said: {type(error).__name__}: "
                 f"{str(error).strip().splitlines()[0][:500]}")
  return "\n".join(lines)


def _variable_name(obj, fallback):
  """A keras variable's path ("conv2d/kernel"), else its name, else fallback."""
  for attribute in ("path", "name"):
    value = getattr(obj, attribute, None)
    if isinstance(value, str) and value:
      return value.split(":")[0]
  return fallback
