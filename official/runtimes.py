"""Runs exported .tflite and .onnx files: the LiteRT and ONNX Runtime interpreters.

`load(path)` opens an export written by official.export --format=tflite or
--format=onnx and returns an `Exported`: calling it on float32 pixels
[batch, S, S, 3] (official/serving.py, `tflite_input`) returns the
outputs by name as numpy arrays, the same names as the SavedModel's
serving_default signature.

- .tflite runs on the LiteRT interpreter of the `ai-edge-litert` package
  (`ai_edge_litert.interpreter.Interpreter`), its serving_default signature
  runner. `tf.lite.Interpreter` is deprecated in its favour; TensorFlow's
  `tf.lite` is used only to convert (official/exporting.py).
- .onnx runs on ONNX Runtime's CPU execution provider.

Both interpreters are imported on first use, so importing this module costs
nothing. What the export carries besides the graph (official/exporting.py):
the training run's config.gin and the label map, beside a .tflite file as
<stem>.config.gin and <stem>.label_map.json, inside an .onnx file as its
metadata_props "config.gin" and "label_map.json".
"""

import dataclasses
import importlib
import json
import os

import numpy as np
import tensorflow as tf

INPUT_KEY = "images"
CONFIG_KEY = "config.gin"
LABEL_MAP_KEY = "label_map.json"
FORMATS = {".tflite": "tflite", ".onnx": "onnx"}


class ExportFileError(ValueError):
  """The file is not a runnable .tflite / .onnx export; the message says why."""


def export_format(path):
  """"tflite" or "onnx" from the file extension, None for anything else."""
  return FORMATS.get(os.path.splitext(path)[1].lower())


@dataclasses.dataclass
class Exported:
  """A loaded .tflite or .onnx export.

  Attributes:
    path: the file.
    format: "tflite" or "onnx".
    input_shape: the input's shape, None for a dynamic dimension
      ([batch, S, S, 3]).
    output_names: the outputs, sorted.
    config: the training run's config.gin text the export carries ("" when
      it carries none).
    label_map: {class id: name} the export carries ({} when none).
    run: callable float32 [batch, S, S, 3] -> {name: np.ndarray}.
  """
  path: str
  format: str
  input_shape: tuple
  output_names: tuple
  config: str
  label_map: dict
  run: object

  def __call__(self, pixels):
    return self.run(np.asarray(pixels, np.float32))

  @property
  def batch_size(self):
    """The fixed batch size, or None when any is accepted."""
    return self.input_shape[0]

  @property
  def image_size(self):
    """(height, width) of the input."""
    return tuple(self.input_shape[1:3])


def _label_map(text, where):
  try:
    raw = json.loads(text)
    return {int(k): str(v) for k, v in raw.items()}
  except (ValueError, AttributeError) as e:
    raise ExportFileError(f"{where} is not a JSON object of class id -> "
                          f"name ({e}).") from e


def _read_if_exists(path):
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    return f.read()


def sidecar_path(path, key):
  """<stem>.config.gin / <stem>.label_map.json beside a .tflite file."""
  return os.path.splitext(path)[0] + "." + key


def _import(module, what):
  """Imports a runtime package, or says which extra installs it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ExportFileError(f"{what} needs the {module} package: pip install "
                          f"-e \".[serving]\" (setup.py).") from e


def _load_tflite(path, num_threads):
  # The LiteRT package's interpreter; tf.lite.Interpreter warns that it is
  # deprecated in favour of this one.
  Interpreter = _import("ai_edge_litert.interpreter",  # pylint: disable=invalid-name
                        f"Running {path}").Interpreter
  try:
    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    runner = interpreter.get_signature_runner()
  except (ValueError, RuntimeError) as e:
    raise ExportFileError(f"{path}: LiteRT cannot load it ({e}); expected "
                          f"a .tflite file written by official.export "
                          f"--format=tflite.") from e
  inputs = runner.get_input_details()
  if list(inputs) != [INPUT_KEY]:
    raise ExportFileError(f"{path}: its serving_default signature takes "
                          f"{sorted(inputs)}; expected one input "
                          f"'{INPUT_KEY}'.")
  shape = tuple(int(d) for d in inputs[INPUT_KEY]["shape"])
  outputs = tuple(sorted(runner.get_output_details()))

  def run(pixels):
    return {k: np.asarray(v) for k, v in runner(**{INPUT_KEY: pixels}).items()}

  config = _read_if_exists(sidecar_path(path, CONFIG_KEY)) or ""
  label_path = sidecar_path(path, LABEL_MAP_KEY)
  text = _read_if_exists(label_path)
  label_map = _label_map(text, label_path) if text else {}
  return Exported(path, "tflite", shape, outputs, config, label_map, run)


def _load_onnx(path, num_threads):
  onnxruntime = _import("onnxruntime", f"Running {path}")
  options = onnxruntime.SessionOptions()
  if num_threads:
    options.intra_op_num_threads = num_threads
  options.log_severity_level = 3  # Errors only.
  try:
    session = onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # ORT raises its own Fail / InvalidGraph types.
    raise ExportFileError(f"{path}: ONNX Runtime cannot load it ({e}); "
                          f"expected an .onnx file written by official.export "
                          f"--format=onnx.") from e
  inputs = session.get_inputs()
  if [i.name for i in inputs] != [INPUT_KEY]:
    raise ExportFileError(f"{path}: the graph takes "
                          f"{[i.name for i in inputs]}; expected one input "
                          f"'{INPUT_KEY}'.")
  shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
  names = [o.name for o in session.get_outputs()]

  def run(pixels):
    return dict(zip(names, session.run(names, {INPUT_KEY: pixels})))

  metadata = session.get_modelmeta().custom_metadata_map
  text = metadata.get(LABEL_MAP_KEY)
  label_map = (_label_map(text, f"{path} metadata '{LABEL_MAP_KEY}'")
               if text else {})
  return Exported(path, "onnx", shape, tuple(sorted(names)),
                  metadata.get(CONFIG_KEY, ""), label_map, run)


def load(path, num_threads=None):
  """Opens a .tflite or .onnx export.

  Args:
    path: the file (its extension says which runtime runs it).
    num_threads: interpreter threads; None for the runtime's default.
  Returns:
    An Exported.
  Raises:
    ExportFileError: not a .tflite / .onnx path, no such file, or the
      runtime cannot load it or it has not the one input "images".
  """
  kind = export_format(path)
  if kind is None:
    raise ExportFileError(f"{path}: expected a .tflite or .onnx file.")
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise ExportFileError(f"{path} does not exist or is not a file.")
  if kind == "tflite":
    return _load_tflite(path, num_threads)
  return _load_onnx(path, num_threads)
