"""RetinaNet object detection (SpineNet final version §4.1, §5.1).

Model: backbone -> decoder -> RetinaNetHead. Loss: focal (alpha 0.25, gamma
1.5) + 50 x Huber (delta 0.1), normalised by the positives of the global batch
+ 1. Evaluation: post-processing on the accelerator, COCO AP on the host
(official/evaluation/coco_evaluator.py), boxes mapped back to original pixels.
"""

import json
import os
import subprocess
import sys

import gin
import tensorflow as tf
from absl import logging

from dataloaders import retinanet_input
from dataloaders.datasets import synthetic_coco
from modeling.heads.retinanet import RetinaNetHead
from modeling.losses import retinanet as retinanet_losses
from modeling.models.retinanet import build_retinanet
from modeling.ops import postprocess
from modeling.ops.anchors import Anchors
from official.core import registry
from official.core import task as task_lib
from official.evaluation.coco_evaluator import COCOEvaluator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@gin.configurable
def coco_records(train_pattern=gin.REQUIRED, eval_pattern=gin.REQUIRED,
                 num_train_examples=118287, num_eval_examples=5000,
                 annotation_file=None):
  """COCO-style detection TFRecords (scripts/create_coco_tf_record.py).

  annotation_file: the instances JSON of the eval split; when None the
  evaluator builds ground truth from the records.
  """
  return dict(train_pattern=train_pattern, eval_pattern=eval_pattern,
              num_train=num_train_examples, num_eval=num_eval_examples,
              annotation_file=annotation_file)


@gin.configurable
def synthetic_coco_records(data_dir="data/synthetic_coco", num_train=500,
                           num_val=100, num_shards=4, seed=0,
                           include_masks=False):
  """The synthetic COCO-format dataset, made and converted on first use.

  Images and instances JSON come from dataloaders/datasets/synthetic_coco.py;
  the records are written by scripts/create_coco_tf_record.py, exactly as for
  real COCO. Idempotent: existing records are reused, except that records
  written without masks are remade when include_masks asks for them
  (`--include_masks`: one PNG instance mask per object, for Mask R-CNN).
  """
  records = os.path.join(data_dir, "tfrecords")
  done = os.path.join(records, "DONE")
  remake = not tf.io.gfile.exists(done)
  if not remake and include_masks:
    with tf.io.gfile.GFile(done) as f:
      remake = "masks" not in f.read().split()
  if remake:
    logging.info("Making the synthetic COCO dataset in %s", data_dir)
    synthetic_coco.make_synthetic_coco(data_dir, num_train=num_train,
                                       num_val=num_val, seed=seed,
                                       overwrite=True)
    tf.io.gfile.makedirs(records)
    for split in ("train", "val"):
      command = [
          sys.executable,
          os.path.join(REPO_ROOT, "scripts", "create_coco_tf_record.py"),
          f"--image_dir={os.path.join(data_dir, split)}",
          "--object_annotations_file=" + os.path.join(
              data_dir, "annotations", f"instances_{split}.json"),
          f"--output_file_prefix={os.path.join(records, split)}",
          f"--num_shards={num_shards}", "--num_processes=1"]
      if include_masks:
        command.append("--include_masks")
      logging.info("Converting: %s", " ".join(command))
      subprocess.run(command, check=True)
    with tf.io.gfile.GFile(done, "w") as f:
      f.write(f"{num_train} {num_val} {seed}"
              f"{' masks' if include_masks else ''}\n")
  return dict(
      train_pattern=os.path.join(records, "train-*"),
      eval_pattern=os.path.join(records, "val-*"),
      num_train=num_train, num_eval=num_val,
      annotation_file=os.path.join(data_dir, "annotations",
                                   "instances_val.json"))


@registry.register_task
class RetinaNetTask(task_lib.DatasetTask):
  """RetinaNet training and COCO evaluation.

  Args:
    backbone: gin-bound backbone builder (@spinenet, @resnet).
    decoder: gin-bound decoder builder (@identity_decoder, @fpn) or None.
    data: callable returning the dataset dict (@coco_records,
      @synthetic_coco_records).
    num_classes: logits per anchor; class ids are COCO category ids, 0 is
      background (91 for COCO).
    image_size: square input side in pixels, a multiple of 2^max_level.
    min_level, max_level: feature levels the head predicts on.
    num_scales, aspect_ratios, anchor_size: anchors (SpineNet §5.1: anchor
      size 3 up to SpineNet-96, 4 from SpineNet-143).
    head_num_convs, head_num_filters, head_use_separable_conv: subnets.
    aug_scale_min, aug_scale_max: training scale jitter (protocol).
    max_num_instances: ground truths kept per image.
    focal_alpha, focal_gamma, huber_delta, box_loss_weight: the loss.
    pre_nms_top_k, score_threshold, nms_iou_threshold, max_detections,
      nms_method: post-processing ("batched" compiles under XLA / on TPU).
    seed: makes the input pipeline deterministic.
  """

  def __init__(self, backbone=gin.REQUIRED, decoder=None, data=gin.REQUIRED,
               num_classes=91, image_size=640, min_level=3, max_level=7,
               num_scales=3, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=3.0,
               head_num_convs=4, head_num_filters=256,
               head_use_separable_conv=False, aug_scale_min=1.0,
               aug_scale_max=1.0, max_num_instances=100, focal_alpha=0.25,
               focal_gamma=1.5, huber_delta=0.1, box_loss_weight=50.0,
               pre_nms_top_k=5000, score_threshold=0.05,
               nms_iou_threshold=0.5, max_detections=100,
               nms_method="combined", seed=None):
    self.backbone_fn = backbone
    self.decoder_fn = decoder
    self.data_fn = data
    self.num_classes = num_classes
    self.image_size = image_size
    self.min_level = min_level
    self.max_level = max_level
    self.num_scales = num_scales
    self.aspect_ratios = tuple(aspect_ratios)
    self.anchor_size = anchor_size
    self.head_num_convs = head_num_convs
    self.head_num_filters = head_num_filters
    self.head_use_separable_conv = head_use_separable_conv
    self.aug_scale_min = aug_scale_min
    self.aug_scale_max = aug_scale_max
    self.max_num_instances = max_num_instances
    self.loss_args = dict(alpha=focal_alpha, gamma=focal_gamma,
                          huber_delta=huber_delta,
                          box_loss_weight=box_loss_weight)
    self.postprocess_args = dict(
        pre_nms_top_k=pre_nms_top_k, score_threshold=score_threshold,
        nms_iou_threshold=nms_iou_threshold, max_detections=max_detections,
        nms_method=nms_method)
    self.seed = seed

  @property
  def anchors(self):
    return Anchors(self.min_level, self.max_level, self.num_scales,
                   self.aspect_ratios, self.anchor_size,
                   (self.image_size, self.image_size))

  def build_model(self):
    backbone, decoder = registry.multilevel_features(
        (self.image_size, self.image_size, 3), backbone=self.backbone_fn,
        decoder=self.decoder_fn)
    head = RetinaNetHead(
        min_level=self.min_level, max_level=self.max_level,
        num_classes=self.num_classes,
        num_anchors_per_location=len(self.aspect_ratios) * self.num_scales,
        num_convs=self.head_num_convs, num_filters=self.head_num_filters,
        use_separable_conv=self.head_use_separable_conv,
        **registry.norm_activation(), name="retinanet_head")
    return build_retinanet(backbone, decoder, head)

  def _parser(self, training):
    return retinanet_input.RetinaNetParser(
        output_size=self.image_size, min_level=self.min_level,
        max_level=self.max_level, num_scales=self.num_scales,
        aspect_ratios=self.aspect_ratios, anchor_size=self.anchor_size,
        num_classes=self.num_classes, training=training,
        aug_scale_min=self.aug_scale_min, aug_scale_max=self.aug_scale_max,
        max_num_instances=self.max_num_instances)

  def build_inputs(self, training, global_batch_size, input_context=None):
    pattern = self.record_pattern(training)
    return retinanet_input.retinanet_dataset(
        pattern, training, global_batch_size, self._parser(training),
        input_context=input_context, seed=self.seed,
        num_eval_examples=None if training else self.data["num_eval"])

  def compute_losses(self, outputs, labels, global_batch_size):
    del global_batch_size  # Normalised by the global number of positives.
    return retinanet_losses.retinanet_losses(
        outputs["cls_outputs"], outputs["box_outputs"], labels,
        self.num_classes, **self.loss_args)

  def detect(self, outputs, image_size=None, nms_method=None):
    """Post-processed detections in input pixels (see multilevel_detections).

    nms_method overrides the configured one ("tflite" for TFLite exports).
    """
    args = dict(self.postprocess_args)
    if nms_method is not None:
      args["nms_method"] = nms_method
    return postprocess.multilevel_detections(
        outputs["cls_outputs"], outputs["box_outputs"], self.anchors,
        image_size or (self.image_size, self.image_size),
        num_classes=self.num_classes, **args)

  def eval_outputs(self, outputs, labels):
    detections = self.detect(outputs)
    boxes = original_image_boxes(detections["boxes"], labels["image_info"])
    gt = labels["groundtruths"]
    return {
        "source_id": gt["source_id"],
        "detection_boxes": boxes,
        "detection_scores": detections["scores"],
        "detection_classes": detections["classes"],
        "num_detections": detections["num_detections"],
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
    return COCOEvaluator(annotation_file=self.data.get("annotation_file"))

  def serving_preprocess(self, image):
    return detection_serving_preprocess(self._parser(training=False), image)

  def serving_outputs(self, model, images, image_info=None, for_tflite=False):
    """Detections; boxes in original-image pixels (input pixels for TFLite).

    Returns:
      num_detections int32 [B]; detection_boxes float32 [B, N, 4] (ymin,
      xmin, ymax, xmax); detection_scores float32 [B, N]; detection_classes
      int32 [B, N] (0 = padding), N = max_detections.
    """
    detections = self.detect(model(images, training=False),
                             nms_method="tflite" if for_tflite else None)
    boxes = detections["boxes"]
    if image_info is not None:
      boxes = original_image_boxes(boxes, image_info,
                                   detections["num_detections"])
    return {"num_detections": detections["num_detections"],
            "detection_boxes": boxes,
            "detection_scores": detections["scores"],
            "detection_classes": detections["classes"]}

  def label_map(self):
    return category_names(self.data.get("annotation_file"))


def category_names(annotation_file):
  """{category id: name} of a COCO instances JSON; None when unavailable."""
  if not annotation_file or not tf.io.gfile.exists(annotation_file):
    return None
  with tf.io.gfile.GFile(annotation_file) as f:
    categories = json.load(f).get("categories", [])
  return {int(c["id"]): str(c["name"]) for c in categories} or None


def detection_serving_preprocess(parser, image):
  """An evaluation parser's geometry for one image with no ground truth.

  Args:
    parser: a RetinaNetParser (or subclass) built with training=False.
    image: uint8 [h, w, 3].
  Returns:
    (model input float32 [S, S, 3], image_info float32 [4, 2]): long side
    resized to S, padded square (dataloaders/retinanet_input.py).
  """
  out = parser.transform({"image": image,
                          "groundtruth_boxes": tf.zeros([0, 4], tf.float32),
                          "groundtruth_classes": tf.zeros([0], tf.int32)})
  return out["image"], out["image_info"]


def original_image_boxes(boxes, image_info, num_detections=None):
  """Maps boxes from model-input pixels back to the original image.

  Args:
    boxes: float32 [B, N, 4] (ymin, xmin, ymax, xmax), model-input pixels.
    image_info: float32 [B, 4, 2] (dataloaders/retinanet_input.py layout).
    num_detections: optional int32 [B]; rows from it on are set to 0.
  Returns:
    float32 [B, N, 4], original-image pixels, clipped to the image.
  """
  scale = tf.tile(image_info[:, 2:3, :], [1, 1, 2])  # [B, 1, 4]: y, x, y, x.
  offset = tf.tile(image_info[:, 3:4, :], [1, 1, 2])
  original = tf.tile(image_info[:, 0:1, :], [1, 1, 2])
  boxes = tf.clip_by_value((boxes + offset) / scale, 0.0, original)
  if num_detections is not None:
    keep = tf.range(tf.shape(boxes)[1])[None, :] < num_detections[:, None]
    boxes = tf.where(keep[..., None], boxes, 0.0)
  return boxes
