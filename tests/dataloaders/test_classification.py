"""Tests of dataloaders.classification (decoder, parser, dataset)."""

import numpy as np
import pytest
import tensorflow as tf

from dataloaders import classification
from tests.dataloaders import helpers


@pytest.mark.parametrize("image_format,channels", [
    ("jpeg", 3), ("png", 3), ("png", 1), ("jpeg", 1)])
def test_decode_gives_three_channels(image_format, channels):
  rng = np.random.default_rng(0)
  array = helpers.random_image(rng, 9, 7, channels)
  serialized = helpers.make_example(
      helpers.encode_image(array, image_format), 4)
  decoded = classification.decode_classification_example(
      tf.constant(serialized))
  assert decoded["image"].dtype == tf.uint8
  assert decoded["image"].shape.as_list() == [9, 7, 3]
  assert decoded["label"].dtype == tf.int32
  assert int(decoded["label"]) == 4
  if image_format == "png":  # Lossless: the pixels come back.
    expected = array if channels == 3 else np.repeat(array[..., None], 3, -1)
    np.testing.assert_array_equal(decoded["image"].numpy(), expected)


def _constant_image(height, width, value=(10, 200, 90)):
  return tf.constant(np.broadcast_to(np.array(value, np.uint8),
                                     (height, width, 3)))


@pytest.mark.parametrize("training", [True, False])
def test_parser_shapes_dtypes_normalisation(training):
  parser = classification.ClassificationParser(
      output_size=24, num_classes=5, training=training)
  # A constant image stays constant through any crop, flip and resize.
  image, label = parser({"image": _constant_image(40, 60),
                         "label": tf.constant(3, tf.int64)})
  assert image.shape.as_list() == [24, 24, 3]
  assert image.dtype == tf.float32
  assert label.dtype == tf.int32 and int(label) == 3
  expected = (np.array([10, 200, 90]) - np.array(parser.mean)) / np.array(
      parser.std)
  np.testing.assert_allclose(image.numpy(), np.broadcast_to(
      expected, (24, 24, 3)), rtol=1e-5, atol=1e-5)


def test_eval_centre_crop_and_train_randomness():
  # Left half 0, right half 255: the eval centre crop of a wide image keeps
  # the middle, so both halves appear, split down the middle.
  array = np.zeros((20, 40, 3), np.uint8)
  array[:, 20:] = 255
  decoded = {"image": tf.constant(array), "label": tf.constant(0)}
  parser = classification.ClassificationParser(
      8, 2, training=False, mean=(0, 0, 0), std=(1, 1, 1),
      center_crop_fraction=1.0)
  image = parser(decoded)[0].numpy()
  assert image[:, :3].max() == 0 and image[:, 5:].min() == 255

  train = classification.ClassificationParser(8, 2, training=True)
  first = train(decoded, seed=tf.constant([1, 2]))[0].numpy()
  again = train(decoded, seed=tf.constant([1, 2]))[0].numpy()
  np.testing.assert_array_equal(first, again)  # Stateless: seed decides.
  others = [train(decoded, seed=tf.constant([s, 0]))[0].numpy()
            for s in range(3, 10)]
  assert any(not np.array_equal(first, o) for o in others)


def test_label_out_of_range_names_label():
  parser = classification.ClassificationParser(8, num_classes=10,
                                               training=False)
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    parser({"image": _constant_image(8, 8), "label": tf.constant(12)})
  message = str(info.value)
  assert "12" in message and "num_classes" in message and "10" in message

  # The same inside a tf.data pipeline.
  dataset = tf.data.Dataset.from_tensors(
      {"image": _constant_image(8, 8), "label": tf.constant(-1)}).map(parser)
  with pytest.raises(tf.errors.InvalidArgumentError, match="-1"):
    list(dataset)


def test_eval_dataset_pads_last_batch(tmp_path):
  pattern = helpers.write_records(str(tmp_path), num_files=2,
                                  num_examples=10, num_classes=3)
  dataset = classification.classification_dataset(
      pattern, training=False, global_batch_size=4, output_size=16,
      num_classes=3)
  images_spec, labels_spec = dataset.element_spec
  assert images_spec.shape.as_list() == [4, 16, 16, 3]
  assert labels_spec["label"].shape.as_list() == [4]
  assert labels_spec["valid"].dtype == tf.bool
  batches = list(dataset.as_numpy_iterator())
  assert len(batches) == 3
  valid = np.concatenate([labels["valid"] for _, labels in batches])
  assert valid.sum() == 10
  assert valid.tolist() == [True] * 10 + [False] * 2
  images, labels = batches[-1]
  assert (images[2:] == 0).all() and (labels["label"][2:] == 0).all()
  all_labels = np.concatenate([labels["label"] for _, labels in batches])
  assert sorted(all_labels[:10].tolist()) == sorted(i % 3 for i in range(10))


def test_eval_dataset_pads_to_whole_steps_per_pipeline(tmp_path):
  pattern = helpers.write_records(str(tmp_path), num_files=1,
                                  num_examples=10)
  # One pipeline feeding 2 replicas: batch 2 per replica, and an even
  # number of batches so that every step gives both replicas a batch.
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  dataset = classification.classification_dataset(
      pattern, training=False, global_batch_size=4, output_size=8,
      num_classes=3, input_context=context)
  batches = list(dataset.as_numpy_iterator())
  assert dataset.element_spec[0].shape.as_list() == [2, 8, 8, 3]
  assert len(batches) == 6
  assert sum(labels["valid"].sum() for _, labels in batches) == 10


def test_train_dataset_batches_and_repeats(tmp_path):
  pattern = helpers.write_records(str(tmp_path), num_files=2,
                                  num_examples=6)
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  def make():
    return classification.classification_dataset(
        pattern, training=True, global_batch_size=8, output_size=16,
        num_classes=3, input_context=context, seed=7)
  dataset = make()
  images_spec, labels_spec = dataset.element_spec
  assert images_spec.shape.as_list() == [4, 16, 16, 3]  # Per replica.
  assert images_spec.dtype == tf.float32
  assert set(labels_spec) == {"label"}
  assert labels_spec["label"].shape.as_list() == [4]
  batches = list(dataset.take(5).as_numpy_iterator())  # 20 > 6: repeats.
  assert len(batches) == 5
  # Seeded: the same batches again.
  again = list(make().take(5).as_numpy_iterator())
  for (a, la), (b, lb) in zip(batches, again):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la["label"], lb["label"])


def test_num_eval_examples_limits_evaluation(tmp_path):
  pattern = helpers.write_records(str(tmp_path), num_files=1,
                                  num_examples=10)
  dataset = classification.classification_dataset(
      pattern, training=False, global_batch_size=4, output_size=8,
      num_classes=3, num_eval_examples=5)
  batches = list(dataset.as_numpy_iterator())
  assert len(batches) == 2
  assert sum(labels["valid"].sum() for _, labels in batches) == 5
