r"""Runs an export (SavedModel, .tflite or .onnx) on images; writes JSON and annotated PNGs.

  python -m official.predict --model=EXPORT --images='photos/*.jpg' \
    --output_dir=VIS [--score_threshold=0.3] [--max_images=N]

EXPORT is a SavedModel directory, a .tflite file (run by LiteRT) or an .onnx
file (run by ONNX Runtime), as official.export writes them; --saved_model is
another name for --model.

--images is one file, a glob pattern, or a directory (its .jpg, .jpeg and .png
files). For each image, VIS/<stem>.json holds the results and VIS/<stem>.png
the image with them drawn; images sharing a stem get <stem>_1, <stem>_2, ...
(each JSON names its image).

Detection exports (outputs num_detections, detection_boxes, detection_scores,
detection_classes) give

  {"image": PATH, "height": H, "width": W, "detections": [
      {"box": [ymin, xmin, ymax, xmax], "score": S, "class_id": C,
       "class_name": NAME}, ...]}

with boxes in pixels of the image file and only detections scoring at least
--score_threshold, highest first. Classification exports (outputs
probabilities, top_k_classes/top_k_probabilities or logits) give "top_k": the
five most probable classes as {"class_id", "class_name", "probability"}, and
the PNG shows the first. Class names come from the export's
assets/label_map.json ({"1": "person", ...}); without one a class is
"class <id>".

The serving_default signature's input says how images are fed: uint8
[batch, height, width, 3] decoded pixels (image_tensor), or strings [batch]
holding the encoded file (image_bytes) or a serialized tf.Example with
image/encoded (tf_example; told apart from image_bytes by the example parsing
in the signature's graph, or by --input_type). Images run one at a time; a
signature with a fixed batch size gets the image repeated to fill it, and one
with a fixed height and width gets it resized (boxes are scaled back).

A .tflite or .onnx export takes float32 pixels of the image already resized
and padded (official/serving.py, `tflite_input`); the preprocessing is the
task's, rebuilt from the training config the export carries
(official/runtimes.py: <stem>.config.gin beside a .tflite file, metadata
inside an .onnx file), and boxes are mapped back to the image file's pixels.
The class names come from the label map it carries the same way.

Unreadable images are skipped with a warning and counted at the end; the exit
status is non-zero when no image could be processed.
"""

import dataclasses
import json
import os
import re

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

# First: another top-level `official` (Model Garden's) is named, not an
# ImportError from deep inside (official/package_check.py).
from official import package_check  # pylint: disable=g-bad-import-order
package_check.ensure_ours()

from dataloaders.datasets import encoded_images
from official import runtimes
from official import serving
from official import visualization
from official.core import gin_config

SIGNATURE = "serving_default"
INPUT_TYPES = ("image_tensor", "image_bytes", "tf_example")
LABEL_MAP = os.path.join("assets", "label_map.json")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DETECTION_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores",
                     "detection_classes")
TOP_K = 5

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None,
                    "A SavedModel directory, .tflite or .onnx file written by "
                    "official.export.")
flags.DEFINE_alias("saved_model", "model")
flags.DEFINE_string("images", None, "An image file, a glob pattern, or a "
                    "directory (its .jpg, .jpeg and .png files).")
flags.DEFINE_string("output_dir", None,
                    "Where <stem>.json and <stem>.png are written.")
flags.DEFINE_float("score_threshold", 0.3,
                   "Detections scoring below this are left out.")
flags.DEFINE_integer("max_images", None,
                     "Only the first N images, in path order.")
flags.DEFINE_enum("input_type", "auto", ["auto", *INPUT_TYPES],
                  "How the signature takes images; auto reads it from the "
                  "signature.")

# Ops that parse tf.Example protos; a string input whose signature graph runs
# one of them takes serialized examples rather than encoded images.
_EXAMPLE_PARSING_OPS = frozenset((
    "ParseExample", "ParseExampleV2", "ParseSingleExample",
    "ParseSequenceExample", "ParseSequenceExampleV2",
    "ParseSingleSequenceExample"))


class PredictError(Exception):
  """A bad flag, export or image set; the message says which and why."""


class ImageError(Exception):
  """One image could not be read, decoded or run; the message says which."""


def _op_error_text(error):
  """A TensorFlow op error's message without its function/op decorations."""
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
  return re.sub(r"\s*\[Op:\w+\]\s*$", "", text).strip()


@dataclasses.dataclass(frozen=True)
class ServingModel:
  """A loaded export and what its serving_default signature expects.

  Attributes:
    loaded: the tf.saved_model.load object; its variables live as long as it.
    function: the serving_default concrete function.
    input_key: name of the signature's one input.
    input_type: "image_tensor", "image_bytes" or "tf_example".
    batch_size: the input's fixed batch size, or None when any is accepted.
    image_size: (height, width) fixed by an image_tensor input, else None.
    task: "detection" or "classification", from the output names.
    class_names: dict class id -> name from assets/label_map.json ({} if
      there is none).
  """
  loaded: object
  function: object
  input_key: str
  input_type: str
  batch_size: int | None
  image_size: tuple[int, int] | None
  task: str
  class_names: dict


@dataclasses.dataclass(frozen=True)
class PixelModel:
  """A loaded .tflite or .onnx export (official/runtimes.py).

  Attributes:
    exported: the runtimes.Exported; calling it runs the model.
    serving_task: the task rebuilt from the config the export carries; its
      serving_preprocess turns an image into the export's input.
    input_key: name of the input ("images").
    input_type: "pixels" (float32 [batch, S, S, 3], serving.tflite_input).
    batch_size: the input's fixed batch size, or None when any is accepted.
    task: "detection" or "classification", from the output names.
    class_names: dict class id -> name from the label map the export
      carries ({} if none).
  """
  exported: object
  serving_task: object
  input_key: str
  input_type: str
  batch_size: int | None
  task: str
  class_names: dict


def _output_task(outputs, where):
  """"detection" or "classification" from output names; PredictError else."""
  outputs = set(outputs)
  if outputs.issuperset(DETECTION_OUTPUTS):
    return "detection"
  if outputs & {"probabilities", "logits"} or outputs.issuperset(
      ("top_k_classes", "top_k_probabilities")):
    return "classification"
  raise PredictError(
      f"{where} returns {sorted(outputs)}; expected detection outputs "
      f"{list(DETECTION_OUTPUTS)} or classification outputs (probabilities,"
      f" logits, or top_k_classes and top_k_probabilities).")


def load_pixel_model(path):
  """Loads a .tflite or .onnx export and the preprocessing it needs.

  Raises:
    PredictError: the file is missing or cannot be loaded, its outputs are
      not a detector's or a classifier's, or it carries no training config
      (or one that does not parse).
  """
  try:
    exported = runtimes.load(path)
  except runtimes.ExportFileError as e:
    raise PredictError(f"--model={path}: {e}") from e
  task = _output_task(exported.output_names, path)
  if not exported.config:
    where = (f"beside it as {runtimes.sidecar_path(path, runtimes.CONFIG_KEY)}"
             if exported.format == "tflite" else
             f"in its metadata_props '{runtimes.CONFIG_KEY}'")
    raise PredictError(f"{path} carries no training config ({where}); it "
                       f"gives the image preprocessing. Export it again with "
                       f"official.export, which writes it.")
  # Imported here: it registers every task with gin, which SavedModels do
  # not need.
  from official import registry  # pylint: disable=g-import-not-at-top
  try:
    gin_config.parse_gin([], [exported.config])
    serving_task = registry.experiment()
  except Exception as e:  # gin wraps what the config's bindings raise.
    raise PredictError(f"{path}: the training config it carries does not "
                       f"build a task ({e}).") from e
  return PixelModel(exported=exported, serving_task=serving_task,
                    input_key=runtimes.INPUT_KEY, input_type="pixels",
                    batch_size=exported.batch_size, task=task,
                    class_names=exported.label_map)


def read_label_map(saved_model_dir):
  """dict int class id -> name from <saved_model_dir>/assets/label_map.json.

  Returns {} when the file does not exist.

  Raises:
    PredictError: the file is not a JSON object of "<int id>": "<name>".
  """
  path = os.path.join(saved_model_dir, LABEL_MAP)
  if not tf.io.gfile.exists(path):
    return {}
  expected = 'expected a JSON object of class id -> name, e.g. {"1": "person"}'
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as e:
    raise PredictError(f"Label map {path} is not valid JSON ({e}); "
                       f"{expected}.") from e
  if not isinstance(raw, dict):
    raise PredictError(f"Label map {path} holds a {type(raw).__name__}; "
                       f"{expected}.")
  names = {}
  for key, name in raw.items():
    try:
      class_id = int(key)
    except ValueError:
      raise PredictError(f"Label map {path} has key {key!r}, not a class id; "
                         f"{expected}.") from None
    if not isinstance(name, str):
      raise PredictError(f"Label map {path} maps {key!r} to {name!r}, not a "
                         f"name; {expected}.")
    names[class_id] = name
  return names


def _parses_examples(function):
  graph_def = function.graph.as_graph_def()
  op_types = {node.op for node in graph_def.node}
  for library_function in graph_def.library.function:
    op_types.update(node.op for node in library_function.node_def)
  return bool(op_types & _EXAMPLE_PARSING_OPS)


def _input_type(spec, function, requested, where):
  """The input type of a signature input, checked against --input_type."""
  takes_pixels = spec.dtype == tf.uint8 and spec.shape.rank == 4 and (
      spec.shape[-1] in (None, 3))
  takes_strings = spec.dtype == tf.string and spec.shape.rank == 1
  found = f"{spec.dtype.name} {spec.shape}"
  if not takes_pixels and not takes_strings:
    raise PredictError(
        f"{where} takes {found}; expected uint8 [batch, height, width, 3] "
        f"(image_tensor) or string [batch] (image_bytes or tf_example).")
  if requested == "auto":
    if takes_pixels:
      return "image_tensor"
    return "tf_example" if _parses_examples(function) else "image_bytes"
  if (requested == "image_tensor") != takes_pixels:
    expected = ("uint8 [batch, height, width, 3]"
                if requested == "image_tensor" else "string [batch]")
    raise PredictError(f"--input_type={requested} needs an input of "
                       f"{expected}, but {where} takes {found}.")
  return requested


def load_model(saved_model_dir, input_type="auto"):
  """Loads an export and reads how it is fed.

  Args:
    saved_model_dir: directory written by tf.saved_model.save, or a .tflite
      or .onnx file (load_pixel_model).
    input_type: "auto" (from the signature), or one of INPUT_TYPES
      (SavedModels only).
  Returns:
    A ServingModel, or a PixelModel for a .tflite or .onnx file.
  Raises:
    PredictError: the directory is missing or not a SavedModel, it has no
      serving_default signature, or the signature's input or outputs are
      not those of a detection or classification export; for a .tflite or
      .onnx file, what load_pixel_model raises, or an input_type other than
      "auto".
  """
  if input_type not in ("auto", *INPUT_TYPES):
    raise PredictError(f"input_type is {input_type!r}; expected 'auto' or "
                       f"one of {INPUT_TYPES}.")
  if runtimes.export_format(saved_model_dir):
    if input_type != "auto":
      raise PredictError(f"--input_type={input_type} is for SavedModels; "
                         f"{saved_model_dir} takes float32 pixels "
                         f"(leave --input_type at auto).")
    return load_pixel_model(saved_model_dir)
  if not tf.io.gfile.isdir(saved_model_dir):
    what = ("is a file" if tf.io.gfile.exists(saved_model_dir)
            else "does not exist")
    raise PredictError(f"--model={saved_model_dir} {what}; expected the "
                       f"SavedModel directory, .tflite or .onnx file written "
                       f"by official.export.")
  if not any(tf.io.gfile.exists(os.path.join(saved_model_dir, name))
             for name in ("saved_model.pb", "saved_model.pbtxt")):
    found = sorted(tf.io.gfile.listdir(saved_model_dir))
    raise PredictError(
        f"--model={saved_model_dir} is not a SavedModel: it has no "
        f"saved_model.pb; it holds {found or 'nothing'}.")
  loaded = tf.saved_model.load(saved_model_dir)
  if SIGNATURE not in loaded.signatures:
    raise PredictError(
        f"SavedModel {saved_model_dir} has no '{SIGNATURE}' signature; its "
        f"signatures are {sorted(loaded.signatures.keys()) or 'none'}.")
  function = loaded.signatures[SIGNATURE]
  where = f"{saved_model_dir} signature '{SIGNATURE}'"

  _, inputs = function.structured_input_signature
  if len(inputs) != 1:
    raise PredictError(f"{where} takes inputs {sorted(inputs)}; expected one "
                       f"image input ('images').")
  (input_key, spec), = inputs.items()
  resolved_type = _input_type(spec, function, input_type,
                              f"{where} input '{input_key}'")
  image_size = None
  if resolved_type == "image_tensor" and None not in spec.shape[1:3]:
    image_size = (spec.shape[1], spec.shape[2])

  task = _output_task(function.structured_outputs, where)
  return ServingModel(
      loaded=loaded, function=function, input_key=input_key,
      input_type=resolved_type, batch_size=spec.shape[0],
      image_size=image_size, task=task,
      class_names=read_label_map(saved_model_dir))


def find_images(pattern):
  """Sorted image paths for --images: one file, a glob, or a directory.

  Raises:
    PredictError: nothing matches (the message gives the pattern).
  """
  if tf.io.gfile.isdir(pattern):
    paths = [os.path.join(pattern, name)
             for name in tf.io.gfile.listdir(pattern)
             if name.lower().endswith(IMAGE_EXTENSIONS)]
    paths = [path for path in paths if not tf.io.gfile.isdir(path)]
    if not paths:
      raise PredictError(f"--images={pattern} is a directory with no "
                         f"{', '.join(IMAGE_EXTENSIONS)} files in it.")
    return sorted(paths)
  try:
    paths = tf.io.gfile.glob(pattern)
  except tf.errors.NotFoundError:
    paths = []
  paths = sorted(path for path in paths if not tf.io.gfile.isdir(path))
  if not paths:
    raise PredictError(f"No images match --images={pattern!r}.")
  return paths


def output_stems(paths):
  """A distinct output file stem per input path.

  An image's stem is its file name without the extension; images sharing a
  stem (in different directories, or cat.jpg beside cat.png) are numbered in
  path order: cat_1, cat_2. Stems are compared ignoring case, so outputs stay
  apart on case-insensitive file systems too.
  """
  stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
  counts = {}
  for stem in stems:
    counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
  taken = {stem.lower() for stem in stems if counts[stem.lower()] == 1}
  result = []
  for stem in stems:
    if counts[stem.lower()] == 1:
      result.append(stem)
      continue
    number = 1
    while f"{stem}_{number}".lower() in taken:
      number += 1
    taken.add(f"{stem}_{number}".lower())
    result.append(f"{stem}_{number}")
  return result


def _serialized_example(data, path, height, width):
  image_format = encoded_images.image_format(data) or (
      os.path.splitext(path)[1].lstrip(".").lower())

  def bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def int_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  example = tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": bytes_feature(data),
      "image/format": bytes_feature(image_format.encode()),
      "image/height": int_feature(height),
      "image/width": int_feature(width),
      "image/source_id": bytes_feature(os.path.basename(path).encode()),
  }))
  return example.SerializeToString()


def _model_input(model, data, path, image):
  """The signature's input for one image: [batch, ...], batch 1 or fixed."""
  if model.input_type == "image_tensor":
    pixels = image
    if model.image_size is not None:
      pixels = tf.image.resize(pixels, model.image_size)
      pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
    batch = pixels[tf.newaxis]
  elif model.input_type == "image_bytes":
    batch = tf.constant([data])
  else:
    height, width = image.shape[:2]
    batch = tf.constant([_serialized_example(data, path, height, width)])
  if model.batch_size is not None and model.batch_size > 1:
    # Fixed-batch exports: fill the batch with copies; only row 0 is read.
    batch = tf.repeat(batch, model.batch_size, axis=0)
  return batch


def _detections(model, outputs, height, width, score_threshold,
                resized_to=None):
  """Detections of row 0 above the threshold, highest score first.

  resized_to: (height, width) the image was resized to when the boxes are
  in that image's pixels (scaled back here); None when they are in the
  image file's pixels.
  """
  count = int(outputs["num_detections"][0])
  boxes = np.asarray(outputs["detection_boxes"][0][:count], np.float64)
  scores = np.asarray(outputs["detection_scores"][0][:count], np.float64)
  class_ids = np.round(outputs["detection_classes"][0][:count]).astype(int)
  if resized_to is not None:
    scale_y = height / resized_to[0]
    scale_x = width / resized_to[1]
    boxes = boxes * np.array([scale_y, scale_x, scale_y, scale_x])
  keep = (class_ids != 0) & (scores >= score_threshold)
  order = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")]
  return [{"box": [round(float(v), 2) for v in boxes[i]],
           "score": round(float(scores[i]), 4),
           "class_id": int(class_ids[i]),
           "class_name": visualization.class_label(class_ids[i],
                                                   model.class_names)}
          for i in order]


def _top_k(model, outputs):
  """The TOP_K most probable classes of row 0."""
  if "probabilities" in outputs or "logits" in outputs:
    if "probabilities" in outputs:
      probabilities = np.asarray(outputs["probabilities"][0], np.float64)
    else:
      logits = np.asarray(outputs["logits"][0], np.float64)
      probabilities = np.exp(logits - logits.max())
      probabilities /= probabilities.sum()
    class_ids = np.argsort(-probabilities, kind="stable")[:TOP_K]
    probabilities = probabilities[class_ids]
  else:
    class_ids = np.asarray(outputs["top_k_classes"][0][:TOP_K]).astype(int)
    probabilities = np.asarray(outputs["top_k_probabilities"][0][:TOP_K],
                               np.float64)
  return [{"class_id": int(class_id),
           "class_name": visualization.class_label(class_id,
                                                   model.class_names),
           "probability": round(float(probability), 4)}
          for class_id, probability in zip(class_ids, probabilities)]


def predict_image(model, path, score_threshold):
  """Runs the model on one image file.

  Args:
    model: a ServingModel.
    path: the image file (JPEG, PNG, or anything tf.io.decode_image reads).
    score_threshold: detections scoring below it are left out.
  Returns:
    (image, record): the decoded [height, width, 3] uint8 RGB image, and the
    JSON record described in the module docstring.
  Raises:
    ImageError: the file cannot be read or decoded, or the model fails on it.
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except tf.errors.OpError as e:
    raise ImageError(f"cannot read it ({_op_error_text(e)})") from e
  try:
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    raise ImageError(f"cannot decode it ({_op_error_text(e)}); expected a "
                     f"JPEG, PNG, GIF or BMP image") from e
  height, width = image.shape[:2]
  if isinstance(model, PixelModel):
    outputs = _run_pixel_model(model, image)
    resized_to = None  # _run_pixel_model maps boxes back.
  else:
    try:
      outputs = model.function(
          **{model.input_key: _model_input(model, data, path, image)})
    except tf.errors.OpError as e:
      raise ImageError(f"the model failed on it ({_op_error_text(e)})") from e
    outputs = {key: value.numpy() for key, value in outputs.items()}
    resized_to = model.image_size
  record = {"image": path, "height": int(height), "width": int(width)}
  if model.task == "detection":
    record["detections"] = _detections(model, outputs, height, width,
                                       score_threshold, resized_to)
  else:
    record["top_k"] = _top_k(model, outputs)
  return image.numpy(), record


def _run_pixel_model(model, image):
  """Outputs of a PixelModel for one uint8 image; boxes in its pixels."""
  try:
    pixels, image_info = serving.tflite_input(model.serving_task, image)
  except tf.errors.OpError as e:
    raise ImageError(f"its preprocessing failed ({_op_error_text(e)})") from e
  pixels = pixels.numpy()
  if model.batch_size is not None and model.batch_size > 1:
    # Fixed-batch exports: fill the batch with copies; only row 0 is read.
    pixels = np.repeat(pixels, model.batch_size, axis=0)
  try:
    outputs = model.exported(pixels)
  except Exception as e:  # LiteRT raises RuntimeError, ORT its own types.
    raise ImageError(f"the model failed on it ({e})") from e
  if model.task == "detection":
    # Boxes are in the model input's pixels (serving.tflite_input).
    from official.tasks.retinanet import original_image_boxes  # pylint: disable=g-import-not-at-top
    outputs["detection_boxes"] = original_image_boxes(
        tf.constant(outputs["detection_boxes"][:1]),
        image_info[None]).numpy()
  return outputs


def draw_record(image, record, class_names):
  """The image with a record's detections, or its top-1 class, drawn on it."""
  if "detections" in record:
    detections = record["detections"]
    return visualization.draw_detections(
        image, np.array([d["box"] for d in detections]).reshape(-1, 4),
        [d["class_id"] for d in detections],
        [d["score"] for d in detections], class_names)
  best = record["top_k"][0]
  return visualization.draw_caption(
      image, f"{best['class_name']} {best['probability']:.2f}",
      color=visualization.class_color(best["class_id"]))


def _summary_line(record):
  if "detections" in record:
    count = len(record["detections"])
    return f"{count} detection{'' if count == 1 else 's'}"
  best = record["top_k"][0]
  return f"top-1 {best['class_name']} ({best['probability']:.2f})"


def predict(saved_model_dir, images, output_dir, score_threshold=0.3,
            max_images=None, input_type="auto"):
  """Runs an export on images and writes <stem>.json and <stem>.png for each.

  Args:
    saved_model_dir: the export (see load_model).
    images: one image file, a glob pattern, or a directory.
    output_dir: where the results go (created if needed).
    score_threshold: float in [0, 1]; detections scoring below it are left
      out (detection exports only).
    max_images: process only the first N images in path order (None: all).
    input_type: "auto" or one of INPUT_TYPES.
  Returns:
    {"written": [JSON paths], "failed": [image paths that could not be read,
    decoded or run]}.
  Raises:
    PredictError: bad arguments, a missing or unusable export, no images
      matched, or output_dir would overwrite an input image.
  """
  if not 0.0 <= score_threshold <= 1.0:
    raise PredictError(f"--score_threshold={score_threshold}; expected a "
                       f"score in [0, 1].")
  if max_images is not None and max_images < 1:
    raise PredictError(f"--max_images={max_images}; expected at least 1 "
                       f"(or leave it unset for all images).")
  paths = find_images(images)
  if max_images is not None:
    paths = paths[:max_images]
  stems = output_stems(paths)
  outputs = [os.path.join(output_dir, stem) for stem in stems]
  inputs = {os.path.normpath(os.path.abspath(path)) for path in paths}
  for output in outputs:
    for extension in (".json", ".png"):
      if os.path.normpath(os.path.abspath(output + extension)) in inputs:
        raise PredictError(f"--output_dir={output_dir} would overwrite the "
                           f"input image {output + extension}; choose "
                           f"another --output_dir.")

  model = load_model(saved_model_dir, input_type)
  logging.info("Loaded a %s export from %s (input '%s', %s, batch %s); "
               "%d image(s), %s.", model.task, saved_model_dir,
               model.input_key, model.input_type, model.batch_size or "any",
               len(paths), f"{len(model.class_names)} class names"
               if model.class_names else "no label map")
  tf.io.gfile.makedirs(output_dir)
  written, failed = [], []
  for index, (path, output) in enumerate(zip(paths, outputs), start=1):
    try:
      image, record = predict_image(model, path, score_threshold)
    except ImageError as e:
      logging.warning("[%d/%d] Skipping %s: %s.", index, len(paths), path, e)
      failed.append(path)
      continue
    with tf.io.gfile.GFile(output + ".json", "w") as f:
      f.write(json.dumps(record, indent=2) + "\n")
    with tf.io.gfile.GFile(output + ".png", "wb") as f:
      visualization.save_png(draw_record(image, record, model.class_names),
                             f)
    written.append(output + ".json")
    logging.info("[%d/%d] %s (%dx%d): %s -> %s.{json,png}", index, len(paths),
                 path, record["width"], record["height"],
                 _summary_line(record), output)
  skipped = (f"; skipped {len(failed)} (unreadable, or the model failed on "
             f"them): {failed}" if failed else "")
  logging.info("Wrote results for %d of %d image(s) to %s%s.", len(written),
               len(paths), output_dir, skipped)
  return {"written": written, "failed": failed}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  for name in ("model", "images", "output_dir"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required.")
  try:
    result = predict(FLAGS.model, FLAGS.images, FLAGS.output_dir,
                     FLAGS.score_threshold, FLAGS.max_images,
                     FLAGS.input_type)
  except PredictError as e:
    raise app.UsageError(str(e)) from e
  if not result["written"]:
    logging.error("None of the %d image(s) could be processed.",
                  len(result["failed"]))
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
