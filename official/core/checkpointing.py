"""Checkpoints of (model, optimizer, step): save, keep the last K, restore.

- `Checkpointer.save` writes MODEL_DIR/ckpt-<step> and keeps the last K.
  Under MultiWorkerMirroredStrategy every worker must call it (variables are
  read collectively); the chief writes to the model directory, the others to a
  temporary directory that is removed straight after.
- `Checkpointer.restore_latest` resumes from MODEL_DIR's latest checkpoint.
- `Checkpointer.restore_for_eval` is the same for evaluation, but fails with
  NoCheckpointError when there is none.
- A checkpoint that does not fit the model (another architecture, another
  number of classes) raises CheckpointMismatchError, which lists the variables
  by name with the expected and the found shape. Shapes are compared before
  anything is restored, so nothing is half-restored and TensorFlow prints
  nothing after the message.
- `Checkpointer.set_aside` moves a checkpoint out of the index (a diverged
  one, official/core/train_loop.py), so that runs resume from the one
  before it.
- `restore_modules` initialises parts of a model (its backbone, its decoder)
  from another model's checkpoint, e.g. a segmenter's backbone from a
  RetinaNet trained with the same backbone config (fine-tuning), and reports
  the variables it did not restore.

A save writes the checkpoint under a temporary name, renames it into place
(its .index last), then replaces the `checkpoint` index (atomically), so a
run killed while saving resumes from the previous complete checkpoint and no
ckpt-N.index is ever partial (`Checkpointer.save`). The `checkpoint` index
has the format of tf.train.CheckpointManager, which tf.train.latest_checkpoint
reads.
"""

import os
import tempfile
import time
import uuid

import keras
import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.core.protobuf import trackable_object_graph_pb2
from tensorflow.python.training import checkpoint_state_pb2

_MAX_LISTED = 20
# Prefix of the files a save writes before renaming them into place.
_TEMPORARY = ".tmp-"


def _remove(path):
  """Deletes a file if it exists (a kill may have left it, or not)."""
  try:
    tf.io.gfile.remove(path)
  except tf.errors.NotFoundError:
    pass


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

  @property
  def latest(self):
    """Path prefix of the latest checkpoint in model_dir, or None."""
    return tf.train.latest_checkpoint(self.model_dir)

  def save(self):
    """Writes a checkpoint numbered by the global step; returns its path.

    On the chief: the checkpoint is written under a temporary prefix, its
    data files are renamed to MODEL_DIR/ckpt-<step>.* and its .index last,
    then the `checkpoint` index is replaced (written aside and renamed), then
    the checkpoints beyond the last `keep` are deleted (.index first). A
    ckpt-N.index therefore only exists once the whole checkpoint does: a kill
    at any moment leaves every checkpoint readable (TensorFlow 2.21 writes a
    checkpoint's .index in place, and a kill while tf.train.CheckpointManager
    saved left a truncated one: tests/official/test_kill_resume.py). What a
    killed save leaves (a temporary checkpoint, data without an .index) is
    removed by the next save.

    On a non-chief worker, the returned path was already removed.
    """
    step = int(self.global_step.numpy())
    if not self.chief:
      scratch = tempfile.mkdtemp(prefix="ckpt_nonchief_")
      try:
        manager = tf.train.CheckpointManager(self.checkpoint, scratch,
                                             max_to_keep=1)
        return manager.save(checkpoint_number=step)
      finally:
        tf.io.gfile.rmtree(scratch)
    name = f"ckpt-{step}"
    path = tf.io.gfile.join(self.model_dir, name)
    self.checkpoint.save_counter.assign_add(1)  # As CheckpointManager does.
    written = self.checkpoint.write(tf.io.gfile.join(
        self.model_dir, f"{_TEMPORARY}{name}-{uuid.uuid4().hex}"))
    # An older ckpt-<step>.index (a save of this step that was not indexed
    # before a kill) must not describe the new data files.
    _remove(f"{path}.index")
    files = tf.io.gfile.glob(f"{written}.*")
    for file in sorted(files, key=lambda f: f.endswith(".index")):
      tf.io.gfile.rename(file, path + file[len(written):], overwrite=True)
    names, times, preserved = self._read_index()
    kept = [(n, t) for n, t in zip(names, times) if n != name]
    kept.append((name, time.time()))
    dropped, kept = kept[:-self.keep], kept[-self.keep:]
    self._write_index([n for n, _ in kept], [t for _, t in kept], preserved)
    for old, _ in dropped:
      old_path = tf.io.gfile.join(self.model_dir, old)
      _remove(f"{old_path}.index")
      for data in tf.io.gfile.glob(f"{old_path}.data-*"):
        _remove(data)
    self._remove_leftovers()
    return path

  def _read_index(self):
    """(checkpoint names, timestamps, last_preserved_timestamp) indexed."""
    state = tf.train.get_checkpoint_state(self.model_dir)
    if state is None:
      return [], [], None
    names = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    times = list(state.all_model_checkpoint_timestamps)
    if len(times) != len(names):  # Not written by a CheckpointManager.
      times = [time.time()] * len(names)
    return names, times, state.last_preserved_timestamp

  def _write_index(self, names, times, last_preserved):
    """Replaces the `checkpoint` index; removes it when `names` is empty.

    The format of tf.train.CheckpointManager (paths relative to model_dir),
    so that tf.train.latest_checkpoint and the manager read it. Written to a
    temporary file and renamed: a kill leaves the old or the new index.
    """
    index = tf.io.gfile.join(self.model_dir, "checkpoint")
    if not names:
      _remove(index)
      return
    state = checkpoint_state_pb2.CheckpointState(
        model_checkpoint_path=names[-1], all_model_checkpoint_paths=names,
        all_model_checkpoint_timestamps=times,
        last_preserved_timestamp=last_preserved or min(times))
    tmp = f"{index}{_TEMPORARY}{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text_format.MessageToString(state))
    tf.io.gfile.rename(tmp, index, overwrite=True)

  def _remove_leftovers(self):
    """Removes what killed saves left: temporary files, data without .index."""
    for file in tf.io.gfile.glob(tf.io.gfile.join(self.model_dir,
                                                  f"{_TEMPORARY}*")):
      if tf.io.gfile.isdir(file):  # A sharded save's <prefix>_temp folder.
        tf.io.gfile.rmtree(file)
      else:
        _remove(file)
    for data in tf.io.gfile.glob(tf.io.gfile.join(self.model_dir,
                                                  "ckpt-*.data-*")):
      if not tf.io.gfile.exists(data.split(".data-")[0] + ".index"):
        _remove(data)

  def manager(self):
    """A tf.train.CheckpointManager reading model_dir (it never saves here).

    For tf.distribute.experimental.PreemptionCheckpointHandler, which needs
    one to restore through (official/core/preemption.py); `save` keeps the
    index in the same format.
    """
    return tf.train.CheckpointManager(self.checkpoint, self.model_dir,
                                      max_to_keep=self.keep)

  def set_aside(self, path, suffix):
    """Takes checkpoint `path` out of the index and renames its files.

    The `checkpoint` index then names the checkpoint before it as the
    latest (or is removed when there is none), so that the next run resumes
    from there; the files stay readable under the new prefix.

    Args:
      path: a checkpoint prefix in model_dir (MODEL_DIR/ckpt-N).
      suffix: appended to the prefix: MODEL_DIR/ckpt-N-<suffix>.*.

    Returns:
      The new prefix (on a non-chief worker, which changes nothing: the
      prefix the chief gives it).
    """
    target = f"{path}-{suffix}"
    if not self.chief:
      return target
    names, times, preserved = self._read_index()
    kept = [(n, t) for n, t in zip(names, times)
            if n != os.path.basename(path)]
    self._write_index([n for n, _ in kept], [t for _, t in kept], preserved)
    # The .index first, so that no ckpt-N.index is left without its data.
    files = tf.io.gfile.glob(f"{path}.*")
    for file in sorted(files, key=lambda f: not f.endswith(".index")):
      tf.io.gfile.rename(file, target + file[len(path):], overwrite=True)
    logging.warning("Moved checkpoint %s to %s and out of the index.", path,
                    target)
    return target

  def restore(self, path):
    """Restores `path` into the model (and optimizer, step); returns the step.

    Raises:
      CheckpointMismatchError: the checkpoint does not fit the objects.
    """
    # Shapes are compared before any value is restored. A restore that fails
    # on a shape leaves the variables before it overwritten, and TensorFlow's
    # pending restore, which the failure gives no way to silence, then logs
    # one warning per unused checkpoint value when the process exits
    # (hundreds of lines printed after the message: official/export.py).
    try:
      mismatched = _walk(self.checkpoint, path)[0]
    except Exception:  # Unreadable: the restore below raises and says so.
      mismatched = None
    if mismatched:
      raise CheckpointMismatchError(describe_mismatch(self.checkpoint, path))
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
    mismatched, matched_ids = _walk(root, path)
  except Exception as e:  # An unreadable checkpoint: say so.
    return (f"Checkpoint {path} could not be read ({type(e).__name__}: {e}); "
            f"restoring it failed with: {error}")

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


def _walk(root, path):
  """Walks the checkpoint's object graph and the objects under root together.

  Reads only the checkpoint's index (names, shapes, the object graph), no
  variable values.

  Args:
    root: the tf.train.Checkpoint being restored into.
    path: checkpoint path prefix.

  Returns:
    (mismatched, matched_ids): [(variable name, expected shape, shape in the
    checkpoint)] for the variables at the same path on both sides whose
    shapes differ, and the ids of the objects met on both sides.

  Raises:
    Whatever reading the checkpoint raises (tf.errors.OpError, ValueError)
    when it is missing or unreadable.
  """
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
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
  return mismatched, matched_ids


def _variable_name(obj, fallback):
  """A keras variable's path ("conv2d/kernel"), else its name, else fallback."""
  for attribute in ("path", "name"):
    value = getattr(obj, attribute, None)
    if isinstance(value, str) and value:
      return value.split(":")[0]
  return fallback


# --- Initialising parts of a model from another model's checkpoint.

MODULES = ("backbone", "decoder", "all")
_MAX_CANDIDATE_DEPTH = 3


def resolve_checkpoint(path_or_dir, what="init_checkpoint"):
  """The checkpoint path prefix of a path prefix or of a model directory.

  Args:
    path_or_dir: a checkpoint prefix (".../ckpt-1000") or a directory, whose
      latest checkpoint is taken.
    what: how to name the argument in errors.

  Raises:
    NoCheckpointError: the directory holds no checkpoint, or the prefix
      names no checkpoint.
  """
  path = str(path_or_dir)
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise NoCheckpointError(
          f"{what}: the directory {path} holds no checkpoint (no `checkpoint` "
          f"index file); expected a model_dir of a finished run or a "
          f"checkpoint path prefix such as {path}/ckpt-1000.")
    return latest
  if not tf.io.gfile.exists(f"{path}.index"):
    raise NoCheckpointError(
        f"{what}: {path} is neither a directory nor a checkpoint (no "
        f"{path}.index); expected a model_dir or a checkpoint path prefix "
        "such as MODEL_DIR/ckpt-1000.")
  return path


def model_modules(model):
  """The parts of an assembled model that can be restored on their own.

  The assemblies of modeling/models (build_retinanet, build_segmenter,
  build_classifier) apply the backbone to the model's image input and the
  decoder, when there is one, to the backbone's outputs; that is how they are
  found here (Keras 3 keeps the call graph in each layer's inbound nodes).

  Args:
    model: a functional keras.Model.

  Returns:
    dict "all" -> model, "backbone" -> the nested keras.Model applied to the
    model's input, and "decoder" -> the nested keras.Model applied to the
    backbone's outputs (absent when there is none).

  Raises:
    ValueError: when no layer of the model takes its input as a backbone.
  """
  modules = {"all": model}
  inputs = {id(t) for t in model.inputs}
  backbone_outputs = set()
  for layer in model.layers:
    if not isinstance(layer, keras.Model):
      continue
    for node in getattr(layer, "_inbound_nodes", ()):
      tensors = [id(t) for t in node.input_tensors]
      if "backbone" not in modules and tensors and all(
          t in inputs for t in tensors):
        modules["backbone"] = layer
        backbone_outputs = {id(t) for t in node.output_tensors}
      elif ("backbone" in modules and "decoder" not in modules and tensors
            and all(t in backbone_outputs for t in tensors)):
        modules["decoder"] = layer
  if "backbone" not in modules:
    raise ValueError(
        f"Model {model.name!r} has no backbone to restore: none of its layers "
        f"{[l.name for l in model.layers]} is a nested keras.Model applied to "
        "the model's input (the layout of modeling/models' assemblies).")
  return modules


def _read_graph(path):
  reader = tf.train.load_checkpoint(path)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  return reader, reader.get_variable_to_shape_map(), graph


def _variable_key(node):
  for attribute in node.attributes:
    if attribute.name == "VARIABLE_VALUE":
      return attribute.checkpoint_key
  return None


def _subtree_keys(graph, node_id):
  """Checkpoint keys of every variable below (and at) a node."""
  keys, stack, seen = [], [node_id], set()
  while stack:
    current = stack.pop()
    if current in seen:
      continue
    seen.add(current)
    key = _variable_key(graph.nodes[current])
    if key is not None:
      keys.append(key)
    stack.extend(child.node_id for child in graph.nodes[current].children)
  return keys


def _match(graph, node_id, obj):
  """Walks the checkpoint graph from node_id and the objects from obj together.

  Returns:
    dict id(variable) -> (variable, checkpoint key), for the variables met
    at the same path on both sides.
  """
  matched, stack, seen = {}, [(node_id, obj)], set()
  while stack:
    current, current_obj = stack.pop()
    if current in seen:
      continue
    seen.add(current)
    node = graph.nodes[current]
    key = _variable_key(node)
    if key is not None and isinstance(current_obj, (keras.Variable,
                                                    tf.Variable)):
      matched[id(current_obj)] = (current_obj, key)
    try:
      children = tf.train.TrackableView.children(current_obj)
    except Exception:  # Not a trackable we can walk.
      continue
    for child in node.children:
      if child.local_name in children:
        stack.append((child.node_id, children[child.local_name]))
  return matched


def _candidates(graph, root_name="model"):
  """(path, node id) of the nodes from the checkpoint's model down, by depth."""
  top = [c for c in graph.nodes[0].children if c.local_name == root_name]
  if not top:
    return []
  found, level = [], [(root_name, top[0].node_id)]
  for _ in range(_MAX_CANDIDATE_DEPTH + 1):
    found.extend(level)
    level = [(f"{path}/{child.local_name}", child.node_id)
             for path, node_id in level
             for child in graph.nodes[node_id].children]
  return found


def restore_modules(path, model, modules=("backbone",)):
  """Initialises parts of `model` from a checkpoint of another model.

  Each module's variables are looked up by their path below the module, in
  the part of the checkpoint's model that holds most of them (for a
  segmenter's backbone: the backbone of the RetinaNet that wrote the
  checkpoint, wherever it sits there). Every variable of the module must be
  found with its shape, and the part found must hold no other variable: a
  backbone built from another config fails, naming the variables.

  Args:
    path: checkpoint path prefix (see `resolve_checkpoint`), written by a
      Checkpointer (the model under "model").
    model: the keras.Model being initialised (built).
    modules: names from MODULES ("all": the whole model).

  Returns:
    dict with "checkpoint": path, "modules": {name: object path of the part
    of the checkpoint restored into it ("model/_operations/1"), None for a
    module without variables},
    "restored": sorted variable names, "not_restored": sorted names of the
    model's variables left at their initial values, "num_checkpoint_unused":
    the checkpoint's model variables not used.

  Raises:
    ValueError: an unknown module name, or one the model lacks.
    CheckpointMismatchError: a module does not fit the checkpoint; lists the
      variables with the expected and found shapes, and those missing.
  """
  unknown = [m for m in modules if m not in MODULES]
  if unknown or not modules:
    raise ValueError(f"Unknown module(s) {unknown or list(modules)} to "
                     f"restore; expected a non-empty subset of {MODULES}.")
  available = model_modules(model)
  absent = [m for m in modules if m not in available]
  if absent:
    raise ValueError(f"Model {model.name!r} has no {absent[0]} to restore "
                     f"(it has {sorted(available)}).")
  try:
    reader, shapes, graph = _read_graph(path)
  except Exception as e:  # An unreadable checkpoint: say so.
    raise CheckpointMismatchError(
        f"Checkpoint {path} could not be read ({type(e).__name__}: "
        f"{e}).") from e
  candidates = _candidates(graph)
  if not candidates:
    raise CheckpointMismatchError(
        f"Checkpoint {path} holds no model (no 'model' object); expected a "
        "checkpoint written by the trainer.")

  assignments, used_keys, sources = [], set(), {}
  for name in modules:
    module = available[name]
    if not module.variables:  # E.g. the identity decoder: nothing to restore.
      sources[name] = None
      continue
    options = candidates[:1] if name == "all" else candidates
    best = max(options, key=lambda c, m=module: len(_match(graph, c[1], m)))
    matched = _match(graph, best[1], module)
    mismatched, missing = [], []
    for variable in module.variables:
      entry = matched.get(id(variable))
      if entry is None:
        missing.append(variable)
        continue
      found = list(shapes[entry[1]])
      if found != list(variable.shape):
        mismatched.append((variable, found))
    extra = sorted(set(_subtree_keys(graph, best[1])) -
                   {key for _, key in matched.values()})
    if mismatched or missing or extra or not matched:
      raise CheckpointMismatchError(_describe_module_mismatch(
          path, name, module, best[0], mismatched, missing, extra))
    sources[name] = best[0]
    for variable in module.variables:
      key = matched[id(variable)][1]
      assignments.append((variable, key))
      used_keys.add(key)

  restored = set()
  for variable, key in assignments:
    variable.assign(reader.get_tensor(key).astype(variable.dtype))
    restored.add(id(variable))
  model_keys = set(_subtree_keys(graph, candidates[0][1]))
  return {
      "checkpoint": path,
      "modules": sources,
      "restored": sorted(_variable_name(v, "?") for v in model.variables
                         if id(v) in restored),
      "not_restored": sorted(_variable_name(v, "?") for v in model.variables
                             if id(v) not in restored),
      "num_checkpoint_unused": len(model_keys - used_keys),
  }


def _describe_module_mismatch(path, name, module, module_path, mismatched,
                              missing, extra):
  """The CheckpointMismatchError text of restore_modules."""
  lines = [f"Checkpoint {path} does not fit the model's {name} "
           f"({module.name!r}, {len(module.variables)} variables); its "
           f"closest part is {module_path}."]
  if mismatched:
    lines.append("Variables whose shapes differ (name: expected in the model, "
                 "found in the checkpoint):")
    for variable, found in mismatched[:_MAX_LISTED]:
      lines.append(f"  {_variable_name(variable, '?')}: expected "
                   f"{list(variable.shape)}, found {found}")
    if len(mismatched) > _MAX_LISTED:
      lines.append(f"  ... and {len(mismatched) - _MAX_LISTED} more.")
  if missing:
    lines.append(f"{name.capitalize()} variables not in the checkpoint "
                 f"({len(missing)}):")
    for variable in missing[:_MAX_LISTED]:
      lines.append(f"  {_variable_name(variable, '?')} "
                   f"{list(variable.shape)}")
    if len(missing) > _MAX_LISTED:
      lines.append(f"  ... and {len(missing) - _MAX_LISTED} more.")
  if extra:
    lines.append(f"Checkpoint variables in that part that the model's {name} "
                 f"lacks ({len(extra)}):")
    for key in extra[:_MAX_LISTED]:
      lines.append(f"  {key.split('/.ATTRIBUTES')[0]}")
    if len(extra) > _MAX_LISTED:
      lines.append(f"  ... and {len(extra) - _MAX_LISTED} more.")
  lines.append(f"The {name} must be built from the same config as the model "
               "that wrote the checkpoint (backbone id, filter scale, endpoint "
               "width, block repeats); check the backbone bindings against "
               "that run's config.gin.")
  return "\n".join(lines)
