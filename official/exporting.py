"""Export library: rebuild a trained model from its directory, write SavedModels, TFLite and ONNX.

The command line is official/export.py (its docstring describes the outputs);
notebooks and tools call these functions directly. Exported .tflite and
.onnx files are run by official/runtimes.py.
"""

import collections
import contextlib
import json
import logging as std_logging
import os
import tempfile
import uuid
import warnings

import gin
import keras
import tensorflow as tf
from absl import logging

from dataloaders import readers
from official import bn_folding
from official import registry
from official import runtimes
from official import serving
from official.core import checkpointing
from official.core import gin_config
from official.core import task as task_lib

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float32", "float16", "int8")
LABEL_MAP_FILE = "label_map.json"
# ONNX opset of the exports: NonMaxSuppression (10+) with the batched,
# class-aware semantics combined NMS maps to, opset 13's Squeeze/Unsqueeze
# axes as inputs; 17 is the newest that tf2onnx 1.17 writes with every
# handler we use and that ONNX Runtime and TensorRT 8.6+ both run.
ONNX_OPSET = 17
# TFLite ops left in float32 by int8 quantization. Post-processing must stay
# float (8-bit scores tie in top-k; 8-bit anchors, exp() and the class shift
# before NMS ruin the boxes); the box decode shares ADD / SUB / MUL with the
# network's fusion sums, which therefore stay float as well. Convolutions,
# pooling and resampling are int8.
FLOAT_OPS_IN_INT8 = ("LOGISTIC", "TOPK_V2", "GATHER", "EXP",
                     "NON_MAX_SUPPRESSION_V5", "SELECT_V2", "MINIMUM",
                     "MAXIMUM", "TILE", "FLOOR_DIV", "FLOOR_MOD",
                     "REDUCE_MAX", "SOFTMAX", "PACK", "UNPACK", "ADD", "SUB",
                     "MUL", "STRIDED_SLICE", "CAST")


# The start of tf.lite.Interpreter's deprecation warning (a regex).
_TFLITE_INTERPRETER_WARNING = r"\s*Warning: tf.lite.Interpreter is deprecated"


class ExportError(ValueError):
  """The export cannot be made from what was given."""


def load_task(model_dir, gin_params=(), image_size=None):
  """Parses model_dir/config.gin (and overrides) and returns the task.

  Args:
    model_dir: a training run's directory.
    gin_params: extra gin bindings, parsed after the config.
    image_size: when set, the model's square input size.
  Raises:
    ExportError: model_dir has no config.gin.
  """
  config = tf.io.gfile.join(model_dir, gin_config.CONFIG_FILE)
  if not tf.io.gfile.exists(config):
    raise ExportError(f"{config} does not exist: --model_dir must be a "
                      f"directory written by official.train (it keeps the "
                      f"config the model is rebuilt from).")
  gin_config.parse_gin([config], list(gin_params))
  task = registry.experiment()
  if image_size is not None:
    if not hasattr(task, "image_size"):
      raise ExportError(f"--image_size: {type(task).__name__} has no "
                        f"image_size to override.")
    task.image_size = int(image_size)
  return task


def restore_model(task, model_dir, checkpoint=None):
  """Builds the task's model and restores a checkpoint into it.

  Args:
    task: the task from load_task.
    model_dir: where to look for the latest checkpoint.
    checkpoint: a checkpoint path prefix (ckpt-N), or None for the latest.
  Returns:
    (model, checkpoint path).
  Raises:
    ExportError: no checkpoint was found.
    checkpointing.CheckpointMismatchError: the checkpoint does not fit the
      model (the message lists the variables).
  """
  model = task.build_model()
  if checkpoint is None:
    checkpoint = tf.train.latest_checkpoint(model_dir)
    if checkpoint is None:
      raise ExportError(f"No checkpoint in {model_dir}; train first or pass "
                        f"--checkpoint.")
  elif not tf.io.gfile.glob(checkpoint + ".index"):
    raise ExportError(f"--checkpoint={checkpoint}: no such checkpoint "
                      f"({checkpoint}.index does not exist); pass the path "
                      f"prefix, e.g. {os.path.join(model_dir, 'ckpt-100')}.")
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  checkpointing.Checkpointer(model_dir, model, step).restore(checkpoint)
  logging.info("Restored %s (step %d).", checkpoint, int(step.numpy()))
  return model, checkpoint


def _assets(task, directory):
  """Writes config.gin and label_map.json (if known) into directory."""
  paths = [gin_config.write_config(directory, gin_config.CONFIG_FILE,
                                   gin.config_str())]
  label_map = task.label_map()
  if label_map:
    paths.append(gin_config.write_json(
        os.path.join(directory, LABEL_MAP_FILE),
        {str(k): v for k, v in sorted(label_map.items())}))
  return paths


def check_destination(export_dir, overwrite):
  """Raises ExportError when export_dir exists and overwrite is off."""
  if tf.io.gfile.exists(export_dir) and not overwrite:
    raise ExportError(f"{export_dir} already exists; pass --overwrite to "
                      f"replace it (it is replaced only once the new export "
                      f"is complete).")


def _move_into_place(tmp, export_dir):
  if tf.io.gfile.exists(export_dir):
    if tf.io.gfile.isdir(export_dir):
      tf.io.gfile.rmtree(export_dir)
    else:
      tf.io.gfile.remove(export_dir)
  tf.io.gfile.rename(tmp, export_dir)


def _write_file(export_path, data):
  """Writes bytes to a temporary file beside export_path, then moves it over
  export_path: a failure or a kill leaves the previous export whole."""
  tmp = f"{export_path}.tmp-{uuid.uuid4().hex}"
  try:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(data)
    _move_into_place(tmp, export_path)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def write_saved_model(model, function, path, assets=()):
  """Writes `function` as the serving_default signature of a SavedModel.

  Through a Keras ExportArchive, which records the Keras 3 variables so that
  session-based loaders (TF Serving, saved_model_cli run) and the TFLite
  converter find them; a plain tf.Module leaves them unrestorable there.

  Args:
    model: the Keras model whose variables `function` reads.
    function: a tf.function with an input signature.
    path: the SavedModel directory to write.
    assets: paths of files copied into path/assets/ (config.gin,
      label_map.json).
  """
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serving_default", function.python_function,
                       input_signature=function.input_signature)
  archive.write_out(path, verbose=False)
  # Plain files: no graph op reads them, so they are not registered assets.
  for asset in assets:
    target = tf.io.gfile.join(path, "assets", os.path.basename(asset))
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.copy(asset, target, overwrite=True)


def write_frozen_saved_model(function, path, assets=()):
  """Writes a variable-free tf.function as a SavedModel's serving_default.

  For a function whose weights are constants of its graph (a frozen,
  batch-norm-folded one, official/bn_folding.py): with no variables to
  restore, a plain tf.Module save loads in session-based loaders too.

  Args:
    function: a traced tf.function with an input signature and no captured
      variables.
    path: the SavedModel directory to write.
    assets: paths of files copied into path/assets/.
  """
  module = tf.Module()
  module.serve = function
  # A serving graph is never differentiated, and the custom gradients of
  # its ops (tf.nn.silu's) would capture frozen constants that cannot be
  # saved.
  tf.saved_model.save(
      module, path,
      signatures={"serving_default": function.get_concrete_function()},
      options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
  for asset in assets:
    target = tf.io.gfile.join(path, "assets", os.path.basename(asset))
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.copy(asset, target, overwrite=True)


def export_saved_model(task, model, export_dir, input_type="image_tensor",
                       batch_size=None, overwrite=False,
                       fold_batch_norms=True):
  """Writes a SavedModel with a serving_default signature; returns its path.

  See the module docstring of official/export.py for the signature and
  assets.

  Args:
    task, model: the task and its restored model.
    export_dir: the SavedModel directory to write.
    input_type: one of serving.INPUT_TYPES.
    batch_size: fixed batch size of the signature, or None for any.
    overwrite: replace an existing export_dir.
    fold_batch_norms: freeze the weights and fold every inference batch
      norm into the convolution before it (official/bn_folding.py); the
      log says how many folded and names any that did not. False: the
      weights stay variables and the batch norms stay ops.
  Raises:
    ExportError: export_dir exists and overwrite is off.
  """
  check_destination(export_dir, overwrite)
  function = serving.serving_function(task, model, input_type, batch_size)
  if fold_batch_norms:
    function, _ = bn_folding.fold_function(function)
  tmp = f"{export_dir.rstrip('/')}.tmp-{uuid.uuid4().hex}"
  with tempfile.TemporaryDirectory() as scratch:
    try:
      if fold_batch_norms:
        write_frozen_saved_model(function, tmp, _assets(task, scratch))
      else:
        write_saved_model(model, function, tmp, _assets(task, scratch))
      _move_into_place(tmp, export_dir)
    finally:
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
  logging.info("Wrote the SavedModel %s (input %s, batch %s, batch norms "
               "%s).", export_dir, input_type, batch_size or "any",
               "folded" if fold_batch_norms else "not folded")
  return export_dir


def calibration_images(task, num_images):
  """Yields up to num_images TFLite inputs from the training records."""
  try:
    # DatasetTask.record_pattern names the tool that writes missing records.
    pattern = (task.record_pattern(training=True)
               if hasattr(task, "record_pattern") else
               task.input_files(training=True))
  except task_lib.MissingRecordsError as e:
    raise ExportError(f"int8 calibration reads the training records: "
                      f"{e}") from None
  if not pattern or isinstance(pattern, (list, tuple)) and not pattern:
    raise ExportError(f"int8 calibration reads the training records, but "
                      f"{type(task).__name__} names no record files.")
  files = readers.list_files(pattern)
  dataset = tf.data.TFRecordDataset(files).take(num_images)
  count = 0
  for record in dataset:
    pixels, _ = serving.tflite_input(task,
                                     serving.image_from_example(record))
    count += 1
    yield [pixels]
  if not count:
    raise ExportError(f"int8 calibration: no records in {pattern}.")
  logging.info("Calibrated int8 on %d images.", count)


def export_tflite(task, model, export_path, quantization="float32",
                  num_calibration_images=100, overwrite=False):
  """Writes a .tflite model (see the module docstring); returns its path."""
  if quantization not in QUANTIZATIONS:
    raise ExportError(f"--quantization must be one of "
                      f"{', '.join(QUANTIZATIONS)}, got {quantization!r}.")
  check_destination(export_path, overwrite)
  function = serving.tflite_function(task, model)
  with tempfile.TemporaryDirectory() as scratch:
    # From a SavedModel the converter freezes the variables into constants.
    write_saved_model(model, function, scratch)
    converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float32":
      flatbuffer = converter.convert()
    elif quantization == "float16":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
      flatbuffer = converter.convert()
    else:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: calibration_images(
          task, num_calibration_images)
      # The quantization debugger is the converter's way to keep chosen op
      # types in float (FLOAT_OPS_IN_INT8). It opens tf.lite.Interpreters of
      # its own, part of the conversion, which warn that tf.lite.Interpreter
      # is deprecated (runtimes.py runs exports on LiteRT's); the warning is
      # not about anything we run.
      with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TFLITE_INTERPRETER_WARNING)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: calibration_images(task, 1),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(FLOAT_OPS_IN_INT8)))
        flatbuffer = debugger.get_nondebug_quantized_model()
  _write_file(export_path, flatbuffer)
  # Beside the model (a .tflite file has no assets folder): the config, for
  # official.predict's preprocessing, and the label map.
  with tf.io.gfile.GFile(
      runtimes.sidecar_path(export_path, runtimes.CONFIG_KEY), "w") as f:
    f.write(gin.config_str())
  label_map = task.label_map()
  if label_map:
    gin_config.write_json(
        runtimes.sidecar_path(export_path, runtimes.LABEL_MAP_KEY),
        {str(k): v for k, v in sorted(label_map.items())})
  logging.info("Wrote the TFLite model %s (%s, %.1f MB).", export_path,
               quantization, len(flatbuffer) / 2**20)
  return export_path


class _Tf2onnxFailures(std_logging.Handler):
  """Collects what tf2onnx logs about ops it could not convert.

  tf2onnx logs an op without a handler ("Tensorflow op [name: type] is not
  supported") and leaves it in the graph, and logs a handler that failed
  ("Failed to convert node ...") before raising its exception; the records
  carry the node name and op type that our error message names.
  """

  def __init__(self):
    super().__init__(std_logging.ERROR)
    self.unsupported = collections.OrderedDict()  # op type -> node names
    self.failed = []  # (node name, handler)

  def emit(self, record):
    message, args = str(record.msg), record.args or ()
    if "is not supported" in message and len(args) == 2:
      self.unsupported.setdefault(str(args[1]), []).append(str(args[0]))
    elif message.startswith("Failed to convert node") and len(args) >= 2:
      handler = getattr(args[1], "__qualname__", str(args[1]))
      self.failed.append((str(args[0]), handler.split(".")[0]))


@contextlib.contextmanager
def _tf2onnx_logging():
  """Records tf2onnx's conversion failures; keeps its INFO lines quiet."""
  failures = _Tf2onnxFailures()
  logger = std_logging.getLogger("tf2onnx")
  level = logger.level
  logger.addHandler(failures)
  logger.setLevel(std_logging.ERROR)
  try:
    yield failures
  finally:
    logger.removeHandler(failures)
    logger.setLevel(level)


def _unconvertible(failures, node_op):
  """The ExportError message part listing what tf2onnx could not convert."""
  parts = []
  for op, nodes in failures.unsupported.items():
    parts.append(f"TensorFlow op {op} (node {nodes[0]}"
                 f"{f' and {len(nodes) - 1} more' if len(nodes) > 1 else ''})"
                 f" has no ONNX conversion in tf2onnx")
  for node, handler in failures.failed:
    op = node_op.get(node, handler)
    parts.append(f"TensorFlow op {op} (node {node}) failed to convert")
  return "; ".join(parts)


def _onnx_packages():
  """(onnx, tf2onnx), imported on first use; ExportError when missing."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ExportError(f"--format=onnx needs onnx and tf2onnx ({e}): pip "
                      f"install -e \".[serving]\" (setup.py).") from e
  return onnx, tf2onnx


def convert_to_onnx(function, opset=ONNX_OPSET):
  """Converts a traced tf.function (variables frozen) to an ONNX ModelProto.

  Args:
    function: a tf.function with an input signature, already traced.
    opset: the ONNX opset to write.
  Returns:
    The onnx.ModelProto, checked by onnx.checker.
  Raises:
    ExportError: an op of the graph has no ONNX conversion, or its
      conversion failed; the message names the TensorFlow op type and node.
  """
  onnx, tf2onnx = _onnx_packages()
  concrete = function.get_concrete_function()
  node_op = {node.name: node.op
             for node in concrete.graph.as_graph_def().node}
  with _tf2onnx_logging() as failures:
    try:
      model_proto, _ = tf2onnx.convert.from_function(
          function, input_signature=function.input_signature, opset=opset)
    except Exception as e:  # A handler's own exception; named below.
      listed = _unconvertible(failures, node_op)
      raise ExportError(f"ONNX conversion (tf2onnx {tf2onnx.__version__}, "
                        f"opset {opset}) failed: {listed or e}"
                        f"{f' ({e})' if listed else ''}.") from e
  # tf2onnx keeps going past ops it cannot map, leaving TensorFlow nodes in
  # the graph; no ONNX runtime would load that.
  listed = _unconvertible(failures, node_op)
  foreign = sorted({f"{node.op_type} (node {node.name})"
                    for node in model_proto.graph.node
                    if not onnx.defs.has(node.op_type, node.domain)})
  if listed or foreign:
    raise ExportError(f"ONNX conversion (tf2onnx {tf2onnx.__version__}, "
                      f"opset {opset}) cannot convert the graph: "
                      f"{listed or 'ops with no ONNX schema: ' + ', '.join(foreign)}"
                      f". Nothing was written.")
  onnx.checker.check_model(model_proto)
  return model_proto


def export_onnx(task, model, export_path, batch_size=None, opset=ONNX_OPSET,
                overwrite=False, fold_batch_norms=True):
  """Writes an .onnx model (see official/export.py); returns its path.

  Input "images" float32 [batch, S, S, 3] pixels as for TFLite
  (serving.tflite_input), batch dynamic unless batch_size fixes it; the
  task's outputs by name, detectors' NMS as ONNX NonMaxSuppression. The
  training config and label map travel in the model's metadata_props
  (runtimes.CONFIG_KEY, runtimes.LABEL_MAP_KEY).

  fold_batch_norms: fold the batch norms into the convolutions before the
  conversion (official/bn_folding.py). tf2onnx folds most but not all by
  itself (the tiny SpineNet RetinaNet of tests/official/test_export.py kept
  15 of its 140 as ONNX BatchNormalization nodes); ONNX Runtime folds the
  rest when it loads the model, but other runtimes read the graph as
  written.

  Raises:
    ExportError: export_path exists and overwrite is off, or the graph does
      not convert (the message names the op).
  """
  onnx, _ = _onnx_packages()
  check_destination(export_path, overwrite)
  function = serving.onnx_function(task, model, batch_size)
  if fold_batch_norms:
    function, _ = bn_folding.fold_function(function)
  model_proto = convert_to_onnx(function, opset)
  metadata = {runtimes.CONFIG_KEY: gin.config_str()}
  label_map = task.label_map()
  if label_map:
    metadata[runtimes.LABEL_MAP_KEY] = json.dumps(
        {str(k): v for k, v in sorted(label_map.items())})
  onnx.helper.set_model_props(model_proto, metadata)
  data = model_proto.SerializeToString()
  _write_file(export_path, data)
  logging.info("Wrote the ONNX model %s (opset %d, batch %s, %.1f MB).",
               export_path, opset, batch_size or "any", len(data) / 2**20)
  return export_path
