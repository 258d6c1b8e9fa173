"""Mask R-CNN instance segmentation (SpineNet §4.1, Eff-SpineNet §4.1) and
Faster R-CNN detection (SP-NAS §4.1, Auto-FPN §3.1).

Model: backbone -> decoder -> RPN -> proposals -> Fast R-CNN and mask heads
(modeling/models/maskrcnn.py). Loss: RPN objectness and box, Fast R-CNN
class and box, mask; normalisers in modeling/losses/maskrcnn.py.
Evaluation: detections and 28x28 masks from the model, boxes mapped back to
original pixels, box and mask AP on the host (COCOEvaluator with
include_mask, which needs the instances JSON of the evaluated split).

Faster R-CNN (`FasterRCNNTask`) is the same task without the mask branch:
the same model with no mask head, no gt_masks, no mask loss, no mask
outputs, box AP only (with or without an instances JSON, as RetinaNet),
and records with or without instance masks.

The box head is the Fast R-CNN head of the frcnn_* arguments, or a
gin-bound builder named by `box_head`: `@auto_head`, Auto-FPN's searched
head (Sec. 3.3; modeling/heads/auto_head.py), the super-network for the
head search (`auto_head.search = True`, official/search/darts.py) or a
decoded genotype (`auto_head.genotype = [...]`, best_auto_fpn_head.gin).

Features the model gets: in training a dict {"images", "gt_boxes",
"gt_classes", "gt_masks" (Mask R-CNN only), "image_shape"} (the second
stage samples its ROIs against the ground truth inside the model); in
evaluation {"images", "image_shape"}. image_shape is the valid (unpadded)
part of each image in model-input pixels; proposals and detections are
clipped to it.
"""

import inspect

import gin
import tensorflow as tf

from dataloaders import maskrcnn_input
from modeling.heads.auto_head import AutoHead
from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.mask_head import MaskHead
from modeling.heads.rpn import RPNHead
from modeling.losses import maskrcnn as maskrcnn_losses
from modeling.models.maskrcnn import MaskRCNNModel
from modeling.ops import mask_ops
from official.core import registry
from official.core import task as task_lib
from official.evaluation.coco_evaluator import COCOEvaluator
from official.tasks.retinanet import category_names
from official.tasks.retinanet import detection_serving_preprocess
from official.tasks.retinanet import original_image_boxes
from official.tasks.retinanet import synthetic_coco_records

# MaskRCNNTask arguments that only the mask branch reads. FasterRCNNTask
# refuses a value other than the default for any of them, so that a
# Mask R-CNN setting is not silently ignored.
MASK_ARGUMENTS = ("mask_num_convs", "mask_num_filters", "mask_crop_size",
                  "num_mask_samples", "mask_weight", "serve_image_masks")
# MaskRCNNTask arguments that only the Fast R-CNN head reads: with a
# `box_head` builder they must keep their defaults (refused, not ignored).
FRCNN_ARGUMENTS = ("frcnn_num_convs", "frcnn_num_filters", "frcnn_num_fcs",
                   "frcnn_fc_dims")
# What the task passes to a box head builder itself: gin bindings of these
# are refused at parse time (the norm options are norm_activation's).
BOX_HEAD_SUPPLIED = ("num_classes", "name", "activation", "use_sync_bn",
                     "norm_momentum", "norm_epsilon")
# The name the box head gets in the model, whichever head it is (its
# variables are fast_rcnn_head/...; modeling/models/maskrcnn.py).
BOX_HEAD_NAME = "fast_rcnn_head"


def _box_head_builder(head_cls, gin_name):
  """A gin configurable `gin_name` that builds `head_cls` with its arguments.

  The builder's keyword arguments are the head constructor's own (and
  `name`), read from its signature, so defaults and documentation stay at
  the head; BOX_HEAD_SUPPLIED are denylisted (the task passes them).
  """
  parameters = [
      p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
      for n, p in inspect.signature(head_cls.__init__).parameters.items()
      if n != "self" and p.kind not in (inspect.Parameter.VAR_KEYWORD,
                                        inspect.Parameter.VAR_POSITIONAL)]
  parameters.append(inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY,
                                      default=None))

  def build(**kwargs):
    return head_cls(**kwargs)

  build.__signature__ = inspect.Signature(parameters)
  build.__name__ = gin_name
  build.__doc__ = (f"Builds {head_cls.__name__} ({head_cls.__module__}); the "
                   "arguments are its constructor's.")
  return gin.external_configurable(build, gin_name,
                                   denylist=list(BOX_HEAD_SUPPLIED))


# Box heads a gin file names as MaskRCNNTask.box_head / FasterRCNNTask.box_head:
# Auto-FPN's Auto-head, and the Fast R-CNN head with its own bindings
# (fast_rcnn_head.fc_dims = ...), which a file can replace by another box
# head where frcnn_* task settings would have to be unbound
# (configs/search/auto_fpn_head_synthetic_coco.gin).
BOX_HEADS = {"auto_head": _box_head_builder(AutoHead, "auto_head"),
             "fast_rcnn_head": _box_head_builder(FastRCNNHead,
                                                 "fast_rcnn_head")}


@gin.configurable
def synthetic_coco_mask_records(data_dir="data/synthetic_coco_masks",
                                num_train=500, num_val=100, num_shards=4,
                                seed=0):
  """The synthetic COCO-format dataset with instance masks in its records.

  The same images and instances JSON as synthetic_coco_records, converted
  with --include_masks, in a directory of its own (RetinaNet's records have
  no masks). Made on first use; idempotent.
  """
  # Every argument is passed explicitly, so bindings of
  # synthetic_coco_records (the RetinaNet quickstart's) do not apply here.
  return synthetic_coco_records(data_dir=data_dir, num_train=num_train,
                                num_val=num_val, num_shards=num_shards,
                                seed=seed, include_masks=True)


def valid_image_shape(image_info, image_size):
  """float32 [B, 2]: the unpadded (height, width) of each model input.

  Args:
    image_info: float32 [B, 4, 2] (dataloaders/retinanet_input.py layout).
    image_size: side S of the model input.
  """
  return tf.clip_by_value(image_info[:, 1, :] - image_info[:, 3, :], 0.0,
                          float(image_size))


@registry.register_task
class MaskRCNNTask(task_lib.DatasetTask):
  """Mask R-CNN training and COCO box + mask evaluation.

  Subclassed by FasterRCNNTask (include_mask = False), which shares every
  argument below except the mask ones (MASK_ARGUMENTS).

  Args:
    backbone: gin-bound backbone builder (@spinenet, @eff_spinenet, ...).
    decoder: gin-bound decoder builder (@identity_decoder, @fpn) or None.
    data: callable returning the dataset dict (@coco_records with an
      annotation_file, @synthetic_coco_mask_records); the records must hold
      instance masks (create_coco_tf_record.py --include_masks).
    num_classes: classes including background 0 (91 for COCO).
    image_size: square input side in pixels, a multiple of 2^max_level.
    min_level, max_level: levels of the RPN and the anchors, and by default
      of ROI Align.
    roi_min_level, roi_max_level: levels ROI Align reads, each None for
      min_level / max_level. FPN's Faster R-CNN: an RPN on 2..6 and ROI
      Align on 2..5 (Lin et al. 2017, Sec. 4.1: P6 only serves the 512-pixel
      anchors).
    num_scales, aspect_ratios, anchor_size: RPN anchors (public SpineNet
      Mask R-CNN: 1, (0.5, 1, 2), 3; 5 for SpineNet-190).
    rpn_num_convs, rpn_num_filters: RPN head (1 x 256).
    frcnn_num_convs, frcnn_num_filters, frcnn_num_fcs, frcnn_fc_dims: Fast
      R-CNN head (4 x 256 convs, 1 FC of 1024); without `box_head` only.
    mask_num_convs, mask_num_filters: mask head (4 x 256).
    head_use_separable_conv: separable 3x3 convs in all three heads
      (Eff-SpineNet).
    aug_scale_min, aug_scale_max: training scale jitter (protocol).
    max_num_instances: ground truths kept per image.
    rpn_match_threshold, rpn_unmatched_threshold, rpn_batch_size_per_image,
      rpn_fg_fraction: RPN anchor labelling (0.7, 0.3, 256, 0.5).
    mask_crop_size: side of the ground-truth mask crops (112).
    rpn_pre_nms_top_k, rpn_post_nms_top_k, rpn_nms_iou_threshold,
      test_rpn_pre_nms_top_k, test_rpn_post_nms_top_k: proposals (2000 /
      1000 / 0.7 in training, 1000 / 1000 at test).
    num_sampled_rois, foreground_fraction, foreground_iou,
      background_iou_high, background_iou_low: second-stage ROI sampling
      (512, 0.25, 0.5, 0.5, 0.0).
    num_mask_samples: ROIs per image trained by the mask head (128).
    roi_sampling_ratio: ROI Align samples per bin and side (2).
    roi_aligned: ROI Align's convention (modeling/ops/roi_align.py): True,
      Detectron2's half-cell shift (the default); False, Model Garden's ROI
      Align (index = pixel / stride, boxes of any size), which with
      roi_sampling_ratio = 1 is the function Model Garden's Mask R-CNN
      computes; python -m official.import_checkpoint requires both for its
      checkpoints.
    pre_nms_top_k, score_threshold, nms_iou_threshold, max_detections,
      nms_method: detections (5000, 0.05, 0.5, 100, "combined").
    rpn_huber_delta, frcnn_huber_delta, rpn_score_weight, rpn_box_weight,
      frcnn_class_weight, frcnn_box_weight, mask_weight: the losses.
    serve_image_masks: the serving outputs also hold each detection's mask
      pasted into the original image (detection_image_masks, uint8 [B, N,
      H, W]), pasted by the rule the evaluator uses (modeling/ops/
      mask_ops.py). Costs about 4 x 4 bytes x N x H x W of memory per
      image at serving time; False serves the 28 x 28 masks only.
    seed: makes the input pipeline deterministic.
    box_head: None for the Fast R-CNN head of the frcnn_* arguments, or a
      gin-bound box head builder (BOX_HEADS: @auto_head,
      @fast_rcnn_head), called with
      num_classes, the norm_activation options and name="fast_rcnn_head";
      it must return a BoxHead (modeling/heads/fast_rcnn.py).
  Raises:
    ValueError: (construction) mask settings on a task without masks;
      frcnn_* settings, or head_use_separable_conv for a builder without
      use_separable_conv, together with `box_head` (naming them).
  """

  # A class attribute, not an argument: the registered name says whether
  # the model has masks (FasterRCNNTask sets it False).
  include_mask = True

  def __init__(self, backbone=gin.REQUIRED, decoder=None, data=gin.REQUIRED,
               num_classes=91, image_size=640, min_level=3, max_level=7,
               roi_min_level=None, roi_max_level=None, num_scales=1,
               aspect_ratios=(0.5, 1.0, 2.0), anchor_size=3.0,
               rpn_num_convs=1, rpn_num_filters=256, frcnn_num_convs=4,
               frcnn_num_filters=256, frcnn_num_fcs=1, frcnn_fc_dims=1024,
               mask_num_convs=4, mask_num_filters=256,
               head_use_separable_conv=False, aug_scale_min=1.0,
               aug_scale_max=1.0, max_num_instances=100,
               rpn_match_threshold=0.7, rpn_unmatched_threshold=0.3,
               rpn_batch_size_per_image=256, rpn_fg_fraction=0.5,
               mask_crop_size=112, rpn_pre_nms_top_k=2000,
               rpn_post_nms_top_k=1000, rpn_nms_iou_threshold=0.7,
               test_rpn_pre_nms_top_k=1000, test_rpn_post_nms_top_k=1000,
               num_sampled_rois=512, foreground_fraction=0.25,
               foreground_iou=0.5, background_iou_high=0.5,
               background_iou_low=0.0, num_mask_samples=128,
               roi_sampling_ratio=2, roi_aligned=True, pre_nms_top_k=5000,
               score_threshold=0.05, nms_iou_threshold=0.5, max_detections=100,
               nms_method="combined", rpn_huber_delta=1.0 / 9.0,
               frcnn_huber_delta=1.0, rpn_score_weight=1.0,
               rpn_box_weight=1.0, frcnn_class_weight=1.0,
               frcnn_box_weight=1.0, mask_weight=1.0, serve_image_masks=True,
               seed=None, box_head=None):
    self.backbone_fn = backbone
    self.decoder_fn = decoder
    self.data_fn = data
    self.num_classes = num_classes
    self.image_size = image_size
    self.min_level = min_level
    self.max_level = max_level
    if not self.include_mask:
      _refuse_mask_arguments(type(self).__name__, dict(
          mask_num_convs=mask_num_convs, mask_num_filters=mask_num_filters,
          mask_crop_size=mask_crop_size, num_mask_samples=num_mask_samples,
          mask_weight=mask_weight, serve_image_masks=serve_image_masks))
    if box_head is not None:
      _refuse_frcnn_arguments(type(self).__name__, box_head, dict(
          frcnn_num_convs=frcnn_num_convs,
          frcnn_num_filters=frcnn_num_filters, frcnn_num_fcs=frcnn_num_fcs,
          frcnn_fc_dims=frcnn_fc_dims), head_use_separable_conv)
    self.box_head_fn = box_head
    self.num_scales = num_scales
    self.aspect_ratios = tuple(aspect_ratios)
    self.anchor_size = anchor_size
    self.rpn_head_args = dict(num_convs=rpn_num_convs,
                              num_filters=rpn_num_filters)
    self.frcnn_head_args = dict(num_convs=frcnn_num_convs,
                                num_filters=frcnn_num_filters,
                                num_fcs=frcnn_num_fcs, fc_dims=frcnn_fc_dims)
    self.mask_head_args = dict(num_convs=mask_num_convs,
                               num_filters=mask_num_filters)
    self.head_use_separable_conv = head_use_separable_conv
    self.parser_args = dict(
        aug_scale_min=aug_scale_min, aug_scale_max=aug_scale_max,
        max_num_instances=max_num_instances,
        rpn_match_threshold=rpn_match_threshold,
        rpn_unmatched_threshold=rpn_unmatched_threshold,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_fg_fraction=rpn_fg_fraction, mask_crop_size=mask_crop_size)
    self.model_args = dict(
        roi_min_level=roi_min_level, roi_max_level=roi_max_level,
        rpn_pre_nms_top_k=rpn_pre_nms_top_k,
        rpn_post_nms_top_k=rpn_post_nms_top_k,
        rpn_nms_iou_threshold=rpn_nms_iou_threshold,
        test_rpn_pre_nms_top_k=test_rpn_pre_nms_top_k,
        test_rpn_post_nms_top_k=test_rpn_post_nms_top_k,
        num_sampled_rois=num_sampled_rois,
        foreground_fraction=foreground_fraction,
        foreground_iou=foreground_iou,
        background_iou_high=background_iou_high,
        background_iou_low=background_iou_low,
        num_mask_samples=num_mask_samples,
        roi_sampling_ratio=roi_sampling_ratio, roi_aligned=bool(roi_aligned),
        pre_nms_top_k=pre_nms_top_k, score_threshold=score_threshold,
        nms_iou_threshold=nms_iou_threshold, max_detections=max_detections,
        nms_method=nms_method)
    self.loss_args = dict(
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_huber_delta=rpn_huber_delta, frcnn_huber_delta=frcnn_huber_delta,
        rpn_score_weight=rpn_score_weight, rpn_box_weight=rpn_box_weight,
        frcnn_class_weight=frcnn_class_weight,
        frcnn_box_weight=frcnn_box_weight, mask_weight=mask_weight,
        include_mask=self.include_mask)
    self.serve_image_masks = self.include_mask and bool(serve_image_masks)
    self.seed = seed

  def check_data(self, data):
    if self.include_mask and not data.get("annotation_file"):
      raise ValueError(
          "MaskRCNNTask: the dataset has no annotation_file; mask AP is "
          "computed against the segmentations of the evaluated split's COCO "
          "instances JSON. Set it, e.g. --gin_param=\"coco_records."
          "annotation_file='gs://BUCKET/coco/instances_val2017.json'\".")

  def build_model(self):
    backbone, decoder = registry.multilevel_features(
        (self.image_size, self.image_size, 3), backbone=self.backbone_fn,
        decoder=self.decoder_fn)
    norm = registry.norm_activation()
    separable = self.head_use_separable_conv
    rpn_head = RPNHead(
        min_level=self.min_level, max_level=self.max_level,
        num_anchors_per_location=self.num_scales * len(self.aspect_ratios),
        use_separable_conv=separable, **self.rpn_head_args, **norm,
        name="rpn_head")
    if self.box_head_fn is None:
      fast_rcnn_head = FastRCNNHead(
          num_classes=self.num_classes, use_separable_conv=separable,
          **self.frcnn_head_args, **norm, name=BOX_HEAD_NAME)
    else:
      extra = {"use_separable_conv": True} if separable else {}
      fast_rcnn_head = self.box_head_fn(num_classes=self.num_classes,
                                        **norm, **extra, name=BOX_HEAD_NAME)
    mask_head = MaskHead(
        num_classes=self.num_classes, use_separable_conv=separable,
        **self.mask_head_args, **norm,
        name="mask_head") if self.include_mask else None
    return MaskRCNNModel(
        backbone, decoder, rpn_head, fast_rcnn_head, mask_head,
        num_scales=self.num_scales, aspect_ratios=self.aspect_ratios,
        anchor_size=self.anchor_size, **self.model_args)

  def _parser(self, training):
    return maskrcnn_input.MaskRCNNParser(
        output_size=self.image_size, min_level=self.min_level,
        max_level=self.max_level, num_scales=self.num_scales,
        aspect_ratios=self.aspect_ratios, anchor_size=self.anchor_size,
        num_classes=self.num_classes, training=training,
        include_masks=self.include_mask, **self.parser_args)

  def build_inputs(self, training, global_batch_size, input_context=None):
    pattern = self.record_pattern(training)
    dataset = maskrcnn_input.maskrcnn_dataset(
        pattern, training, global_batch_size, self._parser(training),
        input_context=input_context, seed=self.seed,
        num_eval_examples=None if training else self.data["num_eval"])
    size = self.image_size

    def to_features(images, labels):
      labels = dict(labels)
      features = {"images": images,
                  "image_shape": valid_image_shape(labels["image_info"],
                                                   size)}
      if training:
        features["gt_boxes"] = labels.pop("gt_boxes")
        features["gt_classes"] = labels.pop("gt_classes")
        if self.include_mask:
          features["gt_masks"] = labels.pop("gt_masks")
      return features, labels

    return dataset.map(to_features, num_parallel_calls=tf.data.AUTOTUNE)

  def compute_losses(self, outputs, labels, global_batch_size):
    return maskrcnn_losses.maskrcnn_losses(outputs, labels, global_batch_size,
                                           **self.loss_args)

  def eval_outputs(self, outputs, labels):
    info = labels["image_info"]
    gt = labels["groundtruths"]
    masks = ({"detection_masks": outputs["detection_masks"]}
             if self.include_mask else {})
    return {
        "source_id": gt["source_id"],
        "detection_boxes": original_image_boxes(
            outputs["detection_boxes"], info, outputs["num_detections"]),
        "detection_scores": outputs["detection_scores"],
        "detection_classes": outputs["detection_classes"],
        **masks,
        "num_detections": outputs["num_detections"],
        "valid": labels["valid"],
        "groundtruth_boxes": gt["boxes"],
        "groundtruth_classes": gt["classes"],
        "groundtruth_is_crowd": gt["is_crowd"],
        "groundtruth_area": gt["areas"],
        "num_groundtruths": gt["num_groundtruths"],
        "height": gt["height"],
        "width": gt["width"],
    }

  def build_evaluator(self):
    return COCOEvaluator(annotation_file=self.data.get("annotation_file"),
                         include_mask=self.include_mask)

  def serving_preprocess(self, image):
    return detection_serving_preprocess(self._parser(training=False), image)

  def serving_outputs(self, model, images, image_info=None, for_tflite=False):
    """Detections and (Mask R-CNN) masks; boxes in original-image pixels.

    Returns:
      num_detections int32 [B]; detection_boxes float32 [B, N, 4] (ymin,
      xmin, ymax, xmax), original-image pixels with image_info (else model
      input pixels); detection_scores float32 [B, N]; detection_classes
      int32 [B, N] (0 = padding), N = max_detections; Mask R-CNN only:
      detection_masks float32 [B, N, 28, 28], mask probabilities over each
      detection box, and with serve_image_masks, detection_image_masks
      uint8 [B, N, H, W]: those masks pasted into the image
      (modeling.ops.mask_ops.paste_masks, >= 0.5), 1 = the detection's
      pixels, the same pixels the COCO
      evaluator scores. H x W is the largest original image of the batch
      with image_info (an image smaller than that occupies the top-left
      part), else the model input.
    Raises:
      NotImplementedError: for_tflite (neither Mask R-CNN nor Faster R-CNN
        has a TFLite export).
    """
    if for_tflite:
      raise NotImplementedError(
          f"{type(self).__name__} has no TFLite export: its second stage "
          "(ROI Align gathers, per-class box decoding and NMS between two "
          "networks) has no TFLite builtin form here. Export a SavedModel "
          "instead (python -m official.export without --format=tflite).")
    if image_info is None:
      outputs = model(images, training=False)
      boxes = outputs["detection_boxes"]
    else:
      outputs = model({"images": images,
                       "image_shape": valid_image_shape(image_info,
                                                        self.image_size)},
                      training=False)
      boxes = original_image_boxes(outputs["detection_boxes"], image_info,
                                   outputs["num_detections"])
    served = {"num_detections": outputs["num_detections"],
              "detection_boxes": boxes,
              "detection_scores": outputs["detection_scores"],
              "detection_classes": outputs["detection_classes"]}
    if self.include_mask:
      served["detection_masks"] = outputs["detection_masks"]
    if self.serve_image_masks:
      if image_info is None:
        size = tf.shape(images)[1], tf.shape(images)[2]
      else:
        original = tf.cast(tf.reduce_max(image_info[:, 0, :], axis=0),
                           tf.int32)
        size = original[0], original[1]
      pasted = mask_ops.paste_masks(outputs["detection_masks"], boxes, size)
      served["detection_image_masks"] = tf.cast(
          pasted >= mask_ops.MASK_THRESHOLD, tf.uint8)
    return served

  def label_map(self):
    return category_names(self.data.get("annotation_file"))


def _refuse_mask_arguments(task_name, values):
  """Raises ValueError for a mask-branch argument set on a task without masks.

  Args:
    task_name: the task class, named in the message.
    values: dict argument name (of MASK_ARGUMENTS) -> the value received.
  Raises:
    ValueError: naming each argument that differs from MaskRCNNTask's
      default, and where such a binding comes from.
  """
  defaults = inspect.signature(MaskRCNNTask.__init__).parameters
  changed = {name: value for name, value in values.items()
             if value != defaults[name].default}
  if changed:
    raise ValueError(
        f"{task_name} has no mask branch, but mask settings were given: "
        f"{changed} (gin bindings {task_name}.<name>, or MaskRCNNTask.<name>, "
        f"which gin applies to {task_name} where it binds nothing itself). "
        f"Remove them, or use MaskRCNNTask for instance masks.")


def _refuse_frcnn_arguments(task_name, box_head, values, separable):
  """Raises ValueError for Fast R-CNN head settings given with a box_head.

  Args:
    task_name: the task class, named in the message.
    box_head: the gin-bound builder (its name is given).
    values: dict argument name (of FRCNN_ARGUMENTS) -> the value received.
    separable: head_use_separable_conv; refused when the builder has no
      use_separable_conv argument (AutoHead has none).
  Raises:
    ValueError: naming each argument and the builder.
  """
  defaults = inspect.signature(MaskRCNNTask.__init__).parameters
  changed = {name: value for name, value in values.items()
             if value != defaults[name].default}
  name = getattr(box_head, "__name__", type(box_head).__name__)
  if changed:
    raise ValueError(
        f"{task_name}.box_head = @{name} replaces the Fast R-CNN head, but "
        f"its settings were given: {changed}. Remove them (the box head's "
        f"own arguments are bound as {name}.<argument>).")
  if separable and "use_separable_conv" not in inspect.signature(
      box_head).parameters:
    raise ValueError(
        f"{task_name}.head_use_separable_conv = True, but the box head "
        f"@{name} has no separable convs (no use_separable_conv argument); "
        "set it False or use the Fast R-CNN head.")


@registry.register_task
class FasterRCNNTask(MaskRCNNTask):
  """Faster R-CNN with FPN: MaskRCNNTask without the mask branch.

  The two-stage detector SP-NAS (Sec. 4.1) and Auto-FPN (Sec. 3.1, Sec.
  4.2) evaluate backbones and necks with: RPN, proposals, ROI sampling,
  ROI Align and the Fast R-CNN head exactly as Mask R-CNN's
  (modeling/models/maskrcnn.py with mask_head=None); box AP only, so the
  dataset needs no instances JSON (without one the ground truth comes from
  the records, as for RetinaNet); records with or without instance masks
  (the masks are not decoded).

  Args: those of MaskRCNNTask, less the mask ones (MASK_ARGUMENTS, which
  must keep their defaults). The FPN paper's layout (Lin et al. 2017, Sec.
  4.1 and 4.2): min_level=2, max_level=6, roi_min_level=2,
  roi_max_level=5, num_scales=1, anchor_size=8 (32..512-pixel anchors),
  frcnn_num_convs=0, frcnn_num_fcs=2, frcnn_fc_dims=1024. Auto-FPN's
  searched head instead: `FasterRCNNTask.box_head = @auto_head`
  (configs/search/auto_fpn_head_synthetic_coco.gin).

  gin: `experiment.task = @FasterRCNNTask()`; arguments are bound as
  `FasterRCNNTask.min_level = 2`. A MaskRCNNTask binding applies to a
  FasterRCNNTask argument that has no FasterRCNNTask binding (gin
  configures the inherited constructor under both names), so a protocol
  file's MaskRCNNTask.aug_scale_min reaches Faster R-CNN too.
  """

  include_mask = False
