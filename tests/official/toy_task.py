"""A tiny Task for the trainer's tests: 8x8 images, 3 classes, seconds to train.

Data: fixed synthetic images [8, 8, num_classes] drawn from N(0, 1), with the
channel of the label raised by `signal` (so a conv + global-average-pool +
dense model learns it and the loss goes down). The model is Conv2D ->
BatchNormalization (synchronized by default) -> ReLU -> global average pool
-> Dense (float32 logits).

Gin switch for the NaN test: `ToyTask.nan_at_step = k` makes the loss NaN from
global step k (0-based) on.
"""

import time

import gin
import keras
import numpy as np
import tensorflow as tf

from official.core import task as task_lib


class AccuracyEvaluator(task_lib.Evaluator):
  """Streaming accuracy over examples whose "valid" flag is True."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.correct = 0
    self.count = 0

  def update(self, outputs):
    valid = np.asarray(outputs["valid"], bool)
    self.correct += int(np.sum((np.asarray(outputs["prediction"]) ==
                                np.asarray(outputs["label"]))[valid]))
    self.count += int(np.sum(valid))

  def result(self):
    return {"accuracy": self.correct / max(self.count, 1),
            "num_examples": float(self.count)}


@gin.configurable
class ToyTask(task_lib.Task):
  """Classifies which channel of an 8x8 image carries the signal.

  Args:
    num_train_examples: training examples (one epoch).
    num_eval_examples: evaluation examples (the last batch is padded).
    num_classes: classes = image channels.
    filters: conv filters.
    synchronized_bn: BatchNormalization(synchronized=...).
    signal: added to the label's channel.
    nan_at_step: when set, the loss is NaN from this 0-based global step on.
    shuffle: shuffle the training examples each epoch (seeded by `seed`).
    seed: shuffle seed (the trainer sets it in deterministic mode).
    input_delay_secs: sleep per training batch (slows a run down so that a
      test can kill it mid-way).
    overflow_replica: on this replica the loss is multiplied by 1e8, so that
      float16 gradients overflow there only (loss-scaling test).
  """

  def __init__(self, num_train_examples=64, num_eval_examples=20,
               num_classes=3, filters=8, synchronized_bn=True, signal=1.0,
               nan_at_step=None, shuffle=True, seed=None,
               input_delay_secs=0.0, overflow_replica=None):
    self.num_train_examples = num_train_examples
    self.num_eval_examples = num_eval_examples
    self.num_classes = num_classes
    self.filters = filters
    self.synchronized_bn = synchronized_bn
    self.signal = signal
    self.nan_at_step = nan_at_step
    self.shuffle = shuffle
    self.seed = seed
    self.input_delay_secs = input_delay_secs
    self.overflow_replica = overflow_replica

  def arrays(self, training):
    """images float32 [N, 8, 8, C], labels int32 [N]; fixed per split."""
    rng = np.random.RandomState(0 if training else 1)
    n = self.num_train_examples if training else self.num_eval_examples
    labels = rng.randint(0, self.num_classes, size=n).astype(np.int32)
    images = rng.normal(size=(n, 8, 8, self.num_classes)).astype(np.float32)
    images[np.arange(n), :, :, labels] += self.signal
    return images, labels

  def build_model(self):
    inputs = keras.Input((8, 8, self.num_classes), name="images")
    x = keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=False,
                            name="conv")(inputs)
    x = keras.layers.BatchNormalization(synchronized=self.synchronized_bn,
                                        name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(self.num_classes, dtype="float32",
                                 name="logits")(x)
    return keras.Model(inputs, outputs, name="toy")

  def build_inputs(self, training, global_batch_size, input_context=None):
    batch = global_batch_size
    pipelines, pipeline_id, per_pipeline = 1, 0, 1
    if input_context is not None:
      batch = input_context.get_per_replica_batch_size(global_batch_size)
      pipelines = input_context.num_input_pipelines
      pipeline_id = input_context.input_pipeline_id
      per_pipeline = max(1, input_context.num_replicas_in_sync // pipelines)
    images, labels = self.arrays(training)
    if not training:
      padded = -(-len(labels) // batch) * batch
      valid = np.arange(padded) < len(labels)
      images = np.concatenate(
          [images, np.zeros((padded - len(labels),) + images.shape[1:],
                            np.float32)])
      labels = np.concatenate(
          [labels, np.zeros(padded - len(labels), np.int32)])
      dataset = tf.data.Dataset.from_tensor_slices(
          (images, {"label": labels, "valid": valid}))
      return dataset.batch(batch, drop_remainder=True).shard(pipelines,
                                                              pipeline_id)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if pipelines > 1:
      dataset = dataset.shard(pipelines, pipeline_id)
    if self.shuffle:
      dataset = dataset.shuffle(len(labels), seed=self.seed,
                                reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch, drop_remainder=True).enumerate()
    nan_at = -1 if self.nan_at_step is None else self.nan_at_step

    def to_pair(index, example):
      step = index // per_pipeline
      poison = tf.logical_and(nan_at >= 0, step >= nan_at)
      return example[0], {"label": example[1], "poison": poison}

    dataset = dataset.map(to_pair)
    if self.input_delay_secs:
      delay = self.input_delay_secs

      def slow(images, labels):
        done = tf.py_function(lambda: time.sleep(delay) or True, [], tf.bool)
        with tf.control_dependencies([done]):
          return tf.identity(images), labels

      dataset = dataset.map(slow)
    return dataset.prefetch(2)

  def compute_losses(self, outputs, labels, global_batch_size):
    logits = tf.cast(outputs, tf.float32)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels["label"], logits)
    loss = tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)
    if self.overflow_replica is not None:
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      loss *= tf.where(tf.equal(replica, self.overflow_replica), 1e8, 1.0)
    if "poison" in labels:
      # A NaN factor (not a replaced value): the gradients become NaN too.
      loss = loss * tf.where(labels["poison"], np.nan, 1.0)
    return {"total_loss": loss, "cross_entropy": loss}

  def eval_outputs(self, outputs, labels):
    return {"prediction": tf.argmax(outputs, axis=-1, output_type=tf.int32),
            "label": labels["label"], "valid": labels["valid"]}

  def build_evaluator(self):
    return AccuracyEvaluator()
