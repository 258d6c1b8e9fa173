"""Batching rules every input pipeline follows (official/core/task.py contract).

Training batches are per replica and drop the remainder. Evaluation makes one
pass; its last batch is padded to full size (labels["valid"] marks padding),
padded per group of batches that one pipeline feeds its replicas in one step,
so every replica gets a full batch at every step.
"""

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def per_replica_batch(global_batch_size, input_context=None):
  """Returns (per-replica batch size, replicas fed by this pipeline).

  Raises:
    ValueError: when the per-replica batch size is not positive.
  """
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    replicas_per_pipeline = max(
        1, input_context.num_replicas_in_sync //
        input_context.num_input_pipelines)
  else:
    batch_size = int(global_batch_size)
    replicas_per_pipeline = 1
  if batch_size <= 0:
    raise ValueError(f"Batch size must be positive, got global_batch_size="
                     f"{global_batch_size} (per replica: {batch_size}).")
  return batch_size, replicas_per_pipeline


def map_with_example_seeds(dataset, parse_fn, seed=None):
  """dataset.map(parse_fn(element, example_seed)), one [2] seed per element.

  Each example gets its own stateless seed, so its augmentation does not
  depend on which parallel map call runs it (and is reproducible given
  `seed`).
  """
  seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
  return tf.data.Dataset.zip((dataset, seeds)).map(
      parse_fn, num_parallel_calls=tf.data.AUTOTUNE)


def batch_and_pad_eval(dataset, batch_size, replicas_per_pipeline, pad_fn):
  """Batches parsed (images, labels) for evaluation with static shapes.

  Args:
    dataset: parsed examples.
    batch_size: per-replica batch size.
    replicas_per_pipeline: replicas this pipeline feeds in one step.
    pad_fn: pad_fn(images, labels, size) -> (images, labels) padding a short
      batch to `size` and adding labels["valid"].
  """
  group_size = batch_size * replicas_per_pipeline
  dataset = dataset.batch(group_size, drop_remainder=False,
                          num_parallel_calls=AUTOTUNE)
  dataset = dataset.map(
      lambda images, labels: pad_fn(images, labels, group_size))
  if replicas_per_pipeline > 1:
    dataset = dataset.unbatch().batch(batch_size, drop_remainder=True)
  return dataset


def finish(dataset, training, seed=None, input_context=None):
  """Sets determinism and sharding options, then prefetches."""
  options = tf.data.Options()
  options.deterministic = (seed is not None) or not training
  if input_context is not None:
    # The readers shard by input context already.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
  return dataset.with_options(options).prefetch(AUTOTUNE)
