"""Semantic segmentation (Eff-SpineNet paper Sec. 4.3 and 5.3).

Model: backbone -> decoder -> SegmentationHead (P3..P7 averaged at output
stride 8, separable convs, pixel classifier) -> logits bilinearly upsampled
to the input size. Loss: softmax cross-entropy over the pixels whose label
is not ignore_label, the mean over the valid pixels of the *global* batch
(modeling/losses/segmentation.py). Evaluation: per-image
confusion matrices on the accelerator, mIoU and per-class IoU on the host
(official/evaluation/miou_evaluator.py).

The paper fine-tunes from COCO detection checkpoints; the trainer does that
with `Trainer.init_checkpoint` (official/core/trainer.py), which restores the
backbone of a RetinaNet built with the same backbone config.
"""

import os

import gin
import tensorflow as tf
from absl import logging

from dataloaders import segmentation_input
from dataloaders.datasets import pascal_records as pascal_lib
from dataloaders.datasets import synthetic_pascal
from modeling.heads.segmentation import SegmentationHead
from modeling.losses.segmentation import segmentation_loss
from modeling.models.segmentation import build_segmenter
from official.core import registry
from official.core import task as task_lib
from official.evaluation import miou_evaluator


@gin.configurable
def pascal_records(train_pattern=gin.REQUIRED, eval_pattern=gin.REQUIRED,
                   num_train_examples=10582, num_eval_examples=1449):
  """PASCAL VOC 2012 records (scripts/create_pascal_tf_record.py).

  Defaults: the SBD-augmented train set and VOC 2012 val.
  """
  return dict(train_pattern=train_pattern, eval_pattern=eval_pattern,
              num_train=num_train_examples, num_eval=num_eval_examples,
              num_classes=len(pascal_lib.VOC_CLASSES),
              class_names=list(pascal_lib.VOC_CLASSES))


@gin.configurable
def synthetic_pascal_records(data_dir="data/synthetic_pascal", num_train=400,
                             num_val=100, num_classes=4, num_shards=4, seed=0):
  """The synthetic PASCAL-layout dataset, made and converted on first use.

  Images and palette label maps come from
  dataloaders/datasets/synthetic_pascal.py; the records are written by
  dataloaders.datasets.pascal_records.convert_pascal, the converter of
  scripts/create_pascal_tf_record.py, exactly as for real VOC (in this
  process: a subprocess per split would cost a TensorFlow start-up each).
  Idempotent: existing records are reused when they were made with the same
  arguments.
  """
  records = os.path.join(data_dir, "tfrecords")
  done = os.path.join(records, "DONE")
  stamp = f"{num_train} {num_val} {num_classes} {num_shards} {seed}\n"
  made = None
  if tf.io.gfile.exists(done):
    with tf.io.gfile.GFile(done, "r") as f:
      made = f.read()
  if made != stamp:
    logging.info("Making the synthetic PASCAL dataset in %s", data_dir)
    synthetic_pascal.make_synthetic_pascal(
        data_dir, num_train=num_train, num_val=num_val,
        num_classes=num_classes, seed=seed, overwrite=True)
    if tf.io.gfile.exists(records):
      tf.io.gfile.rmtree(records)
    for split in ("train", "val"):
      summary = pascal_lib.convert_pascal(
          data_dir, split, os.path.join(records, split),
          num_shards=num_shards, num_classes=num_classes, num_processes=1,
          show_progress=False)
      logging.info("%s", pascal_lib.format_summary(summary))
    with tf.io.gfile.GFile(done, "w") as f:
      f.write(stamp)
  return dict(
      train_pattern=os.path.join(records, "train-*"),
      eval_pattern=os.path.join(records, "val-*"),
      num_train=num_train, num_eval=num_val, num_classes=num_classes,
      class_names=list(synthetic_pascal.class_names(num_classes)))


@registry.register_task
class SegmentationTask(task_lib.DatasetTask):
  """Semantic segmentation training and mIoU evaluation.

  Args:
    backbone: gin-bound backbone builder (@eff_spinenet, @spinenet, ...).
    decoder: gin-bound decoder builder (@identity_decoder, @fpn) or None.
    data: callable returning the dataset dict (@pascal_records,
      @synthetic_pascal_records).
    num_classes: classes including background (PASCAL VOC: 21).
    image_size: square input side in pixels (crops in training; the paper
      uses 512 for every Eff-SpineNet model).
    min_level, max_level: levels the head averages.
    head_num_convs, head_num_filters, head_use_separable_conv: the convs
      before the pixel classifier (paper: those of the detection subnets).
    aug_scale_min, aug_scale_max: training scale jitter.
    random_flip: random horizontal flips in training.
    ignore_label: label id of unlabelled pixels (VOC: 255).
    seed: makes the input pipeline deterministic.
  """

  def __init__(self, backbone=gin.REQUIRED, decoder=None, data=gin.REQUIRED,
               num_classes=21, image_size=512, min_level=3, max_level=7,
               head_num_convs=3, head_num_filters=64,
               head_use_separable_conv=True, aug_scale_min=0.5,
               aug_scale_max=2.0, random_flip=True, ignore_label=255,
               seed=None):
    self.backbone_fn = backbone
    self.decoder_fn = decoder
    self.data_fn = data
    self.num_classes = int(num_classes)
    self.image_size = image_size
    self.min_level = min_level
    self.max_level = max_level
    self.head_num_convs = head_num_convs
    self.head_num_filters = head_num_filters
    self.head_use_separable_conv = head_use_separable_conv
    self.aug_scale_min = aug_scale_min
    self.aug_scale_max = aug_scale_max
    self.random_flip = random_flip
    self.ignore_label = int(ignore_label)
    self.seed = seed

  def check_data(self, data):
    found = data.get("num_classes")
    if found is not None and found != self.num_classes:
      raise ValueError(f"The dataset has {found} classes but "
                       f"SegmentationTask.num_classes = {self.num_classes}.")

  def build_model(self):
    backbone, decoder = registry.multilevel_features(
        (self.image_size, self.image_size, 3), backbone=self.backbone_fn,
        decoder=self.decoder_fn)
    head = SegmentationHead(
        num_classes=self.num_classes, min_level=self.min_level,
        max_level=self.max_level, num_convs=self.head_num_convs,
        num_filters=self.head_num_filters,
        use_separable_conv=self.head_use_separable_conv,
        **registry.norm_activation(), name="segmentation_head")
    return build_segmenter(backbone, decoder, head)

  def _parser(self, training):
    return segmentation_input.SegmentationParser(
        output_size=self.image_size, num_classes=self.num_classes,
        training=training, aug_scale_min=self.aug_scale_min,
        aug_scale_max=self.aug_scale_max, random_flip=self.random_flip,
        ignore_label=self.ignore_label)

  def build_inputs(self, training, global_batch_size, input_context=None):
    pattern = self.record_pattern(training)
    return segmentation_input.segmentation_dataset(
        pattern, training, global_batch_size, self._parser(training),
        input_context=input_context, seed=self.seed,
        num_eval_examples=None if training else self.data["num_eval"])

  def compute_losses(self, outputs, labels, global_batch_size):
    del global_batch_size  # Normalised by the global number of valid pixels.
    loss = segmentation_loss(outputs, labels["label"], self.num_classes,
                             self.ignore_label)
    return {"total_loss": loss, "cross_entropy_loss": loss}

  def eval_outputs(self, outputs, labels):
    predictions = tf.argmax(outputs, axis=-1, output_type=tf.int32)
    return {
        "confusion_matrix": miou_evaluator.batch_confusion_matrices(
            predictions, labels["label"], self.num_classes,
            self.ignore_label),
        "valid": labels["valid"],
    }

  def build_evaluator(self):
    return miou_evaluator.MIoUEvaluator(
        self.num_classes, self.ignore_label,
        class_names=self.data.get("class_names"))

  def serving_preprocess(self, image):
    """Evaluation preprocessing: long side to image_size, padded square."""
    shape = tf.shape(image)
    unlabelled = tf.fill([shape[0], shape[1], 1],
                         tf.cast(self.ignore_label, tf.uint8))
    out = self._parser(training=False).transform(
        {"image": image, "label": unlabelled})
    return out["image"], out["image_info"]

  def serving_outputs(self, model, images, image_info=None, for_tflite=False):
    """Per-pixel classes of the model input, and how to map them back.

    Returns:
      class_map int32 [B, S, S]: the class of each model-input pixel; the
        image occupies the top-left image_info[:, 1] (scaled height, width)
        pixels, the rest is padding. probabilities float32 [B, S, S, C].
      image_info float32 [B, 4, 2] (dataloaders/segmentation_input.py), when
        given: resize class_map[:h, :w] to image_info[:, 0] for original
        pixels.
    """
    del for_tflite  # All ops are TFLite builtins.
    probabilities = tf.nn.softmax(tf.cast(model(images, training=False),
                                          tf.float32))
    outputs = {"class_map": tf.argmax(probabilities, -1, output_type=tf.int32),
               "probabilities": probabilities}
    if image_info is not None:
      outputs["image_info"] = image_info
    return outputs

  def label_map(self):
    names = self.data.get("class_names")
    return dict(enumerate(names)) if names else None

