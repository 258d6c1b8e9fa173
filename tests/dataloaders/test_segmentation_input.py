"""Segmentation input: decoder, parser (image and label aligned), batches."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dataloaders import segmentation_input
from dataloaders.classification import IMAGENET_MEAN_RGB
from dataloaders.classification import IMAGENET_STDDEV_RGB
from tests.dataloaders import helpers

MEAN = np.array(IMAGENET_MEAN_RGB, np.float32)
STD = np.array(IMAGENET_STDDEV_RGB, np.float32)
# Saturated colours of classes 0..2, far apart so a resized pixel's nearest
# colour is its class unless it mixes two classes.
COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230]], np.uint8)


def pixels(image):
  """Un-normalises a parser output back to 0..255 pixels."""
  return np.asarray(image) * STD + MEAN


def coordinate_example(height, width):
  """Image whose pixel (r, c) is (r, 2c, 7); label (r // 8 + c // 8) % 3.

  Every 16th row of the label is 255 (ignored), which must travel too.
  """
  rows, cols = np.mgrid[0:height, 0:width]
  image = np.stack([rows, 2 * cols, np.full_like(rows, 7)], -1)
  label = (rows // 8 + cols // 8) % 3
  label[rows % 16 == 5] = 255
  return image.astype(np.uint8), label.astype(np.uint8)[..., None]


def expected_label(row, col):
  label = (row // 8 + col // 8) % 3
  return np.where(row % 16 == 5, 255, label)


def test_crop_and_flip_keep_label_aligned_and_pad_with_255():
  # Scale 2.0 of 64 gives a long side of 128: the 128 x 40 image is not
  # resized, so every kept pixel can be traced back exactly.
  image, label = coordinate_example(128, 40)
  parser = segmentation_input.SegmentationParser(
      64, num_classes=3, training=True, aug_scale_min=2.0, aug_scale_max=2.0)
  decoded = {"image": tf.constant(image), "label": tf.constant(label),
             "source_id": tf.constant("coords")}
  flips, offsets = set(), set()
  for seed in range(12):
    out = parser.transform(decoded, tf.constant([seed, 7]))
    assert out["image"].shape == (64, 64, 3) and out["label"].shape == (64, 64)
    assert out["label"].dtype == tf.int32
    values = pixels(out["image"])
    got = out["label"].numpy()
    # Columns 40..63 are padding: image 0 (the mean colour), label 255.
    np.testing.assert_allclose(out["image"][:, 40:], 0.0)
    assert np.all(got[:, 40:] == 255)
    row = np.rint(values[:, :40, 0]).astype(int)
    col = np.rint(values[:, :40, 1] / 2).astype(int)
    np.testing.assert_allclose(values[:, :40, 2], 7, atol=1e-3)
    np.testing.assert_array_equal(got[:, :40], expected_label(row, col))
    flips.add(bool(col[0, 0] > col[0, -1]))
    offsets.add(int(row[0, 0]))
    info = out["image_info"].numpy()
    np.testing.assert_allclose(info[:3], [[128, 40], [128, 40], [1, 1]])
    assert info[3, 0] == row[0, 0] and info[3, 1] == 0
  assert flips == {True, False}
  assert len(offsets) > 3


def blocks_example(rng, height, width):
  """Image of 12-pixel blocks coloured by class, and its label map."""
  grid = rng.integers(0, 3, size=(height // 12 + 1, width // 12 + 1))
  label = np.kron(grid, np.ones((12, 12), int))[:height, :width]
  return COLOURS[label], label.astype(np.uint8)


def test_label_follows_resized_pixels():
  rng = np.random.default_rng(0)
  image, label = blocks_example(rng, 90, 150)
  parser = segmentation_input.SegmentationParser(
      96, num_classes=3, training=True, aug_scale_min=0.8, aug_scale_max=1.8)
  for seed in range(6):
    out = parser.transform({"image": tf.constant(image),
                            "label": tf.constant(label)},
                           tf.constant([seed, 1]))
    got = out["label"].numpy()
    kept = got != 255
    assert kept.mean() > 0.2
    colour = pixels(out["image"])[kept]
    nearest = np.argmin(
        ((colour[:, None, :] - COLOURS[None].astype(np.float32)) ** 2).sum(-1),
        axis=1)
    # Only pixels on a block edge mix two colours.
    assert np.mean(nearest == got[kept]) > 0.95


def test_eval_resizes_long_side_top_left_and_pads_with_255():
  image, label = coordinate_example(40, 80)
  parser = segmentation_input.SegmentationParser(128, num_classes=3,
                                                 training=False)
  out = parser.transform({"image": tf.constant(image),
                          "label": tf.constant(label)})
  got = out["label"].numpy()
  assert np.all(got[64:] == 255)  # The 64 x 128 image, then padding.
  # Nearest-neighbour x1.6: output pixel (i, j) holds source (i / 1.6, j / 1.6).
  i, j = np.mgrid[0:64, 0:128]
  np.testing.assert_array_equal(
      got[:64], expected_label(((i + 0.5) / 1.6).astype(int),
                               ((j + 0.5) / 1.6).astype(int)))
  np.testing.assert_allclose(out["image_info"].numpy(),
                             [[40, 80], [64, 128], [1.6, 1.6], [0, 0]])
  again = parser.transform({"image": tf.constant(image),
                            "label": tf.constant(label)})
  np.testing.assert_array_equal(again["label"], got)


def write_records(directory, sizes, num_classes=3, bad=None):
  """Segmentation records of blocky images; returns the glob pattern."""
  rng = np.random.default_rng(1)
  path = os.path.join(directory, "seg-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for index, (height, width) in enumerate(sizes):
      image, label = blocks_example(rng, height, width)
      label = label % num_classes
      if bad == "size" and index == 1:
        label = label[:-2]
      if bad == "value" and index == 1:
        label[3, 3] = 9
      feature = {
          "image/encoded": helpers.encode_image(image, "jpeg"),
          "image/segmentation/class/encoded": helpers.encode_image(label,
                                                                  "png"),
          "image/source_id": f"image_{index}".encode(),
      }
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
          for k, v in feature.items()})).SerializeToString())
  return os.path.join(directory, "seg-*")


def test_eval_dataset_pads_the_last_batch(tmp_path):
  pattern = write_records(str(tmp_path), [(40, 60), (64, 50), (30, 30),
                                          (70, 70), (20, 64)])
  dataset = segmentation_input.segmentation_dataset(
      pattern, False, 3, dict(output_size=64, num_classes=3))
  batches = list(dataset)
  assert len(batches) == 2
  images, labels = batches[1]
  assert images.shape == (3, 64, 64, 3) and labels["label"].shape == (3, 64,
                                                                      64)
  assert labels["valid"].numpy().tolist() == [True, True, False]
  assert np.all(labels["label"][2].numpy() == 255)
  assert np.all(images[2].numpy() == 0)
  assert labels["image_info"].shape == (3, 4, 2)


def test_train_dataset_static_shapes_and_seeded(tmp_path):
  pattern = write_records(str(tmp_path), [(40, 60), (64, 50), (30, 30)])
  parser = dict(output_size=32, num_classes=3, aug_scale_min=0.5,
                aug_scale_max=2.0)
  def first(seed):
    dataset = segmentation_input.segmentation_dataset(pattern, True, 2,
                                                      parser, seed=seed)
    return next(iter(dataset))
  images, labels = first(3)
  assert images.shape == (2, 32, 32, 3) and labels["label"].shape == (2, 32,
                                                                      32)
  again_images, again_labels = first(3)
  np.testing.assert_array_equal(images, again_images)
  np.testing.assert_array_equal(labels["label"], again_labels["label"])


@pytest.mark.parametrize("bad,message", [
    ("size", "source_id.*image_1.*label map of"),
    ("value", "source_id.*image_1.*class id.*9.*num_classes ="),
])
def test_bad_records_name_the_source_id(tmp_path, bad, message):
  pattern = write_records(str(tmp_path), [(40, 60), (64, 50)], bad=bad)
  dataset = segmentation_input.segmentation_dataset(
      pattern, False, 2, dict(output_size=64, num_classes=3))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    list(dataset)


def test_parser_argument_errors():
  with pytest.raises(ValueError, match=r"ignore_label=2 must lie in "
                     r"\[num_classes, 255\] = \[3, 255\]"):
    segmentation_input.SegmentationParser(64, 3, True, ignore_label=2)
  with pytest.raises(ValueError, match="aug_scale_min <= aug_scale_max"):
    segmentation_input.SegmentationParser(64, 3, True, aug_scale_min=2.0,
                                          aug_scale_max=1.0)
  with pytest.raises(ValueError, match="training=True"):
    segmentation_input.segmentation_dataset(
        "unused", False, 2,
        segmentation_input.SegmentationParser(64, 3, training=True))
