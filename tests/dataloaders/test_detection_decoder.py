"""Tests of dataloaders.detection_decoder."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dataloaders import detection_decoder
from tests.dataloaders import helpers


def _png(mask):
  buffer = io.BytesIO()
  Image.fromarray(mask).save(buffer, format="PNG")
  return buffer.getvalue()


def _example(encoded, boxes=(), classes=(), is_crowd=None, area=None,
             masks=None, source_id=b"7"):
  """Serialized detection tf.Example; boxes as (ymin, xmin, ymax, xmax)."""
  boxes = np.reshape(np.asarray(boxes, np.float32), [-1, 4])

  def floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))

  def ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  def strings(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  feature = {
      "image/encoded": strings([encoded]),
      "image/source_id": strings([source_id]),
      "image/object/bbox/ymin": floats(boxes[:, 0]),
      "image/object/bbox/xmin": floats(boxes[:, 1]),
      "image/object/bbox/ymax": floats(boxes[:, 2]),
      "image/object/bbox/xmax": floats(boxes[:, 3]),
      "image/object/class/label": ints(list(classes)),
  }
  if is_crowd is not None:
    feature["image/object/is_crowd"] = ints(list(is_crowd))
  if area is not None:
    feature["image/object/area"] = floats(list(area))
  if masks is not None:
    feature["image/object/mask"] = strings([_png(m) for m in masks])
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def _decode_in_dataset(serialized, include_masks):
  dataset = tf.data.Dataset.from_tensor_slices([serialized]).map(
      lambda s: detection_decoder.decode_detection_example(
          s, include_masks=include_masks))
  return next(iter(dataset.as_numpy_iterator()))


@pytest.mark.parametrize("include_masks", [False, True])
def test_no_objects_in_tf_data(include_masks):
  rng = np.random.default_rng(0)
  encoded = helpers.encode_image(helpers.random_image(rng, 10, 14), "jpeg")
  decoded = _decode_in_dataset(
      _example(encoded, masks=[] if include_masks else None), include_masks)
  assert decoded["image"].shape == (10, 14, 3)
  assert decoded["image"].dtype == np.uint8
  assert (decoded["height"], decoded["width"]) == (10, 14)
  assert decoded["source_id"] == b"7"
  assert decoded["groundtruth_boxes"].shape == (0, 4)
  assert decoded["groundtruth_boxes"].dtype == np.float32
  assert decoded["groundtruth_classes"].shape == (0,)
  assert decoded["groundtruth_classes"].dtype == np.int32
  assert decoded["groundtruth_is_crowd"].shape == (0,)
  assert decoded["groundtruth_is_crowd"].dtype == bool
  assert decoded["groundtruth_area"].shape == (0,)
  if include_masks:
    assert decoded["groundtruth_instance_masks"].shape == (0, 10, 14)
    assert decoded["groundtruth_instance_masks"].dtype == np.float32
  else:
    assert "groundtruth_instance_masks" not in decoded


def test_grayscale_png_objects_masks_and_defaults():
  rng = np.random.default_rng(1)
  height, width = 8, 12
  encoded = helpers.encode_image(
      helpers.random_image(rng, height, width, channels=1), "png")
  masks = np.zeros((2, height, width), np.uint8)
  masks[0, 1:3, 2:6] = 1
  masks[1, 4:8, 0:12] = 255  # 0/255 masks read as 0/1 too.
  boxes = [[0.1, 0.2, 0.5, 0.6], [0.5, 0.0, 1.0, 1.0]]
  decoded = _decode_in_dataset(
      _example(encoded, boxes, classes=[3, 90], masks=masks), True)
  assert decoded["image"].shape == (height, width, 3)
  gray = np.array(Image.open(io.BytesIO(encoded)))
  for channel in range(3):
    np.testing.assert_array_equal(decoded["image"][:, :, channel], gray)
  np.testing.assert_allclose(decoded["groundtruth_boxes"], boxes)
  np.testing.assert_array_equal(decoded["groundtruth_classes"], [3, 90])
  # Absent keys: not crowd, area from the boxes in pixels.
  np.testing.assert_array_equal(decoded["groundtruth_is_crowd"],
                                [False, False])
  np.testing.assert_allclose(
      decoded["groundtruth_area"],
      [0.4 * 0.4 * height * width, 0.5 * 1.0 * height * width], rtol=1e-5)
  np.testing.assert_array_equal(decoded["groundtruth_instance_masks"],
                                masks > 0)


def test_given_crowd_and_area_are_kept():
  rng = np.random.default_rng(2)
  encoded = helpers.encode_image(helpers.random_image(rng, 6, 6), "png")
  decoded = _decode_in_dataset(
      _example(encoded, [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], classes=[1, 2],
               is_crowd=[1, 0], area=[12.5, 3.0]), False)
  np.testing.assert_array_equal(decoded["groundtruth_is_crowd"],
                                [True, False])
  np.testing.assert_allclose(decoded["groundtruth_area"], [12.5, 3.0])


def test_inconsistent_lengths_name_the_record():
  rng = np.random.default_rng(3)
  encoded = helpers.encode_image(helpers.random_image(rng, 6, 6), "png")
  serialized = _example(encoded, [[0, 0, 1, 1]], classes=[1, 2],
                        source_id=b"123")
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"123"):
    _decode_in_dataset(serialized, False)
