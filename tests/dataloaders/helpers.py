"""Small generated images and records shared by the dataloader tests."""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image


def encode_image(array, image_format):
  """Encodes uint8 [h, w] or [h, w, 3] as "jpeg" or "png" bytes."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=image_format.upper())
  return buffer.getvalue()


def random_image(rng, height, width, channels=3):
  shape = (height, width) if channels == 1 else (height, width, channels)
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def make_example(encoded, label, index=None):
  """Serialized classification tf.Example; `index` is stored for tests."""
  feature = {
      "image/encoded": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[encoded])),
      "image/class/label": tf.train.Feature(
          int64_list=tf.train.Int64List(value=[label])),
  }
  if index is not None:
    feature["test/index"] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[index]))
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def write_records(directory, num_files, num_examples, num_classes=3,
                  size=(12, 16), prefix="data"):
  """Writes num_examples small PNG examples round-robin over num_files files.

  Returns:
    The glob pattern of the files.
  """
  rng = np.random.default_rng(0)
  writers = [
      tf.io.TFRecordWriter(
          os.path.join(directory, f"{prefix}-{i:05d}-of-{num_files:05d}"))
      for i in range(num_files)]
  for index in range(num_examples):
    encoded = encode_image(random_image(rng, *size), "png")
    writers[index % num_files].write(
        make_example(encoded, index % num_classes, index))
  for writer in writers:
    writer.close()
  return os.path.join(directory, f"{prefix}-*")


def record_indices(dataset):
  """The test/index of every serialized example of a finite dataset."""
  spec = {"test/index": tf.io.FixedLenFeature([], tf.int64)}
  return [int(tf.io.parse_single_example(s, spec)["test/index"])
          for s in dataset]
