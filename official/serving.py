"""The serving graph: input decoding, the task's preprocessing, the model, outputs.

`serving_function` wraps a task and its model in a tf.function that takes
one of three inputs, all under the signature key "images":

  image_tensor  uint8 [batch, height, width, 3], any height and width;
  image_bytes   string [batch], encoded JPEG / PNG / GIF / BMP images;
  tf_example    string [batch], serialized tf.Examples with image/encoded.

Every image goes through the task's evaluation preprocessing
(`Task.serving_preprocess`), so a served image is seen exactly as in
evaluation, and the outputs come from `Task.serving_outputs` (detections in
original-image pixels, or class probabilities).

`tflite_function` is the TFLite entry point instead: float32 [1, S, S, 3]
RGB pixels 0..255 of an image already resized so that it fits in S x S
(long side S for detection), placed at the top-left and padded with
`TFLITE_PAD_RGB`; normalisation, the model and post-processing run inside.
Detection boxes are then in those input pixels.

`onnx_function` takes the same pixels with any batch size (or a fixed one),
and post-processes with tf.image.combined_non_max_suppression, which tf2onnx
turns into ONNX's NonMaxSuppression (batched, class-aware); the TFLite path's
per-image NonMaxSuppressionV5 loop needs a static batch.
"""

import contextlib

import tensorflow as tf

from dataloaders.classification import IMAGENET_MEAN_RGB
from dataloaders.classification import IMAGENET_STDDEV_RGB

INPUT_TYPES = ("image_tensor", "image_bytes", "tf_example")
INPUT_KEY = "images"
# TFLite inputs are padded with the mean colour: after normalisation it is 0,
# which is what evaluation pads with.
TFLITE_PAD_RGB = IMAGENET_MEAN_RGB


def input_signature(input_type, batch_size=None):
  """The tf.TensorSpec of the serving input (see the module docstring)."""
  if input_type not in INPUT_TYPES:
    raise ValueError(f"input_type must be one of {', '.join(INPUT_TYPES)}, "
                     f"got {input_type!r}.")
  if input_type == "image_tensor":
    return tf.TensorSpec([batch_size, None, None, 3], tf.uint8, INPUT_KEY)
  return tf.TensorSpec([batch_size], tf.string, INPUT_KEY)


def decode_image(encoded):
  """uint8 [h, w, 3] from JPEG / PNG / GIF (first frame) / BMP bytes."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def image_from_example(serialized):
  """uint8 [h, w, 3] from a serialized tf.Example's image/encoded."""
  features = tf.io.parse_single_example(
      serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
  return decode_image(features["image/encoded"])


def serving_function(task, model, input_type, batch_size=None):
  """The serving signature's function: images -> the task's outputs.

  Args:
    task: an official.core.task.Task implementing serving_preprocess and
      serving_outputs.
    model: the task's model, weights restored.
    input_type: one of INPUT_TYPES.
    batch_size: fixed batch size of the signature, or None for any.
  Returns:
    A tf.function with its input signature set (see the module docstring).
  """
  spec = input_signature(input_type, batch_size)
  size = tuple(model.input_shape[1:3])

  def preprocess_one(element):
    if input_type == "image_tensor":
      image = element
    elif input_type == "image_bytes":
      image = decode_image(element)
    else:
      image = image_from_example(element)
    return task.serving_preprocess(image)

  @tf.function(input_signature=[spec])
  def serve(images):
    model_inputs, image_info = tf.map_fn(
        preprocess_one, images,
        fn_output_signature=(tf.TensorSpec([*size, 3], tf.float32),
                             tf.TensorSpec([4, 2], tf.float32)))
    return task.serving_outputs(model, model_inputs, image_info)

  return serve


def tflite_function(task, model):
  """A tf.function float32 [1, S, S, 3] pixels -> the task's outputs."""
  size = tuple(model.input_shape[1:3])
  mean = tf.constant(IMAGENET_MEAN_RGB, tf.float32)
  std = tf.constant(IMAGENET_STDDEV_RGB, tf.float32)

  @tf.function(input_signature=[tf.TensorSpec([1, *size, 3], tf.float32,
                                              INPUT_KEY)])
  def serve(images):
    return task.serving_outputs(model, (images - mean) / std,
                                image_info=None, for_tflite=True)

  return serve


def tflite_input(task, image):
  """Turns uint8 [h, w, 3] into the TFLite input float32 [1, S, S, 3].

  The task's preprocessing with the normalisation undone, so padding has
  the TFLITE_PAD_RGB colour; also returns the image_info of the transform.
  """
  model_input, image_info = task.serving_preprocess(image)
  pixels = (model_input * tf.constant(IMAGENET_STDDEV_RGB, tf.float32) +
            tf.constant(IMAGENET_MEAN_RGB, tf.float32))
  return pixels[None], image_info


@contextlib.contextmanager
def _combined_nms(task):
  """Detectors post-process with the "combined" NMS while this is open.

  modeling/ops/postprocess.py: "combined" is tf.image.combined_non_max_suppression,
  which tf2onnx maps to ONNX NonMaxSuppression over the whole batch and all
  classes; "batched" (chosen for XLA / TPU) is a while-loop NMS that would
  reach ONNX as a Loop, and "tflite" needs a static batch. The three give the
  same detections (tests/modeling/test_ops.py), so only the graph differs.
  """
  args = getattr(task, "postprocess_args", None)
  if not isinstance(args, dict) or "nms_method" not in args:
    yield
    return
  task.postprocess_args = dict(args, nms_method="combined")
  try:
    yield
  finally:
    task.postprocess_args = args


def onnx_function(task, model, batch_size=None):
  """A tf.function float32 [batch, S, S, 3] pixels -> the task's outputs.

  The input is the TFLite one (`tflite_input`), but the batch size is
  dynamic unless batch_size fixes it. The function comes back traced, with
  the combined NMS (`_combined_nms`); with its input signature fixed, later
  get_concrete_function calls (tf2onnx's) reuse that trace. Its constants
  are made inside it: tf2onnx turns tensors captured from outside into
  extra graph inputs.
  """
  size = tuple(model.input_shape[1:3])

  @tf.function(input_signature=[tf.TensorSpec([batch_size, *size, 3],
                                              tf.float32, INPUT_KEY)])
  def serve(images):
    mean = tf.constant(IMAGENET_MEAN_RGB, tf.float32)
    std = tf.constant(IMAGENET_STDDEV_RGB, tf.float32)
    return task.serving_outputs(model, (images - mean) / std,
                                image_info=None)

  with _combined_nms(task):
    serve.get_concrete_function()
  return serve
