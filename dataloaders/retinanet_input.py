"""RetinaNet input pipeline: parser (augment, resize, pad, anchor targets).

TFRecord shards -> `detection_decoder.decode_detection_example` ->
`RetinaNetParser` -> per-replica batches, following the input rules of
`official.core.task` (static shapes; training repeats forever; evaluation
makes one pass and pads its last batch with labels["valid"] = False).

Geometry (SpineNet Sec. 5.1; the resize-and-crop semantics of the Model
Garden's RetinaNet input, docs/model_garden_conventions.md). S = output_size,
(h, w) the decoded image:

  training    optional horizontal flip (boxes flipped with the pixels); a
              random scale s in [aug_scale_min, aug_scale_max]; the image is
              resized so that it fits in an (S * s) x (S * s) square (long
              side = round(S * s)), a random S x S window is cut from it where
              it is larger than S, and the rest is padded at the bottom and
              right up to S x S.
  evaluation  the same with s = 1 and no flip: the long side becomes S, the
              image sits in the top-left corner, nothing is cropped.

Boxes go through exactly the same arithmetic as the pixels: coordinate
(y, x) of the original image lands at (y * scale_y - offset_y,
x * scale_x - offset_x) of the model input, where scale = scaled size /
original size per axis (bilinear `tf.image.resize` with half-pixel centres
maps continuous coordinates this way exactly). They are then clipped to the
S x S output, and boxes left with zero area are dropped.

Pixels are normalised, (pixel - mean) / std, *before* padding, and padded
with 0: padding is the mean colour, as in the Model Garden, so the model
sees "nothing" rather than black outside the image.

`image_info` (float32 [4, 2], the Model Garden layout) records the
transform, so detections in input pixels map back to the original image by
(box + offset) / scale (in evaluation the offset is 0):

  [[original height, original width],
   [scaled height,   scaled width],     (the resized image before the crop)
   [scale y,         scale x],          (scaled size / original size)
   [offset y,        offset x]]         (top-left corner of the crop)
"""

import tensorflow as tf

from dataloaders import batching
from dataloaders import readers
from dataloaders import resize_crop
from dataloaders.classification import IMAGENET_MEAN_RGB
from dataloaders.classification import IMAGENET_STDDEV_RGB
from dataloaders.detection_decoder import decode_detection_example
# The pipeline's int64 image id of a source id; the COCO evaluator maps its
# annotation file's ids with the same function (dataloaders/source_ids.py).
from dataloaders.source_ids import source_id_to_int64
from modeling.ops import box_ops
from modeling.ops.anchors import Anchors
from modeling.ops.target_assigner import AnchorLabeler

AUTOTUNE = tf.data.AUTOTUNE


def _pad_or_truncate(values, size):
  """First `size` rows of `values` [K, ...], zero-padded to [size, ...]."""
  values = values[:size]
  pad = size - tf.shape(values)[0]
  paddings = [[0, pad]] + [[0, 0]] * (values.shape.rank - 1)
  values = tf.pad(values, paddings)
  return tf.ensure_shape(values, [size] + values.shape[1:].as_list())


def _flip_boxes_left_right(boxes):
  """Mirrors normalised (ymin, xmin, ymax, xmax) boxes [K, 4]: x -> 1 - x."""
  ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
  return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


class RetinaNetParser:
  """Turns a decoded detection example into (image, anchor targets).

  See the module docstring for the geometry. Random ops are stateless:
  `__call__` and `transform` take an optional seed per example (what
  `retinanet_dataset` passes), so a seeded pipeline gives the same
  augmentations on every run.

  Classes are the record's class ids as they are (COCO: category ids 1..90,
  num_classes = 91 with background 0); an id outside [1, num_classes) is an
  error naming the record's source id.

  Attributes:
    anchors: modeling.ops.anchors.Anchors of the S x S model input.
    labeler: modeling.ops.target_assigner.AnchorLabeler.
  """

  def __init__(self, output_size, min_level, max_level, num_scales,
               aspect_ratios, anchor_size, num_classes, training,
               aug_scale_min=1.0, aug_scale_max=1.0, random_flip=True,
               max_num_instances=100, match_threshold=0.5,
               unmatched_threshold=0.5, skip_crowd_during_training=True,
               mean=IMAGENET_MEAN_RGB, std=IMAGENET_STDDEV_RGB):
    """Initialises the parser.

    Args:
      output_size: int S, side of the square model input in pixels; a
        multiple of 2^max_level.
      min_level, max_level: int, anchor levels (as the model's).
      num_scales: int, anchor scales per octave.
      aspect_ratios: sequence of float, anchor width / height ratios.
      anchor_size: float, anchor base side in units of the level's stride.
      num_classes: int, classes including background 0; class ids must lie
        in [1, num_classes).
      training: bool, augment and skip crowd boxes (True) or deterministic
        resize plus evaluation ground truths (False).
      aug_scale_min, aug_scale_max: floats, 0 < min <= max, range of the
        random scale s (training); (1.0, 1.0) disables scale jitter and
        cropping.
      random_flip: bool, random horizontal flips in training.
      max_num_instances: int, boxes kept per image (the first ones of the
        record, after dropping crowd and empty boxes); the ground-truth
        tensors are padded or truncated to it.
      match_threshold, unmatched_threshold: IoU thresholds of the
        AnchorLabeler.
      skip_crowd_during_training: bool, leave crowd boxes out of the anchor
        targets (in evaluation too, so that the evaluation loss measures the
        training objective); the evaluation ground truths keep them.
      mean, std: 3 floats each, per-channel RGB mean and standard deviation
        on the 0..255 scale (default ImageNet's).

    Raises:
      ValueError: when an argument is out of range, e.g. an output_size that
        is not a multiple of 2^max_level.
    """
    name = type(self).__name__
    output_size = int(output_size)
    stride = 2 ** int(max_level)
    if output_size <= 0 or output_size % stride:
      raise ValueError(
          f"{name}: output_size={output_size} must be a positive "
          f"multiple of 2^max_level = {stride} (max_level={max_level}), so "
          "that every feature level has a whole number of cells; e.g. "
          f"{max(stride, (output_size + stride - 1) // stride * stride)}.")
    if int(num_classes) < 2:
      raise ValueError(f"{name}: num_classes={num_classes} must be "
                       ">= 2 (background 0 plus at least one class).")
    if not 0.0 < aug_scale_min <= aug_scale_max:
      raise ValueError(
          f"{name}: need 0 < aug_scale_min <= aug_scale_max, got "
          f"aug_scale_min={aug_scale_min}, aug_scale_max={aug_scale_max}.")
    if int(max_num_instances) < 1:
      raise ValueError(f"{name}: max_num_instances="
                       f"{max_num_instances} must be >= 1.")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
      raise ValueError(f"{name}: mean and std must be 3 numbers "
                       f"(std > 0), got mean={mean!r}, std={std!r}.")
    self.output_size = output_size
    self.min_level = int(min_level)
    self.max_level = int(max_level)
    self.num_classes = int(num_classes)
    self.training = bool(training)
    self.aug_scale_min = float(aug_scale_min)
    self.aug_scale_max = float(aug_scale_max)
    self.random_flip = bool(random_flip)
    self.max_num_instances = int(max_num_instances)
    self.skip_crowd_during_training = bool(skip_crowd_during_training)
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)
    self.anchors = Anchors(min_level, max_level, num_scales, aspect_ratios,
                           anchor_size, (output_size, output_size))
    self.labeler = AnchorLabeler(match_threshold, unmatched_threshold)

  def _check_classes(self, classes, source_id):
    """Asserts every class id lies in [1, num_classes); returns classes."""
    bad = tf.logical_or(classes < 1, classes >= self.num_classes)
    first_bad = tf.concat([tf.boolean_mask(classes, bad), [0]], 0)[0]
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [f"{type(self).__name__}: record with source_id", source_id,
         "has class id", first_bad,
         "outside [1, num_classes) with num_classes =",
         self.num_classes, "(class ids are used as they are: COCO category "
         "ids 1..90 need num_classes = 91; check the records and "
         "NUM_CLASSES)."])
    with tf.control_dependencies([check]):
      return tf.identity(classes)

  def _scale_and_offset(self, height, width, scale_seed, crop_seed):
    """(scaled_size, image_scale, offset); see dataloaders/resize_crop.py."""
    return resize_crop.scale_and_offset(
        height, width, self.output_size, self.training, self.aug_scale_min,
        self.aug_scale_max, scale_seed, crop_seed)

  def transform(self, decoded, seed=None):
    """Augments, resizes and pads the image and transforms its boxes.

    `__call__` computes the anchor targets from exactly these boxes; this is
    also the place to look at (or test) what the model is trained on. The
    boxes are those of the targets: crowd boxes are left out when
    skip_crowd_during_training (in both modes), and so are boxes with no
    area left inside the S x S output; the first max_num_instances of the
    rest are kept, in record order.

    Args:
      decoded: dict of `decode_detection_example`: "image" uint8
        [h, w, 3], "source_id", "groundtruth_boxes" float32 [K, 4]
        normalised (ymin, xmin, ymax, xmax), "groundtruth_classes" int
        [K], optionally "groundtruth_is_crowd" bool [K] and
        "groundtruth_area" float32 [K] (pixels). K may be 0.
      seed: optional [2] int32/int64 tensor, stateless seed of this
        example's augmentation (training); random when None.

    Returns:
      dict, M = max_num_instances, S = output_size:
        "image": float32 [S, S, 3], (pixel - mean) / std, 0 as padding.
        "boxes": float32 [M, 4], (ymin, xmin, ymax, xmax) in pixels of the
          model input, inside [0, S]; zeros as padding.
        "classes": int32 [M], class ids, 0 as padding.
        "is_crowd": bool [M].
        "areas": float32 [M], the record's areas (original-image pixels).
        "num_boxes": int32 scalar, real rows of the above.
        "image_info": float32 [4, 2] (module docstring).

    Raises:
      tf.errors.InvalidArgumentError (when run): a class id outside
        [1, num_classes); the message gives the source_id, the class id and
        num_classes.
    """
    out = self._transform(decoded, seed)
    del out["instance_rows"], out["flipped"]
    return out

  def _transform(self, decoded, seed):
    """`transform`, plus what instance masks need to follow their boxes.

    Returns:
      the dict of `transform` and
        "instance_rows": int32 [M], the record row (index into the decoded
          ground truths) of each kept box, 0 as padding.
        "flipped": bool scalar, whether the image was flipped.
    """
    image = decoded["image"]
    image.shape.with_rank(3)
    source_id = decoded.get("source_id", tf.constant(""))
    boxes = tf.reshape(tf.cast(decoded["groundtruth_boxes"], tf.float32),
                       [-1, 4])
    classes = tf.reshape(
        tf.cast(decoded["groundtruth_classes"], tf.int32), [-1])
    classes = self._check_classes(classes, source_id)
    num = tf.shape(classes)[0]
    is_crowd = tf.reshape(tf.cast(decoded.get(
        "groundtruth_is_crowd", tf.zeros([num], tf.bool)), tf.bool), [-1])
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    areas = decoded.get("groundtruth_area")
    if areas is None:
      areas = box_ops.area(box_ops.denormalize_boxes(boxes, height, width))
    areas = tf.reshape(tf.cast(areas, tf.float32), [-1])

    # Out-of-image coordinates would otherwise survive a flip mirrored.
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    keep = tf.ones([num], tf.bool)
    if self.skip_crowd_during_training:
      keep = tf.logical_not(is_crowd)

    flip = tf.constant(False)
    if self.training:
      if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
      flip_seed, scale_seed, crop_seed = tf.unstack(
          tf.random.experimental.stateless_split(seed, num=3))
      if self.random_flip:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]),
                        lambda: image)
        boxes = tf.cond(flip, lambda: _flip_boxes_left_right(boxes),
                        lambda: boxes)
    else:
      scale_seed = crop_seed = None

    scaled_size, image_scale, offset = self._scale_and_offset(
        height, width, scale_seed, crop_seed)
    image = tf.image.resize(image, scaled_size, method="bilinear")
    image = image[offset[0]:offset[0] + self.output_size,
                  offset[1]:offset[1] + self.output_size]
    image = (image - tf.constant(self.mean, tf.float32)) / tf.constant(
        self.std, tf.float32)
    image = tf.image.pad_to_bounding_box(image, 0, 0, self.output_size,
                                         self.output_size)
    image = tf.ensure_shape(image, [self.output_size, self.output_size, 3])

    scaled = tf.cast(scaled_size, tf.float32)
    offset_f = tf.cast(offset, tf.float32)
    boxes = (box_ops.denormalize_boxes(boxes, scaled[0], scaled[1]) -
             tf.tile(offset_f, [2]))
    boxes = box_ops.clip_boxes(boxes, self.output_size, self.output_size)
    keep = tf.logical_and(keep, box_ops.area(boxes) > 0.0)

    rows = tf.where(keep)[:, 0]
    num_boxes = tf.minimum(tf.size(rows, tf.int32), self.max_num_instances)
    image_info = tf.stack([tf.cast(tf.stack([height, width]), tf.float32),
                           scaled, image_scale, offset_f])
    return {
        "image": image,
        "boxes": _pad_or_truncate(tf.gather(boxes, rows),
                                  self.max_num_instances),
        "classes": _pad_or_truncate(tf.gather(classes, rows),
                                    self.max_num_instances),
        "is_crowd": _pad_or_truncate(tf.gather(is_crowd, rows),
                                     self.max_num_instances),
        "areas": _pad_or_truncate(tf.gather(areas, rows),
                                  self.max_num_instances),
        "num_boxes": num_boxes,
        "image_info": image_info,
        "instance_rows": _pad_or_truncate(tf.cast(rows, tf.int32),
                                          self.max_num_instances),
        "flipped": flip,
    }

  def _groundtruths(self, decoded):
    """Evaluation ground truths in original-image pixels (crowd kept)."""
    shape = tf.shape(decoded["image"])
    height, width = shape[0], shape[1]
    boxes = tf.reshape(tf.cast(decoded["groundtruth_boxes"], tf.float32),
                       [-1, 4])
    boxes = box_ops.clip_boxes(
        box_ops.denormalize_boxes(boxes, height, width), height, width)
    classes = tf.reshape(
        tf.cast(decoded["groundtruth_classes"], tf.int32), [-1])
    num = tf.shape(classes)[0]
    is_crowd = tf.reshape(tf.cast(decoded.get(
        "groundtruth_is_crowd", tf.zeros([num], tf.bool)), tf.bool), [-1])
    areas = decoded.get("groundtruth_area")
    if areas is None:
      areas = box_ops.area(boxes)
    areas = tf.reshape(tf.cast(areas, tf.float32), [-1])
    rows = tf.where(box_ops.area(boxes) > 0.0)[:, 0]
    size = self.max_num_instances
    return {
        "source_id": source_id_to_int64(
            decoded.get("source_id", tf.constant(""))),
        "height": tf.cast(height, tf.int32),
        "width": tf.cast(width, tf.int32),
        "boxes": _pad_or_truncate(tf.gather(boxes, rows), size),
        "classes": _pad_or_truncate(tf.gather(classes, rows), size),
        "is_crowd": _pad_or_truncate(tf.gather(is_crowd, rows), size),
        "areas": _pad_or_truncate(tf.gather(areas, rows), size),
        "num_groundtruths": tf.minimum(tf.size(rows, tf.int32), size),
    }

  def __call__(self, decoded, seed=None):
    """Parses one example.

    Args:
      decoded: dict of `decode_detection_example` (see `transform`).
      seed: optional [2] int32/int64 stateless seed (training); random when
        None.

    Returns:
      (image, labels): image float32 [S, S, 3] (see `transform`); labels a
      dict, A = anchors per location, H_l = W_l = S / 2^l:
        "cls_targets": {str(l): int32 [H_l, W_l, A]}, class id of positive
          anchors, 0 background, -1 ignored.
        "box_targets": {str(l): float32 [H_l, W_l, A * 4]}, encoded boxes
          of positive anchors, 0 elsewhere.
        "num_positives": float32 scalar.
        "image_info": float32 [4, 2] (module docstring).
      and in evaluation also
        "groundtruths": {"source_id": int64 (`source_id_to_int64`),
          "height", "width": int32 (original image), "boxes": float32
          [M, 4] (ymin, xmin, ymax, xmax) in original-image pixels,
          "classes": int32 [M] (0 padding), "is_crowd": bool [M], "areas":
          float32 [M], "num_groundtruths": int32}, crowd boxes included,
          empty boxes dropped, M = max_num_instances.

    Raises:
      tf.errors.InvalidArgumentError (when run): a class id outside
        [1, num_classes), naming the source_id (see `transform`).
    """
    out = self.transform(decoded, seed)
    valid = tf.range(self.max_num_instances) < out["num_boxes"]
    targets = self.labeler.multilevel_targets(
        self.anchors, out["boxes"], out["classes"], valid)
    labels = {
        "cls_targets": targets["cls_targets"],
        "box_targets": targets["box_targets"],
        "num_positives": targets["num_positives"],
        "image_info": out["image_info"],
    }
    if not self.training:
      labels["groundtruths"] = self._groundtruths(decoded)
    return out["image"], labels


def pad_eval_batch(images, labels, batch_size,
                   ignored_keys=("cls_targets",)):
  """Pads a possibly short evaluation batch of a detection parser.

  Padding examples have zero images, -1 (ignored: no loss) in every target
  of `ignored_keys`, image_info with scale 1 (so mapping their detections
  back divides by 1, not 0), every other label 0 (so num_groundtruths 0),
  groundtruths source_id -1 and labels["valid"] False.

  Args:
    images: float32 [n, S, S, 3], n <= batch_size.
    labels: dict of [n, ...] tensors (`RetinaNetParser` or
      `MaskRCNNParser` labels, batched).
    batch_size: int, the static batch size.
    ignored_keys: label keys (each a dict of per-level targets) whose
      padding is -1, e.g. "cls_targets" (RetinaNet), "rpn_score_targets"
      (Mask R-CNN).

  Returns:
    (images [batch_size, S, S, 3], labels with every tensor [batch_size,
    ...] and "valid": bool [batch_size]).
  """
  num = tf.shape(images)[0]

  def pad(value, fill=0):
    paddings = [[0, batch_size - num]] + [[0, 0]] * (value.shape.rank - 1)
    value = tf.pad(value, paddings, constant_values=fill)
    return tf.ensure_shape(value, [batch_size] + value.shape[1:].as_list())

  labels = dict(labels)
  ignored = {key: {k: pad(v, -1) for k, v in labels.pop(key).items()}
             for key in ignored_keys if key in labels}
  padding_info = tf.constant([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  image_info = tf.concat(
      [labels.pop("image_info"),
       tf.tile(padding_info[None], [batch_size - num, 1, 1])], axis=0)
  groundtruths = dict(labels.pop("groundtruths", {}))
  source_id = groundtruths.pop("source_id", None)
  labels = tf.nest.map_structure(pad, labels)
  labels.update(ignored)
  labels["image_info"] = tf.ensure_shape(image_info, [batch_size, 4, 2])
  if source_id is not None or groundtruths:
    labels["groundtruths"] = tf.nest.map_structure(pad, groundtruths)
    if source_id is not None:
      labels["groundtruths"]["source_id"] = pad(source_id, -1)
  labels["valid"] = tf.ensure_shape(tf.range(batch_size) < num, [batch_size])
  return pad(images), labels


def detection_dataset(file_pattern, training, global_batch_size, parser,
                      include_masks=False, ignored_keys=("cls_targets",),
                      input_context=None, seed=None, num_eval_examples=None):
  """Batched (images, labels) of a detection parser; see retinanet_dataset.

  Args:
    file_pattern, training, global_batch_size, input_context, seed,
      num_eval_examples: as in `retinanet_dataset`.
    parser: a parser object: parser(decoded, seed) -> (image, labels) in
      training, parser(decoded) in evaluation, with a `training` attribute.
    include_masks: bool, decode the instance masks of the records.
    ignored_keys: per-level target keys padded with -1 in evaluation (see
      `pad_eval_batch`).

  Returns:
    A tf.data.Dataset of (images, labels) with static shapes.

  Raises:
    FileNotFoundError: when `file_pattern` matches nothing.
    ValueError: when the batch size is not positive or the parser's mode
      disagrees with `training`.
  """
  if parser.training != bool(training):
    raise ValueError(
        f"Detection dataset with training={training} was given a "
        f"{type(parser).__name__} built with training={parser.training}; "
        "expected the same mode.")
  batch_size, replicas_per_pipeline = batching.per_replica_batch(
      global_batch_size, input_context)

  def decode(serialized):
    return decode_detection_example(serialized, include_masks=include_masks)

  dataset = readers.tfrecord_dataset(
      file_pattern, training, input_context=input_context, seed=seed)
  if training:
    dataset = batching.map_with_example_seeds(
        dataset, lambda serialized, example_seed: parser(
            decode(serialized), example_seed), seed)
    dataset = dataset.batch(batch_size, drop_remainder=True,
                            num_parallel_calls=AUTOTUNE)
  else:
    if num_eval_examples is not None:
      dataset = dataset.take(int(num_eval_examples))
    dataset = dataset.map(lambda serialized: parser(decode(serialized)),
                          num_parallel_calls=AUTOTUNE)
    dataset = batching.batch_and_pad_eval(
        dataset, batch_size, replicas_per_pipeline,
        lambda images, labels, size: pad_eval_batch(
            images, labels, size, ignored_keys))

  return batching.finish(dataset, training, seed, input_context)


def retinanet_dataset(file_pattern, training, global_batch_size, parser,
                      input_context=None, seed=None, num_eval_examples=None):
  """Batched RetinaNet examples for one input pipeline.

  Args:
    file_pattern: str, comma-separated TFRecord glob patterns of detection
      records (keys of `dataloaders.detection_decoder`).
    training: bool. True: shuffle, augment, repeat forever, drop the last
      partial batch. False: one pass in record order, the last batch padded.
    global_batch_size: int, batch size over all replicas.
    parser: a `RetinaNetParser` whose `training` equals `training`, or a dict
      of its constructor arguments (without `training`).
    input_context: optional tf.distribute.InputContext; batches are then
      per replica (`get_per_replica_batch_size`) and the data is sharded.
    seed: optional int; when given, shuffles, augmentations and ordering are
      deterministic (same batches on every run on the same machine).
    num_eval_examples: optional int (evaluation only): evaluate only the
      first `num_eval_examples` examples read by this input pipeline; None
      evaluates them all.

  Returns:
    A tf.data.Dataset of (images, labels) with static shapes, b the batch
    size of this replica: images float32 [b, S, S, 3] and the labels of
    `RetinaNetParser.__call__` with a leading [b]; in evaluation also
    "valid": bool [b], False on the padding examples of the last batch (see
    `pad_eval_batch`). When a pipeline feeds several replicas, the number
    of evaluation batches is padded to a multiple of them, so every replica
    gets a batch at every step.

  Raises:
    FileNotFoundError: when `file_pattern` matches nothing.
    ValueError: when the batch size is not positive or the parser's mode
      disagrees with `training`.
  """
  if isinstance(parser, dict):
    parser = RetinaNetParser(training=training, **parser)
  return detection_dataset(
      file_pattern, training, global_batch_size, parser,
      include_masks=False, ignored_keys=("cls_targets",),
      input_context=input_context, seed=seed,
      num_eval_examples=num_eval_examples)
