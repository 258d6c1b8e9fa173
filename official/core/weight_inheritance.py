"""Weight inheritance between architecture-search trials (network morphism).

The SP-NAS paper ("SP-NAS: Serial-to-Parallel Backbone Search for Object
Detection", Sec. 3.1 "Swap-Expand-Reignite Search Strategy", Algorithm 1,
Sec. 4.1) trains every candidate from the current best
network's weights: `train_eval(f, theta_init)` with theta_init taken from
theta_best. A "swap" keeps every weight, an "expand" inserts a new block
between existing ones, and the parallel-level search (Sec. 3.2) adds subnets
p_l^k initialised as copies of the serial stage s_l. Candidates therefore
differ in structure, and the object-graph checkpoint restore of
official/core/checkpointing.py (`restore_modules`, fine-tuning) cannot map
one onto the other. Here variables are matched by a key made of layer names
instead:

    key = "<sub-layer name>/.../<sub-layer name>/<variable name>"

the path of layer names from the model's direct sub-layers down to the
layer that owns the variable, e.g. "spnet/block7/conv1/kernel". The top
model's own name is left out, so the backbone of a classifier and the
backbone of a detector (both a nested model named e.g. "spnet") give the same
keys. modeling/backbones/spnet.py names every block layer by a stable block
id ("block7", "sub2_block7", "sub1_stage3_up", "stem_conv1"), so the same
block has the same key in parent and child.

- `variable_keys(model)`: key -> variable for every weight of the model,
  trainable or not (batch-norm moving statistics included; random-seed
  states and optimizer slots are not weights and are not included).
- `save_inheritable_weights(model, path)`: all of them to a .npz, written
  atomically (a temporary file renamed over `path`).
- `inherit_weights(model, sources, aliases)`: copies every variable whose
  key is found in one of the sources (earlier sources first; if it is found
  nowhere, under each alias of its key in turn); the others keep their
  initial values and are listed in the returned report.
- `WeightInheritance`: the Trainer's side (Trainer.inherit_weights_from,
  Trainer.save_inheritable_weights; official/core/trainer.py).

The paper initialises an inserted block as an identity mapping (IdMorph,
Sec. 3.1 "expand"); that is the business of the layer that builds the block.
Here a variable without a counterpart simply keeps the value its
initializer gave it.

How the layers are walked (Keras 3.15): each layer keeps its own variables in
`_trainable_variables` and `_non_trainable_variables` and its direct
sub-layers in `_layers`: the layers of a functional model's graph (nested
models included), the attributes and the list or dict entries of a
subclassed layer or model. `Layer.weights` walks the same lists
(keras/src/layers/layer.py), so every weight of the model gets a key. A layer
or variable reachable along two paths (a shared layer) gets the key of the
first path, as `Layer.weights` lists it once. The path of layer names is
used rather than Keras's own `Variable.path`, which records the name scopes
active when the variable was created: the layers of a nested functional
model are built before it is nested, so their paths lack the nested model's
name.
"""

import io
import os
import re
import uuid
import zipfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from official.core import gin_config

INHERITABLE_WEIGHTS_FILE = "inheritable_weights.npz"
INHERIT_REPORT_FILE = "inherited_weights.json"
_MAX_LOGGED_NAMES = 20


def variable_keys(model):
  """Every weight of `model` under its layer-name key (module docstring).

  Args:
    model: a built keras.Model or keras.layers.Layer (functional or
      subclassed, with nested models and composite layers).

  Returns:
    dict key -> keras.Variable, in the order of `model.weights`; e.g.
    {"spnet/block7/conv1/kernel": <Variable shape=(1, 1, 64, 16)>, ...}.

  Raises:
    ValueError: the model is not built (its variables do not exist yet), or
      two different variables would get the same key (two sub-layers of one
      layer with the same name, or two variables of one layer with the same
      name); the message names each such key and the variables' paths.
  """
  if not model.built:
    raise ValueError(
        f"Cannot key the variables of {type(model).__name__} {model.name!r}: "
        "it is not built yet, so its variables do not exist. Call it once "
        "on an input (or build it) first.")
  keys = {}
  duplicates = {}
  seen_variables = set()
  seen_layers = set()

  def visit(layer, prefix):
    if id(layer) in seen_layers:
      return
    seen_layers.add(id(layer))
    # pylint: disable=protected-access
    own = layer._trainable_variables + layer._non_trainable_variables
    for variable in own:
      if id(variable) in seen_variables:
        continue
      seen_variables.add(id(variable))
      key = prefix + variable.name
      if key in keys:
        duplicates.setdefault(key, [keys[key].path]).append(variable.path)
      else:
        keys[key] = variable
    for sublayer in layer._layers:
      visit(sublayer, f"{prefix}{sublayer.name}/")
    # pylint: enable=protected-access

  visit(model, "")
  if duplicates:
    listed = "\n  ".join(f"{key}: variables {', '.join(paths)}"
                         for key, paths in sorted(duplicates.items()))
    raise ValueError(
        f"{len(duplicates)} key(s) of {type(model).__name__} {model.name!r} "
        f"would name more than one variable, so weights could not be "
        f"inherited by name:\n  {listed}\nGive the sub-layers of each layer "
        "distinct names (and each layer's variables distinct names).")
  return keys


def inheritable_arrays(model):
  """The values of `variable_keys(model)`: dict key -> numpy array.

  Under MultiWorkerMirroredStrategy every worker must call this (a variable
  synchronised on read is read collectively), as for checkpoints
  (official/core/checkpointing.py).
  """
  arrays = {}
  for key, variable in variable_keys(model).items():
    array = np.asarray(variable.numpy())
    if array.dtype.name == "bfloat16":
      # The .npy format has no bfloat16 (it would load back as raw bytes);
      # float32 holds every bfloat16 value exactly, and inherit_weights
      # casts it back.
      array = array.astype(np.float32)
    arrays[key] = array
  return arrays


def save_inheritable_weights(model, path):
  """Writes every weight of `model` to the .npz file `path`, atomically.

  The archive holds one array per `variable_keys(model)` key (read it with
  `np.load`). It is written to a temporary file next to `path` that is then
  renamed over `path` (rename(2) on a local disk, as os.replace does), so a
  run killed while saving leaves either the previous file or the new one at
  `path`, never a torn one; a save that fails removes its temporary file.

  Args:
    model: a built keras.Model.
    path: destination file (local or gs://); its directory must exist.

  Returns:
    `path`.

  Raises:
    ValueError: from variable_keys (an unbuilt model, duplicate keys).
  """
  return _write_npz(inheritable_arrays(model), path)


def _write_npz(arrays, path):
  """Writes dict key -> array as an .npz at `path` via a renamed temp file."""
  buffer = io.BytesIO()
  # Written member by member rather than with np.savez(file, **arrays), whose
  # own keyword arguments would clash with a key named "file".
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    for key, array in arrays.items():
      with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(array),
                                  allow_pickle=False)
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  try:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise
  return path


def resolve_source(source):
  """The .npz path of a source: the path itself, or DIR/inheritable_weights.npz.

  Raises:
    FileNotFoundError: the file does not exist; the message names it and
      the run that should have written it.
  """
  path = os.fspath(source)
  if tf.io.gfile.isdir(path):
    model_dir = path
    path = tf.io.gfile.join(model_dir, INHERITABLE_WEIGHTS_FILE)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"Weight inheritance source {path} does not exist: the training "
          f"run in model_dir {model_dir} writes it when it finishes with "
          "Trainer.save_inheritable_weights=True. Finish that run (or rerun "
          "it with that setting; it writes the file even when it has no step "
          "left to train), or pass another source.")
  elif not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"Weight inheritance source {path} does not exist. Pass the model_dir "
        f"of a training run that finished with "
        f"Trainer.save_inheritable_weights=True (it holds "
        f"{INHERITABLE_WEIGHTS_FILE}), or a file written by "
        "official.core.weight_inheritance.save_inheritable_weights.")
  return path


def read_source(path):
  """dict key -> numpy array of an .npz written by save_inheritable_weights.

  Raises:
    ValueError: the file is not a readable .npz archive of arrays.
  """
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
      return {key: archive[key] for key in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(
        f"Weight inheritance source {path} is not a readable .npz of arrays "
        f"({type(e).__name__}: {e}); expected a file written by "
        "save_inheritable_weights (MODEL_DIR/inheritable_weights.npz).") from e


def compile_aliases(aliases):
  """[(compiled regex, replacement)] of (pattern, replacement) pairs.

  Raises:
    ValueError: a rule is not a (str, str) pair or its pattern does not
      compile; the message gives the rule's index and the rule.
  """
  if aliases is None:
    return []
  if isinstance(aliases, str) or not isinstance(aliases, (list, tuple)):
    raise ValueError(f"Weight inheritance aliases must be a sequence of "
                     f"(pattern, replacement) pairs, got {aliases!r}.")
  rules = []
  for index, rule in enumerate(aliases):
    if (not isinstance(rule, (list, tuple)) or len(rule) != 2 or
        not all(isinstance(part, str) for part in rule)):
      raise ValueError(f"Weight inheritance alias {index} is {rule!r}; "
                       "expected a (regex pattern, replacement) pair of "
                       "strings, as for re.sub.")
    try:
      rules.append((re.compile(rule[0]), rule[1]))
    except re.error as e:
      raise ValueError(f"Weight inheritance alias {index} {rule!r}: the "
                       f"pattern does not compile ({e}).") from e
  return rules


def inherit_weights(model, sources, aliases=()):
  """Copies into `model` the variables that its sources hold under its keys.

  For each key of `variable_keys(model)`:
  1. the first source (in the order given) holding the key decides;
  2. a key held by no source is looked up, in every source in order, under
     `re.sub(pattern, replacement, key)` for each alias rule in turn (each
     rule applied to the original key, not to an earlier rule's result);
     the first rule that gives a key some source holds decides;
  3. the value is copied (cast to the variable's dtype if it differs, e.g.
     a float16 variable; same-dtype values are copied bit for bit) when its
     shape is the variable's shape; otherwise the variable is left alone
     and listed under "shape_mismatch" (e.g. a stage whose channel count an
     SP-NAS candidate doubles earlier, Sec. 3.1);
  4. a key found nowhere keeps its initial value and is listed under
     "initialised" (e.g. a block the candidate inserted, Sec. 3.1 "expand").

  Args:
    model: a built keras.Model (under a distribution strategy: its
      variables, assigned in cross-replica context).
    sources: a path or list of paths, each an .npz written by
      save_inheritable_weights or a model_dir holding
      inheritable_weights.npz. Earlier sources take precedence per key.
    aliases: sequence of (regex pattern, replacement) rules; for SP-NAS
      modeling/backbones/spnet_spec.py INHERITANCE_ALIASES, which maps
      "spnet/sub2_block7/..." to "spnet/block7/...", so that a parallel
      subnet starts as a copy of its serial stage (Sec. 3.2).

  Returns:
    A JSON-serialisable report:
      "sources": the .npz paths read, in order;
      "inherited": {key: source path} of every variable copied;
      "aliased": {key: source key} of those copied under an alias;
      "initialised": sorted keys found nowhere (initial values kept);
      "shape_mismatch": [{"key", "expected", "found", "source"} (and
        "source_key" when found under an alias)], shapes as lists, not
        copied;
      "num_unused": number of distinct source keys (over all sources) that
        matched no variable of the model, directly or through an alias.

  Raises:
    FileNotFoundError: a source does not exist (resolve_source).
    ValueError: no source given, a source is not a readable .npz, a bad
      alias rule, or from variable_keys.
  """
  if isinstance(sources, (str, os.PathLike)):
    sources = [sources]
  sources = list(sources or ())
  if not sources:
    raise ValueError("inherit_weights needs at least one source (an .npz "
                     "path or a model_dir); got none.")
  rules = compile_aliases(aliases)
  targets = variable_keys(model)
  loaded = []
  for source in sources:
    path = resolve_source(source)
    loaded.append((path, read_source(path)))

  def lookup(key):
    for path, arrays in loaded:
      if key in arrays:
        return path, arrays[key]
    return None

  inherited, aliased, initialised, mismatched = {}, {}, [], []
  matched = set()
  for key, variable in targets.items():
    source_key, found = key, lookup(key)
    if found is None:
      for pattern, replacement in rules:
        alias = pattern.sub(replacement, key)
        if alias != key:
          found = lookup(alias)
          if found is not None:
            source_key = alias
            break
    if found is None:
      initialised.append(key)
      continue
    matched.add(source_key)
    path, value = found
    expected = tuple(int(d) for d in variable.shape)
    if tuple(value.shape) != expected:
      entry = {"key": key, "expected": list(expected),
               "found": [int(d) for d in value.shape], "source": path}
      if source_key != key:
        entry["source_key"] = source_key
      mismatched.append(entry)
      continue
    if keras.backend.standardize_dtype(value.dtype) != variable.dtype:
      value = keras.ops.cast(value, variable.dtype)
    variable.assign(value)
    inherited[key] = path
    if source_key != key:
      aliased[key] = source_key
  source_keys = set()
  for _, arrays in loaded:
    source_keys.update(arrays)
  return {"sources": [path for path, _ in loaded],
          "inherited": inherited,
          "aliased": aliased,
          "initialised": sorted(initialised),
          "shape_mismatch": mismatched,
          "num_unused": len(source_keys - matched)}


def describe_report(report, max_names=_MAX_LOGGED_NAMES):
  """A log message of an inherit_weights report: counts and first names."""
  def first(names):
    names = list(names)
    shown = "\n    ".join(names[:max_names])
    more = len(names) - max_names
    return (f"\n    {shown}" + (f"\n    ... and {more} more" if more > 0
                                 else "")) if names else ""
  mismatched = [f"{m['key']}: expected {m['expected']}, found {m['found']}"
                for m in report["shape_mismatch"]]
  aliased = [f"{key} <- {source}" for key, source in report["aliased"].items()]
  return (
      f"Inherited {len(report['inherited'])} variables from "
      f"{', '.join(report['sources'])} ({len(aliased)} of them under an "
      f"alias){first(aliased)}\n"
      f"  {len(report['initialised'])} variables found in no source keep "
      f"their initial values{first(report['initialised'])}\n"
      f"  {len(mismatched)} variables not copied for a shape mismatch"
      f"{first(mismatched)}\n"
      f"  {report['num_unused']} source variables matched nothing in the "
      f"model.")


class WeightInheritance:
  """The Trainer's weight inheritance (official/core/trainer.py).

  A mixin of official.core.trainer.Trainer; uses the Trainer's attributes
  model, model_dir, chief, checkpointer, init_checkpoint,
  inherit_weights_from, inherit_weights_aliases and inherit_report.
  """

  def inherit_weights_if_fresh(self):
    """Applies Trainer.inherit_weights_from when the run starts fresh.

    A run that resumes from its own checkpoint never inherits (its
    checkpoint already holds what it inherited and trained since), as
    init_checkpoint is applied only to a fresh run
    (official/core/fine_tuning.py). Builds the model if needed. The report
    is logged and written to MODEL_DIR/inherited_weights.json (chief).

    Returns:
      The inherit_weights report, or None when nothing was inherited.

    Raises:
      FileNotFoundError: a source does not exist.
    """
    if not self.inherit_weights_from:
      return None
    self.build(for_training=True)
    latest = self.checkpointer.latest
    if latest is not None:
      logging.info("Trainer.inherit_weights_from=%s is not applied: the run "
                   "resumes from its own checkpoint %s.",
                   self.inherit_weights_from, latest)
      return None
    report = inherit_weights(self.model, self.inherit_weights_from,
                             self.inherit_weights_aliases)
    logging.info("%s", describe_report(report))
    if self.chief:
      gin_config.write_json(
          tf.io.gfile.join(self.model_dir, INHERIT_REPORT_FILE), report)
    self.inherit_report = report
    return report

  def write_inheritable_weights(self):
    """Writes MODEL_DIR/inheritable_weights.npz (chief); returns its path.

    Every worker reads the variables (some may be read collectively); only
    the chief writes. Returns None on the other workers.
    """
    self.build(for_training=True)
    arrays = inheritable_arrays(self.model)
    if not self.chief:
      return None
    path = _write_npz(arrays, tf.io.gfile.join(self.model_dir,
                                               INHERITABLE_WEIGHTS_FILE))
    logging.info("Wrote %d inheritable variables to %s.", len(arrays), path)
    return path
