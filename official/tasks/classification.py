"""Image classification with SpineNet or ResNet backbones.

Loss: softmax cross-entropy with optional label smoothing
(modeling/losses/classification.py). Metrics:
top_1_accuracy and top_5_accuracy over the evaluation split (padding excluded).
"""

import gin
import numpy as np
import tensorflow as tf

from dataloaders import classification as classification_data
from dataloaders.datasets import digits
from modeling.losses.classification import classification_loss
from modeling.models.classifier import build_classifier
from official.core import registry
from official.core import task as task_lib


@gin.configurable
def classification_records(train_pattern=gin.REQUIRED,
                           eval_pattern=gin.REQUIRED,
                           num_train_examples=gin.REQUIRED,
                           num_eval_examples=gin.REQUIRED,
                           labels_file=None):
  """A classification dataset stored as TFRecords (image/encoded, image/class/label).

  labels_file: optional text file of class names, one per line in label
  order (scripts/create_imagenet_tf_record.py writes one); exports carry it.
  """
  return dict(train_pattern=train_pattern, eval_pattern=eval_pattern,
              num_train=num_train_examples, num_eval=num_eval_examples,
              labels_file=labels_file)


@gin.configurable
def tfds_classification(name=gin.REQUIRED, data_dir=gin.REQUIRED,
                        train_split="train", eval_split="validation",
                        num_train_examples=gin.REQUIRED,
                        num_eval_examples=gin.REQUIRED):
  """A TFDS image classification dataset already prepared in `data_dir`."""
  return dict(tfds_name=name, tfds_data_dir=data_dir,
              train_split=train_split, eval_split=eval_split,
              num_train=num_train_examples, num_eval=num_eval_examples)


@gin.configurable
def digits_records(data_dir="data/digits", search_holdout_fraction=None):
  """scikit-learn's handwritten digits as TFRecords, built on first use.

  search_holdout_fraction: when set, the architecture-search split instead
  (dataloaders/datasets/digits.py, ensure_digits_search_records): train on
  the training images minus this seeded share, evaluate on that share; the
  validation images are not used. Give it its own data_dir.
  """
  if search_holdout_fraction is not None:
    return digits.ensure_digits_search_records(data_dir,
                                               search_holdout_fraction)
  return digits.ensure_digits_records(data_dir)


class TopKEvaluator(task_lib.Evaluator):
  """Streaming top-1 / top-5 accuracy over valid examples."""

  def __init__(self, ks=(1, 5)):
    self.ks = ks
    self.reset()

  def reset(self):
    self.correct = {k: 0 for k in self.ks}
    self.count = 0

  def update(self, outputs):
    valid = np.asarray(outputs["valid"], bool)
    logits = np.asarray(outputs["logits"])[valid]
    labels = np.asarray(outputs["label"])[valid]
    self.count += len(labels)
    if not len(labels):
      return
    order = np.argsort(-logits, axis=-1)
    for k in self.ks:
      self.correct[k] += int(np.sum(np.any(order[:, :k] == labels[:, None],
                                           axis=-1)))

  def result(self):
    return {f"top_{k}_accuracy": self.correct[k] / max(self.count, 1)
            for k in self.ks}


@registry.register_task
class ClassificationTask(task_lib.DatasetTask):
  """Classifier training and evaluation.

  Args:
    backbone: gin-bound backbone builder (e.g. @spinenet, @resnet).
    num_classes: classifier outputs; labels are 0-based.
    data: callable returning the dataset dict (e.g. @digits_records,
      @classification_records, @tfds_classification).
    image_size: square training/eval crop side in pixels.
    label_smoothing: spreads this much probability over all classes.
    dropout_rate: dropout before the classifier.
    head_levels: backbone levels the head averages (None: all).
    aug_min_area: smallest inception-crop area fraction in training.
    random_flip: random horizontal flips in training.
    center_crop_fraction: eval centre crop, as a fraction of the short side.
    seed: makes the input pipeline deterministic.
  """

  def __init__(self, backbone=gin.REQUIRED, num_classes=gin.REQUIRED,
               data=gin.REQUIRED, image_size=224, label_smoothing=0.0,
               dropout_rate=0.0, head_levels=None, aug_min_area=0.08,
               random_flip=True, center_crop_fraction=0.875, seed=None):
    self.backbone_fn = backbone
    self.num_classes = num_classes
    self.data_fn = data
    self.image_size = image_size
    self.label_smoothing = label_smoothing
    self.dropout_rate = dropout_rate
    self.head_levels = head_levels
    self.seed = seed
    self.parser_kwargs = dict(aug_min_area=aug_min_area,
                              random_flip=random_flip,
                              center_crop_fraction=center_crop_fraction)

  def check_data(self, data):
    found = data.get("num_classes")
    if found is not None and found != self.num_classes:
      raise ValueError(f"The dataset has {found} classes but "
                       f"ClassificationTask.num_classes = {self.num_classes}.")

  def build_model(self):
    backbone = registry.build_backbone(
        self.backbone_fn, (self.image_size, self.image_size, 3))
    return build_classifier(backbone, self.num_classes, self.head_levels,
                            self.dropout_rate)

  def build_inputs(self, training, global_batch_size, input_context=None):
    data = self.data
    return classification_data.classification_dataset(
        file_pattern=self.record_pattern(training),
        training=training, global_batch_size=global_batch_size,
        output_size=self.image_size, num_classes=self.num_classes,
        input_context=input_context, seed=self.seed,
        tfds_name=data.get("tfds_name"),
        tfds_split=data.get("train_split" if training else "eval_split"),
        tfds_data_dir=data.get("tfds_data_dir"),
        num_eval_examples=data["num_eval"], parser_kwargs=self.parser_kwargs)

  def compute_losses(self, outputs, labels, global_batch_size):
    loss = classification_loss(outputs, labels["label"], self.num_classes,
                               global_batch_size, self.label_smoothing)
    return {"total_loss": loss, "cross_entropy_loss": loss}

  def eval_outputs(self, outputs, labels):
    return {"logits": tf.cast(outputs, tf.float32), "label": labels["label"],
            "valid": labels["valid"]}

  def build_evaluator(self):
    return TopKEvaluator(ks=(1, min(5, self.num_classes)))

  def serving_preprocess(self, image):
    """Evaluation preprocessing: centre crop, resize, normalise."""
    parser = classification_data.ClassificationParser(
        self.image_size, self.num_classes, training=False,
        center_crop_fraction=self.parser_kwargs["center_crop_fraction"])
    model_input, _ = parser({"image": image, "label": 0})
    return model_input, tf.zeros([4, 2], tf.float32)  # No geometry to undo.

  def serving_outputs(self, model, images, image_info=None, for_tflite=False):
    """logits and probabilities [B, C]; the top min(5, C) classes [B, k].

    Returns:
      logits float32 [B, C]; probabilities float32 [B, C] (softmax);
      top_k_classes int32 [B, k] and top_k_probabilities float32 [B, k],
      best first.
    """
    del image_info, for_tflite  # Nothing to map back; all ops are builtins.
    logits = tf.cast(model(images, training=False), tf.float32)
    probabilities = tf.nn.softmax(logits)
    top_probabilities, top_classes = tf.math.top_k(
        probabilities, k=min(5, self.num_classes))
    return {"logits": logits, "probabilities": probabilities,
            "top_k_classes": tf.cast(top_classes, tf.int32),
            "top_k_probabilities": top_probabilities}

  def label_map(self):
    """Class names from the dataset's labels file (one per line), if any."""
    path = self.data.get("labels_file")
    if not path or not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      names = [line.strip() for line in f if line.strip()]
    return dict(enumerate(names)) or None
