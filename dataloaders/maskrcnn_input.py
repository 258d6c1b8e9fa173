"""Mask R-CNN input pipeline: RPN targets and instance masks.

TFRecord shards (written with masks: `create_coco_tf_record.py
--include_masks`) -> `detection_decoder.decode_detection_example(...,
include_masks=True)` -> `MaskRCNNParser` -> per-replica batches, under the
same batching rules as RetinaNet (`retinanet_input.detection_dataset`).

The image and its boxes go through exactly the RetinaNet geometry (flip,
scale jitter, crop, pad; see `dataloaders/retinanet_input.py`), so
`image_info` has the same layout and meaning. What Mask R-CNN adds:

- RPN targets (Faster R-CNN §3.1.2): class-agnostic anchors labelled with IoU
  thresholds 0.7 / 0.3, each ground truth force-matched, then 256 anchors
  sampled per image with at most half positives
  (`modeling.ops.target_assigner.RpnAnchorLabeler`).
- Ground truths for the second stage, in pixels of the model input:
  boxes, classes, and each instance's mask cropped to its own transformed
  box and resized to K x K (K = mask_crop_size).

Masks follow their boxes exactly. A point (Y, X) of the model input is the
point ((Y + offset_y) / scale_y, (X + offset_x) / scale_x) of the (possibly
flipped) original image, and a flipped x is width - x of the record's mask
(image_info has scale and offset; see the RetinaNet module docstring). The
K x K crop samples the record's full-resolution mask bilinearly at the
centres of a K x K grid laid over the transformed box, mapped back this way;
samples within half a pixel of the image border take the border pixel's
value. So no full-size mask is ever resized: the work is O(K * width) per
instance.

Faster R-CNN (`include_masks=False`) reads the same records, with or
without masks, and gets the same labels without "gt_masks": the decoder
then skips image/object/mask, so no mask is decoded.
"""

import tensorflow as tf

from dataloaders import retinanet_input
from dataloaders.classification import IMAGENET_MEAN_RGB
from dataloaders.classification import IMAGENET_STDDEV_RGB
from modeling.ops.target_assigner import RpnAnchorLabeler

# Evaluation samples its RPN minibatch with this fixed seed, so that the
# evaluation loss is the same on every run.
_EVAL_SAMPLING_SEED = (20240, 7)


def _sample_grid(start, end, size):
  """[n, size] centres of `size` equal cells spanning [start, end] ([n])."""
  steps = (tf.range(size, dtype=tf.float32) + 0.5) / size
  return start[:, None] + steps[None, :] * (end - start)[:, None]


def _interpolation(coordinates, length):
  """Bilinear taps along one axis of a `length`-pixel image.

  Args:
    coordinates: float32 [...], continuous pixel coordinates (pixel i spans
      [i, i + 1]).
    length: int32 scalar, pixels along the axis (>= 1).

  Returns:
    (low int32 [...], high int32 [...], weight of high float32 [...]).
  """
  last = tf.cast(length - 1, tf.float32)
  index = tf.clip_by_value(coordinates - 0.5, 0.0, last)
  low = tf.floor(index)
  high = tf.minimum(low + 1.0, last)
  return tf.cast(low, tf.int32), tf.cast(high, tf.int32), index - low


def crop_instance_masks(masks, instance_rows, boxes, image_info, flipped,
                        crop_size):
  """Each instance's record mask cropped to its transformed box.

  Args:
    masks: float32 [K, h, w], the record's masks (original image pixels).
    instance_rows: int32 [n], the row of `masks` of each instance.
    boxes: float32 [n, 4], (ymin, xmin, ymax, xmax) in pixels of the model
      input (after flip, resize and crop).
    image_info: float32 [4, 2] of the transform (RetinaNet layout).
    flipped: bool scalar, whether the image was flipped left-right.
    crop_size: int, side K of the output.

  Returns:
    float32 [n, crop_size, crop_size], values in [0, 1]: row i, column j is
    the mask at the centre of cell (i, j) of a crop_size x crop_size grid
    over the box, interpolated bilinearly.
  """
  shape = tf.shape(masks)
  height, width = shape[1], shape[2]
  scale, offset = image_info[2], image_info[3]
  ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
  ys = (_sample_grid(ymin, ymax, crop_size) + offset[0]) / scale[0]
  xs = (_sample_grid(xmin, xmax, crop_size) + offset[1]) / scale[1]
  xs = tf.where(flipped, tf.cast(width, tf.float32) - xs, xs)
  top, bottom, wy = _interpolation(ys, height)       # [n, K] each.
  left, right, wx = _interpolation(xs, width)

  def rows_at(y):
    """[n, K, w]: row y[i, k] of instance i's mask."""
    rows = tf.broadcast_to(instance_rows[:, None], tf.shape(y))
    return tf.gather_nd(masks, tf.stack([rows, y], axis=-1))

  lines = rows_at(top) * (1.0 - wy[..., None]) + rows_at(bottom) * wy[..., None]
  columns_left = tf.gather(lines, left, axis=2, batch_dims=1)  # [n, K, K]
  columns_right = tf.gather(lines, right, axis=2, batch_dims=1)
  wx = wx[:, None, :]
  return columns_left * (1.0 - wx) + columns_right * wx


class MaskRCNNParser(retinanet_input.RetinaNetParser):
  """Turns a decoded detection example with masks into Mask R-CNN inputs.

  The geometry, class checks, crowd handling and evaluation ground truths
  are the RetinaNet parser's (see its docstring); only the targets differ.
  Random ops are stateless: `__call__` takes an optional per-example seed
  (what `maskrcnn_dataset` passes), which drives both the augmentation and
  the RPN minibatch sampling.

  Attributes:
    anchors: modeling.ops.anchors.Anchors of the S x S model input.
    labeler: modeling.ops.target_assigner.RpnAnchorLabeler.
    mask_crop_size: int, side K of the ground-truth mask crops.
  """

  def __init__(self, output_size, min_level, max_level, num_scales,
               aspect_ratios, anchor_size, num_classes, training,
               aug_scale_min=1.0, aug_scale_max=1.0, random_flip=True,
               max_num_instances=100, rpn_match_threshold=0.7,
               rpn_unmatched_threshold=0.3, rpn_batch_size_per_image=256,
               rpn_fg_fraction=0.5, mask_crop_size=112,
               skip_crowd_during_training=True, mean=IMAGENET_MEAN_RGB,
               std=IMAGENET_STDDEV_RGB, include_masks=True):
    """Initialises the parser.

    Args:
      output_size, min_level, max_level, num_classes, training,
        aug_scale_min, aug_scale_max, random_flip, max_num_instances,
        skip_crowd_during_training, mean, std: as for `RetinaNetParser`.
      num_scales, aspect_ratios, anchor_size: the RPN anchors (public
        SpineNet Mask R-CNN configs: 1, (0.5, 1.0, 2.0), 3.0).
      rpn_match_threshold, rpn_unmatched_threshold: IoU at or above which
        an anchor is positive, and below which it is negative (0.7, 0.3).
      rpn_batch_size_per_image: anchors sampled per image (256).
      rpn_fg_fraction: largest share of positives among them (0.5).
      mask_crop_size: int, side K of each instance's ground-truth mask.
      include_masks: False for Faster R-CNN: no instance masks are read or
        output (no "gt_masks" label), so records without masks serve.

    Raises:
      ValueError: when an argument is out of range (see `RetinaNetParser`,
        `RpnAnchorLabeler`), or mask_crop_size < 1.
    """
    super().__init__(
        output_size, min_level, max_level, num_scales, aspect_ratios,
        anchor_size, num_classes, training, aug_scale_min=aug_scale_min,
        aug_scale_max=aug_scale_max, random_flip=random_flip,
        max_num_instances=max_num_instances,
        match_threshold=rpn_match_threshold,
        unmatched_threshold=rpn_unmatched_threshold,
        skip_crowd_during_training=skip_crowd_during_training, mean=mean,
        std=std)
    if int(mask_crop_size) < 1:
      raise ValueError(f"MaskRCNNParser: mask_crop_size={mask_crop_size} "
                       "must be >= 1 (e.g. 112).")
    self.labeler = RpnAnchorLabeler(
        rpn_match_threshold, rpn_unmatched_threshold,
        rpn_batch_size_per_image, rpn_fg_fraction)
    self.mask_crop_size = int(mask_crop_size)
    self.include_masks = bool(include_masks)

  def _instance_masks(self, decoded, out):
    """float32 [M, K, K] masks of the kept instances, zeros as padding."""
    masks = tf.cast(decoded["groundtruth_instance_masks"], tf.float32)
    num = out["num_boxes"]
    size = self.mask_crop_size

    def crop():
      return crop_instance_masks(
          masks, out["instance_rows"][:num], out["boxes"][:num],
          out["image_info"], out["flipped"], size)

    # An image without instances may have no mask to gather from.
    cropped = tf.cond(num > 0, crop, lambda: tf.zeros([0, size, size]))
    return retinanet_input._pad_or_truncate(  # pylint: disable=protected-access
        cropped, self.max_num_instances)

  def __call__(self, decoded, seed=None):
    """Parses one example.

    Args:
      decoded: dict of `decode_detection_example(..., include_masks=True)`
        (see `RetinaNetParser.transform`), with "groundtruth_instance_masks"
        float32 [K, h, w] (not read without include_masks).
      seed: optional [2] int32/int64 stateless seed (training); random when
        None. Evaluation uses a fixed seed for the RPN sampling.

    Returns:
      (image, labels): image float32 [S, S, 3], ImageNet-normalised and
      padded with 0 (as RetinaNet); labels a dict, A = anchors per
      location, H_l = W_l = S / 2^l, M = max_num_instances, K =
      mask_crop_size:
        "image_info": float32 [4, 2] (RetinaNet layout).
        "rpn_score_targets": {str(l): int32 [H_l, W_l, A]}, 1 sampled
          positive, 0 sampled negative, -1 ignored or not sampled.
        "rpn_box_targets": {str(l): float32 [H_l, W_l, 4 * A]}, encoded
          boxes (box_ops.encode_boxes) of the sampled positives, 0
          elsewhere.
        "gt_boxes": float32 [M, 4], (ymin, xmin, ymax, xmax) in pixels of
          the model input, 0 as padding.
        "gt_classes": int32 [M], class ids, 0 as padding.
        "gt_masks": float32 [M, K, K] in [0, 1], each instance's mask
          cropped to its own row of gt_boxes (see the module docstring),
          0 as padding; only with include_masks.
      and in evaluation also "groundtruths" (as `RetinaNetParser`).
      Crowd instances are left out of everything but "groundtruths" when
      skip_crowd_during_training.

    Raises:
      KeyError: when `decoded` has no instance masks (include_masks).
      tf.errors.InvalidArgumentError (when run): a class id outside
        [1, num_classes), naming the source_id.
    """
    if self.include_masks and "groundtruth_instance_masks" not in decoded:
      raise KeyError(
          "MaskRCNNParser: the decoded example has no "
          "'groundtruth_instance_masks'; decode with decode_detection_example"
          "(serialized, include_masks=True) records written with masks "
          "(create_coco_tf_record.py --include_masks).")
    if self.training:
      if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
      sampling_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    else:
      sampling_seed = tf.constant(_EVAL_SAMPLING_SEED, tf.int64)
    out = self._transform(decoded, seed)
    valid = tf.range(self.max_num_instances) < out["num_boxes"]
    targets = self.labeler.multilevel_targets(
        self.anchors, out["boxes"], valid, sampling_seed)
    labels = {
        "image_info": out["image_info"],
        "rpn_score_targets": targets["score_targets"],
        "rpn_box_targets": targets["box_targets"],
        "gt_boxes": out["boxes"],
        "gt_classes": out["classes"],
    }
    if self.include_masks:
      labels["gt_masks"] = self._instance_masks(decoded, out)
    if not self.training:
      labels["groundtruths"] = self._groundtruths(decoded)
    return out["image"], labels


def maskrcnn_dataset(file_pattern, training, global_batch_size, parser,
                     input_context=None, seed=None, num_eval_examples=None):
  """Batched Mask R-CNN examples for one input pipeline.

  Args:
    file_pattern: str, comma-separated TFRecord glob patterns of detection
      records with instance masks (image/object/mask; records without
      them serve a parser built with include_masks=False).
    training: bool. True: shuffle, augment, repeat forever, drop the last
      partial batch. False: one pass in record order, the last batch padded.
    global_batch_size: int, batch size over all replicas.
    parser: a `MaskRCNNParser` whose `training` equals `training`, or a dict
      of its constructor arguments (without `training`).
    input_context: optional tf.distribute.InputContext; batches are then
      per replica and the data is sharded.
    seed: optional int; when given, shuffles, augmentations, RPN sampling
      and ordering are deterministic.
    num_eval_examples: optional int (evaluation only): evaluate only the
      first `num_eval_examples` examples read by this input pipeline.

  Returns:
    A tf.data.Dataset of (images, labels) with static shapes, b the batch
    size of this replica: images float32 [b, S, S, 3] and the labels of
    `MaskRCNNParser.__call__` with a leading [b]; in evaluation also
    "valid": bool [b], False on the padding examples of the last batch,
    whose rpn_score_targets are -1 and other labels 0
    (`retinanet_input.pad_eval_batch`).

  Raises:
    FileNotFoundError: when `file_pattern` matches nothing.
    ValueError: when the batch size is not positive or the parser's mode
      disagrees with `training`.
    tf.errors.InvalidArgumentError (when run): a record without one mask
      per object (see `decode_detection_example`).
  """
  if isinstance(parser, dict):
    parser = MaskRCNNParser(training=training, **parser)
  return retinanet_input.detection_dataset(
      file_pattern, training, global_batch_size, parser,
      include_masks=parser.include_masks,
      ignored_keys=("rpn_score_targets",), input_context=input_context,
      seed=seed, num_eval_examples=num_eval_examples)
