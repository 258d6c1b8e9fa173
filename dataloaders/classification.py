"""Image classification input pipeline: decoder, parser and dataset builder.

TFRecord shards (or a TFDS dataset) -> `decode_classification_example` ->
`ClassificationParser` (augment, crop, resize, normalise) -> per-replica
batches. Records are tf.Examples with

  image/encoded      bytes, JPEG or PNG (grayscale, RGB, RGBA or CMYK)
  image/class/label  int64, 0-based class index

as written by `dataloaders.datasets.image_folder_records`.
"""

import tensorflow as tf

from dataloaders import batching
from dataloaders import readers

AUTOTUNE = tf.data.AUTOTUNE

IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def decode_classification_example(serialized):
  """Decodes one serialized classification tf.Example.

  Args:
    serialized: scalar tf.string, a serialized tf.Example with
      "image/encoded" (JPEG or PNG bytes) and "image/class/label" (int64).

  Returns:
    dict with "image": uint8 [height, width, 3] (grayscale is replicated and
    alpha dropped, so always 3 channels) and "label": int32 scalar.
  """
  features = tf.io.parse_single_example(serialized, _FEATURES)
  image = tf.io.decode_image(features["image/encoded"], channels=3,
                             expand_animations=False)
  return {"image": image,
          "label": tf.cast(features["image/class/label"], tf.int32)}


def _split_seed(seed):
  """Two independent stateless seeds ([2] int64 each) from one."""
  seeds = tf.random.experimental.stateless_split(seed, num=2)
  return seeds[0], seeds[1]


class ClassificationParser:
  """Turns a decoded example into a fixed-size, normalised training pair.

  Train: Inception-style random resized crop (a random box covering
  `aug_min_area`..100% of the image with aspect ratio in `aug_aspect_range`;
  when no such box is found, a centre crop), random horizontal flip, bilinear
  resize to `output_size`. Eval: centre crop of `center_crop_fraction` of the
  short side, bilinear resize. Then (image - mean) / std per channel.

  Random ops are stateless: `__call__` takes an optional seed per example
  (what `classification_dataset` passes), so a seeded pipeline gives the
  same augmentations on every run.
  """

  def __init__(self, output_size, num_classes, training, aug_min_area=0.08,
               aug_aspect_range=(3 / 4, 4 / 3), center_crop_fraction=0.875,
               mean=IMAGENET_MEAN_RGB, std=IMAGENET_STDDEV_RGB,
               random_flip=True):
    """Initialises the parser.

    Args:
      output_size: int, side of the square output image in pixels.
      num_classes: int, labels must lie in [0, num_classes).
      training: bool, augment (True) or centre crop (False).
      aug_min_area: float in (0, 1], smallest crop area as a fraction of the
        image area (training).
      aug_aspect_range: (min, max) crop aspect ratios, width / height.
      center_crop_fraction: float in (0, 1], side of the centre crop as a
        fraction of the image's short side (eval, and the training fallback).
      mean: 3 floats, per-channel RGB mean on the 0..255 scale.
      std: 3 floats, per-channel RGB standard deviation on the 0..255 scale.
      random_flip: bool, random horizontal flips in training (off for data
        whose classes are not mirror-symmetric, such as digits).

    Raises:
      ValueError: when an argument is out of range.
    """
    if int(output_size) <= 0:
      raise ValueError(f"output_size must be a positive int, got "
                       f"{output_size!r}.")
    if int(num_classes) <= 0:
      raise ValueError(f"num_classes must be a positive int, got "
                       f"{num_classes!r}.")
    if not 0.0 < aug_min_area <= 1.0:
      raise ValueError(f"aug_min_area must be in (0, 1], got {aug_min_area}.")
    if (len(aug_aspect_range) != 2 or
        not 0.0 < aug_aspect_range[0] <= aug_aspect_range[1]):
      raise ValueError("aug_aspect_range must be (min, max) with 0 < min <= "
                       f"max, got {aug_aspect_range!r}.")
    if not 0.0 < center_crop_fraction <= 1.0:
      raise ValueError("center_crop_fraction must be in (0, 1], got "
                       f"{center_crop_fraction}.")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
      raise ValueError(f"mean and std must be 3 numbers (std > 0), got "
                       f"mean={mean!r}, std={std!r}.")
    self.output_size = int(output_size)
    self.num_classes = int(num_classes)
    self.training = bool(training)
    self.aug_min_area = float(aug_min_area)
    self.aug_aspect_range = tuple(float(a) for a in aug_aspect_range)
    self.center_crop_fraction = float(center_crop_fraction)
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)
    self.random_flip = bool(random_flip)

  def _center_crop(self, image):
    """Centre square crop of `center_crop_fraction` of the short side."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(
        tf.cast(tf.minimum(height, width), tf.float32) *
        self.center_crop_fraction, tf.int32)
    side = tf.maximum(side, 1)
    top = (height - side) // 2
    left = (width - side) // 2
    return tf.image.crop_to_bounding_box(image, top, left, side, side)

  def _random_crop(self, image, seed):
    """Inception-style random crop; a centre crop when sampling fails."""
    shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=self.aug_aspect_range,
        area_range=(self.aug_min_area, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    # The op returns the whole image when no box passes in max_attempts.
    failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.cond(
        failed,
        lambda: self._center_crop(image),
        lambda: tf.slice(image, begin, size))

  def __call__(self, decoded, seed=None):
    """Parses one example.

    Args:
      decoded: dict with "image": uint8 [height, width, 3] and "label":
        integer scalar (a decoder's or `readers.tfds_dataset`'s output).
      seed: optional [2] int32/int64 tensor, stateless seed of this example's
        augmentation (training); random when None.

    Returns:
      (image, label): image float32 [output_size, output_size, 3], RGB,
      (pixel - mean) / std; label int32 scalar.

    Raises:
      tf.errors.InvalidArgumentError (when run): a label outside
        [0, num_classes); the message gives the label and num_classes.
    """
    label = tf.cast(decoded["label"], tf.int32)
    in_range = tf.logical_and(label >= 0, label < self.num_classes)
    check = tf.debugging.Assert(
        in_range,
        ["Label out of range: label =", label, "but num_classes =",
         self.num_classes, "(labels must lie in [0, num_classes); check the "
         "dataset's labels and NUM_CLASSES)"])
    with tf.control_dependencies([check]):
      label = tf.identity(label)

    image = decoded["image"]
    image.shape.with_rank(3)
    if self.training:
      if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
      crop_seed, flip_seed = _split_seed(seed)
      image = self._random_crop(image, crop_seed)
      if self.random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    else:
      image = self._center_crop(image)
    image = tf.image.resize(image, [self.output_size, self.output_size],
                            method="bilinear")
    image = (image - tf.constant(self.mean, tf.float32)) / tf.constant(
        self.std, tf.float32)
    image = tf.ensure_shape(image, [self.output_size, self.output_size, 3])
    return image, label


def _pad_eval_batch(images, labels, batch_size):
  """Pads a possibly short eval batch to `batch_size`, marking the padding.

  Args:
    images: float32 [n, size, size, 3], n <= batch_size.
    labels: int32 [n].
    batch_size: int, the static batch size.

  Returns:
    (images float32 [batch_size, size, size, 3] (zeros as padding),
     {"label": int32 [batch_size] (0 as padding),
      "valid": bool [batch_size] (False on padding)}).
  """
  num = tf.shape(labels)[0]
  pad = batch_size - num
  images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
  labels = tf.pad(labels, [[0, pad]])
  valid = tf.range(batch_size) < num
  images = tf.ensure_shape(images, [batch_size] + images.shape[1:].as_list())
  labels = tf.ensure_shape(labels, [batch_size])
  valid = tf.ensure_shape(valid, [batch_size])
  return images, {"label": labels, "valid": valid}


def classification_dataset(file_pattern, training, global_batch_size,
                           output_size, num_classes, input_context=None,
                           seed=None, tfds_name=None, tfds_split=None,
                           tfds_data_dir=None, num_eval_examples=None,
                           parser_kwargs=None):
  """Batched classification examples for one input pipeline.

  Reads TFRecords matching `file_pattern`, or, when `tfds_name` is given, a
  TFDS dataset prepared in `tfds_data_dir` (then `file_pattern` is ignored).

  Args:
    file_pattern: str, comma-separated TFRecord glob patterns.
    training: bool. True: augment, shuffle, repeat forever, drop the last
      partial batch. False: one pass, the last batch padded.
    global_batch_size: int, batch size over all replicas.
    output_size: int, image side in pixels.
    num_classes: int, labels must lie in [0, num_classes).
    input_context: optional tf.distribute.InputContext; batches are then
      per replica (`get_per_replica_batch_size`) and the data is sharded.
    seed: optional int; when given, shuffles, augmentations and ordering are
      deterministic (same batches on every run on the same machine).
    tfds_name: optional str, TFDS dataset name (see `readers.tfds_dataset`).
    tfds_split: str, TFDS split; required with `tfds_name`.
    tfds_data_dir: str, folder of the prepared TFDS dataset.
    num_eval_examples: optional int (evaluation only): evaluate only the
      first `num_eval_examples` examples read by this input pipeline (e.g. a
      quick evaluation on a subset); None evaluates them all.
    parser_kwargs: optional dict of further `ClassificationParser` arguments
      (aug_min_area, aug_aspect_range, center_crop_fraction, mean, std).

  Returns:
    A tf.data.Dataset of (images, labels) with static shapes, b the batch
    size of this replica:
      training: images float32 [b, output_size, output_size, 3],
        labels {"label": int32 [b]}.
      eval: the same images, labels {"label": int32 [b], "valid": bool [b]};
        padding examples are zero images with label 0 and valid False. When
        a pipeline feeds several replicas, the number of batches is padded
        to a multiple of them, so every replica gets a batch at every step.

  Raises:
    FileNotFoundError: when `file_pattern` matches nothing.
    ValueError: when the batch size or the TFDS arguments are inconsistent.
  """
  batch_size, replicas_per_pipeline = batching.per_replica_batch(
      global_batch_size, input_context)

  if tfds_name:
    if not tfds_split or not tfds_data_dir:
      raise ValueError(
          f"tfds_name='{tfds_name}' needs tfds_split and tfds_data_dir, got "
          f"tfds_split={tfds_split!r}, tfds_data_dir={tfds_data_dir!r}.")
    dataset = readers.tfds_dataset(
        tfds_name, tfds_split, tfds_data_dir, training,
        input_context=input_context, seed=seed)
  else:
    dataset = readers.tfrecord_dataset(
        file_pattern, training, input_context=input_context, seed=seed)
    dataset = dataset.map(decode_classification_example,
                          num_parallel_calls=AUTOTUNE)
  if not training and num_eval_examples is not None:
    dataset = dataset.take(int(num_eval_examples))

  parser = ClassificationParser(output_size, num_classes, training,
                                **(parser_kwargs or {}))
  if training:
    dataset = batching.map_with_example_seeds(dataset, parser, seed)
    dataset = dataset.batch(batch_size, drop_remainder=True,
                            num_parallel_calls=AUTOTUNE)
    dataset = dataset.map(lambda images, labels: (images, {"label": labels}))
  else:
    dataset = dataset.map(parser, num_parallel_calls=AUTOTUNE)
    dataset = batching.batch_and_pad_eval(
        dataset, batch_size, replicas_per_pipeline, _pad_eval_batch)

  return batching.finish(dataset, training, seed, input_context)
