"""Semantic segmentation input pipeline: decoder, parser and dataset builder.

TFRecord shards -> `decode_segmentation_example` -> `SegmentationParser`
(augment, resize, crop, pad; image and label map transformed together) ->
per-replica batches, following the input rules of `official.core.task`
(static shapes; training repeats forever; evaluation makes one pass and pads
its last batch with labels["valid"] = False).

Records are tf.Examples with the keys of the TF Model Garden's segmentation
records, as written by `dataloaders.datasets.pascal_records`:

  image/encoded                      bytes, JPEG or PNG
  image/segmentation/class/encoded   bytes, single-channel PNG of class ids
                                     (0..num_classes-1; ignore_label, 255 in
                                     PASCAL VOC, for unlabelled pixels)
  image/source_id                    bytes (optional), named in errors

Geometry, S = output_size, (h, w) the decoded image (the RetinaNet parser's,
so a detection checkpoint sees features at the scales it was trained on):

  training    optional horizontal flip; a random scale s in [aug_scale_min,
              aug_scale_max]; the image is resized so that it fits in an
              (S * s) x (S * s) square (long side = round(S * s)); a random
              S x S window is cut where it is larger than S, and the rest is
              padded at the bottom and right up to S x S.
  evaluation  the same with s = 1 and no flip: the long side becomes S, the
              image sits in the top-left corner, nothing is cropped.

The label map follows the pixels exactly: the same flip, the same resize
(nearest neighbour instead of bilinear: class ids are not averaged; both
with half-pixel centres, so label pixel (i, j) covers image pixel (i, j)),
the same window, and padding with `ignore_label`, so padded pixels count in
neither the loss nor the evaluation. Evaluation is therefore on the label
map resized to the model input (for PASCAL VOC at S = 512, whose images
have a long side of at most 500 pixels, a nearest-neighbour upscale of at
least 1.024).

Pixels are normalised, (pixel - mean) / std, *before* padding, and padded
with 0 (the mean colour). `image_info` (float32 [4, 2]) records the
transform as in `dataloaders.retinanet_input`: [[original height, width],
[scaled height, width], [scale y, x], [offset y, x]].
"""

import tensorflow as tf

from dataloaders import batching
from dataloaders import detection_decoder
from dataloaders import readers
from dataloaders import resize_crop
from dataloaders.classification import IMAGENET_MEAN_RGB
from dataloaders.classification import IMAGENET_STDDEV_RGB

AUTOTUNE = tf.data.AUTOTUNE

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/segmentation/class/encoded"

_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def decode_segmentation_example(serialized):
  """Decodes one serialized segmentation tf.Example.

  Args:
    serialized: scalar tf.string (keys in the module docstring).

  Returns:
    dict with "image": uint8 [h, w, 3] (grayscale replicated, alpha
    dropped), "label": uint8 [h', w', 1] class ids as stored (the parser
    checks that h', w' = h, w), "source_id": tf.string scalar.

  Raises:
    tf.errors.InvalidArgumentError (when run): image/encoded is not an
      image file (the message gives the source id).
  """
  features = tf.io.parse_single_example(serialized, _FEATURES)
  with tf.control_dependencies([detection_decoder.image_bytes_check(
      features[IMAGE_KEY], features["image/source_id"],
      "Segmentation record")]):
    image = tf.io.decode_image(features[IMAGE_KEY], channels=3,
                               expand_animations=False)
  label = tf.io.decode_png(features[LABEL_KEY], channels=1)
  return {"image": image, "label": label,
          "source_id": features["image/source_id"]}


class SegmentationParser:
  """Turns a decoded example into (image, label map) of fixed size.

  See the module docstring for the geometry. Random ops are stateless:
  `__call__` and `transform` take an optional seed per example (what
  `segmentation_dataset` passes), so a seeded pipeline gives the same
  augmentations on every run.
  """

  def __init__(self, output_size, num_classes, training, aug_scale_min=1.0,
               aug_scale_max=1.0, random_flip=True, ignore_label=255,
               mean=IMAGENET_MEAN_RGB, std=IMAGENET_STDDEV_RGB):
    """Initialises the parser.

    Args:
      output_size: int S, side of the square model input in pixels.
      num_classes: int >= 2, class ids must lie in [0, num_classes) (or be
        ignore_label).
      training: bool, augment (True) or deterministic resize (False).
      aug_scale_min, aug_scale_max: floats, 0 < min <= max, range of the
        random scale s (training).
      random_flip: bool, random horizontal flips in training.
      ignore_label: int in [0, 255], id of unlabelled pixels (PASCAL: 255)
        and of padding; outside [0, num_classes).
      mean, std: 3 floats each, per-channel RGB mean and standard deviation
        on the 0..255 scale (default ImageNet's).

    Raises:
      ValueError: when an argument is out of range (named in the message).
    """
    output_size = int(output_size)
    if output_size <= 0:
      raise ValueError(f"SegmentationParser: output_size={output_size} must "
                       "be positive.")
    if int(num_classes) < 2:
      raise ValueError(f"SegmentationParser: num_classes={num_classes} must "
                       "be >= 2.")
    if not 0 <= int(ignore_label) <= 255 or (
        int(ignore_label) < int(num_classes)):
      raise ValueError(
          f"SegmentationParser: ignore_label={ignore_label} must lie in "
          f"[num_classes, 255] = [{num_classes}, 255] (labels are stored as "
          "8-bit PNG and the ignored id must not be a class).")
    if not 0.0 < aug_scale_min <= aug_scale_max:
      raise ValueError(
          "SegmentationParser: need 0 < aug_scale_min <= aug_scale_max, got "
          f"aug_scale_min={aug_scale_min}, aug_scale_max={aug_scale_max}.")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
      raise ValueError(f"SegmentationParser: mean and std must be 3 numbers "
                       f"(std > 0), got mean={mean!r}, std={std!r}.")
    self.output_size = output_size
    self.num_classes = int(num_classes)
    self.training = bool(training)
    self.aug_scale_min = float(aug_scale_min)
    self.aug_scale_max = float(aug_scale_max)
    self.random_flip = bool(random_flip)
    self.ignore_label = int(ignore_label)
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def _checked_label(self, image, label, source_id):
    """int32 [h, w, 1] label, asserted to fit the image and the classes."""
    label = tf.cast(label, tf.int32)
    image_size = tf.shape(image)[:2]
    label_size = tf.shape(label)[:2]
    same_size = tf.debugging.Assert(
        tf.reduce_all(tf.equal(image_size, label_size)),
        ["SegmentationParser: record with source_id", source_id, "has an "
         "image of height, width", image_size, "but a label map of",
         label_size, "; expected the same size."])
    bad = tf.logical_and(label >= self.num_classes,
                         label != self.ignore_label)
    first_bad = tf.concat([tf.boolean_mask(label, bad), [0]], 0)[0]
    in_range = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        ["SegmentationParser: record with source_id", source_id, "has class "
         "id", first_bad, "outside [0, num_classes) with num_classes =",
         self.num_classes, "and ignore_label =", self.ignore_label,
         "(check the records and NUM_CLASSES)."])
    with tf.control_dependencies([same_size, in_range]):
      return tf.identity(label)

  def _scale_and_offset(self, height, width, scale_seed, crop_seed):
    """(scaled_size, image_scale, offset); see dataloaders/resize_crop.py."""
    return resize_crop.scale_and_offset(
        height, width, self.output_size, self.training, self.aug_scale_min,
        self.aug_scale_max, scale_seed, crop_seed)

  def transform(self, decoded, seed=None):
    """Augments, resizes, crops and pads the image and its label map.

    Args:
      decoded: dict of `decode_segmentation_example`: "image" uint8
        [h, w, 3], "label" integer [h, w, 1] (or [h, w]), optionally
        "source_id".
      seed: optional [2] int32/int64 tensor, stateless seed of this
        example's augmentation (training); random when None.

    Returns:
      dict, S = output_size:
        "image": float32 [S, S, 3], (pixel - mean) / std, 0 as padding.
        "label": int32 [S, S], class ids, ignore_label as padding.
        "image_info": float32 [4, 2] (module docstring).

    Raises:
      tf.errors.InvalidArgumentError (when run): a label map of another
        size than its image, or a class id outside [0, num_classes) other
        than ignore_label; the message gives the source_id.
    """
    image = decoded["image"]
    image.shape.with_rank(3)
    source_id = decoded.get("source_id", tf.constant(""))
    label = decoded["label"]
    if label.shape.rank == 2:
      label = label[..., None]
    label = self._checked_label(image, label, source_id)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]

    if self.training:
      if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
      flip_seed, scale_seed, crop_seed = tf.unstack(
          tf.random.experimental.stateless_split(seed, num=3))
      if self.random_flip:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image, label = tf.cond(
            flip, lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
            lambda: (image, label))
    else:
      scale_seed = crop_seed = None

    scaled_size, image_scale, offset = self._scale_and_offset(
        height, width, scale_seed, crop_seed)
    size = self.output_size
    image = tf.image.resize(image, scaled_size, method="bilinear")
    label = tf.image.resize(label, scaled_size, method="nearest")
    image = image[offset[0]:offset[0] + size, offset[1]:offset[1] + size]
    label = label[offset[0]:offset[0] + size, offset[1]:offset[1] + size]
    image = (image - tf.constant(self.mean, tf.float32)) / tf.constant(
        self.std, tf.float32)
    image = tf.image.pad_to_bounding_box(image, 0, 0, size, size)
    # pad_to_bounding_box pads with 0: shift so that padding is ignore_label.
    label = tf.image.pad_to_bounding_box(label - self.ignore_label, 0, 0,
                                         size, size) + self.ignore_label
    image_info = tf.stack([
        tf.cast(tf.stack([height, width]), tf.float32),
        tf.cast(scaled_size, tf.float32), image_scale,
        tf.cast(offset, tf.float32)])
    return {
        "image": tf.ensure_shape(image, [size, size, 3]),
        "label": tf.ensure_shape(label[..., 0], [size, size]),
        "image_info": image_info,
    }

  def __call__(self, decoded, seed=None):
    """Parses one example: (image float32 [S, S, 3], labels dict).

    labels: "label" int32 [S, S] (class ids, ignore_label where unlabelled
    or padding) and "image_info" float32 [4, 2]; see `transform`.
    """
    out = self.transform(decoded, seed)
    return out["image"], {"label": out["label"],
                          "image_info": out["image_info"]}


def _pad_eval_batch(images, labels, batch_size, ignore_label):
  """Pads a short evaluation batch to `batch_size` and adds labels["valid"].

  Padding examples have zero images, label maps of ignore_label only, and
  image_info with scale 1.
  """
  num = tf.shape(images)[0]

  def pad(value, fill=0):
    paddings = [[0, batch_size - num]] + [[0, 0]] * (value.shape.rank - 1)
    value = tf.pad(value, paddings, constant_values=fill)
    return tf.ensure_shape(value, [batch_size] + value.shape[1:].as_list())

  padding_info = tf.constant([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  image_info = tf.concat(
      [labels["image_info"],
       tf.tile(padding_info[None], [batch_size - num, 1, 1])], axis=0)
  padded = {
      "label": pad(labels["label"], ignore_label),
      "image_info": tf.ensure_shape(image_info, [batch_size, 4, 2]),
      "valid": tf.ensure_shape(tf.range(batch_size) < num, [batch_size]),
  }
  return pad(images), padded


def segmentation_dataset(file_pattern, training, global_batch_size, parser,
                         input_context=None, seed=None,
                         num_eval_examples=None):
  """Batched segmentation examples for one input pipeline.

  Args:
    file_pattern: str, comma-separated TFRecord glob patterns of
      segmentation records (module docstring).
    training: bool. True: shuffle, augment, repeat forever, drop the last
      partial batch. False: one pass in record order, the last batch padded.
    global_batch_size: int, batch size over all replicas.
    parser: a `SegmentationParser` whose `training` equals `training`, or a
      dict of its constructor arguments (without `training`).
    input_context: optional tf.distribute.InputContext; batches are then
      per replica and the data is sharded.
    seed: optional int; when given, shuffles, augmentations and ordering are
      deterministic.
    num_eval_examples: optional int (evaluation only): evaluate only the
      first `num_eval_examples` examples read by this input pipeline.

  Returns:
    A tf.data.Dataset of (images float32 [b, S, S, 3], labels) with static
    shapes, b the per-replica batch size; labels as
    `SegmentationParser.__call__` with a leading [b], and in evaluation also
    "valid": bool [b] (False on padding examples, whose label maps are all
    ignore_label).

  Raises:
    FileNotFoundError: when `file_pattern` matches nothing.
    ValueError: when the batch size is not positive or the parser's mode
      disagrees with `training`.
  """
  if isinstance(parser, dict):
    parser = SegmentationParser(training=training, **parser)
  if parser.training != bool(training):
    raise ValueError(
        f"segmentation_dataset(training={training}) was given a "
        f"SegmentationParser built with training={parser.training}; expected "
        "the same mode.")
  batch_size, replicas_per_pipeline = batching.per_replica_batch(
      global_batch_size, input_context)

  dataset = readers.tfrecord_dataset(
      file_pattern, training, input_context=input_context, seed=seed)
  if training:
    dataset = batching.map_with_example_seeds(
        dataset, lambda serialized, example_seed: parser(
            decode_segmentation_example(serialized), example_seed), seed)
    dataset = dataset.batch(batch_size, drop_remainder=True,
                            num_parallel_calls=AUTOTUNE)
  else:
    if num_eval_examples is not None:
      dataset = dataset.take(int(num_eval_examples))
    dataset = dataset.map(
        lambda serialized: parser(decode_segmentation_example(serialized)),
        num_parallel_calls=AUTOTUNE)
    dataset = batching.batch_and_pad_eval(
        dataset, batch_size, replicas_per_pipeline,
        lambda images, labels, size: _pad_eval_batch(
            images, labels, size, parser.ignore_label))

  return batching.finish(dataset, training, seed, input_context)
