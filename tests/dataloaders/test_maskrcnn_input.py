"""Tests of dataloaders.maskrcnn_input (Mask R-CNN parser and dataset)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dataloaders import maskrcnn_input
from dataloaders import retinanet_input
from dataloaders.detection_decoder import decode_detection_example
from modeling.ops import box_ops
from modeling.ops.anchors import flatten_levels
from tests.dataloaders import helpers

SIZE = 128
# The public Mask R-CNN anchors: levels 3..7, 1 scale, 3 ratios, size 3.
ANCHOR_ARGS = dict(min_level=3, max_level=7, num_scales=1,
                   aspect_ratios=(0.5, 1.0, 2.0), anchor_size=3.0)
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # Image = pixels.
CROP = 16  # Small mask crops keep the tests fast.


def _parser(training, **kwargs):
  args = dict(ANCHOR_ARGS, output_size=SIZE, num_classes=91,
              training=training, mask_crop_size=CROP)
  args.update(kwargs)
  return maskrcnn_input.MaskRCNNParser(**args)


def _example(image, masks, boxes, classes, is_crowd=None, source_id=b"7"):
  """Serialized detection tf.Example with one PNG mask per object.

  Args:
    image: uint8 [h, w, 3].
    masks: uint8 [K, h, w] 0/1.
    boxes: normalised (ymin, xmin, ymax, xmax) rows, K of them.
    classes: K class ids.
    is_crowd: optional K 0/1 flags.
    source_id: bytes.
  """
  boxes = np.reshape(np.asarray(boxes, np.float32), [-1, 4])

  def floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))

  def ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  def strings(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  feature = {
      "image/encoded": strings([helpers.encode_image(image, "png")]),
      "image/source_id": strings([source_id]),
      "image/object/bbox/ymin": floats(boxes[:, 0]),
      "image/object/bbox/xmin": floats(boxes[:, 1]),
      "image/object/bbox/ymax": floats(boxes[:, 2]),
      "image/object/bbox/xmax": floats(boxes[:, 3]),
      "image/object/class/label": ints(list(classes)),
      "image/object/mask": strings([helpers.encode_image(
          np.asarray(m, np.uint8) * 255, "png") for m in masks]),
  }
  if is_crowd is not None:
    feature["image/object/is_crowd"] = ints(list(is_crowd))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def _decoded(*args, **kwargs):
  return decode_detection_example(tf.constant(_example(*args, **kwargs)),
                                  include_masks=True)


def _run(fn, inputs):
  """fn mapped over inputs in tf.data (graph mode, as in training)."""
  dataset = tf.data.Dataset.from_tensor_slices(inputs).map(fn)
  return list(dataset.as_numpy_iterator())


def _l_and_rectangle(height, width):
  """An L-shaped red instance (left) and a green rectangle (right).

  Returns:
    (image uint8 [h, w, 3], masks uint8 [2, h, w], boxes normalised [2, 4],
    classes [2]). Instance 0 (class 1) is an L: the left third of its box
    plus the bottom third. Instance 1 (class 2) fills its box exactly. Box
    edges lie on pixel boundaries.
  """
  masks = np.zeros((2, height, width), np.uint8)
  boxes = []
  for k, (y0, x0, y1, x1) in enumerate([(0.15, 0.1, 0.75, 0.45),
                                        (0.4, 0.6, 0.9, 0.95)]):
    top, left = round(y0 * height), round(x0 * width)
    bottom, right = round(y1 * height), round(x1 * width)
    if k == 0:
      third_w, third_h = (right - left) // 3, (bottom - top) // 3
      masks[k, top:bottom, left:left + third_w] = 1
      masks[k, bottom - third_h:bottom, left:right] = 1
    else:
      masks[k, top:bottom, left:right] = 1
    boxes.append((top / height, left / width, bottom / height, right / width))
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0] = masks[0] * 255
  image[..., 1] = masks[1] * 255
  return image, masks, np.asarray(boxes, np.float32), np.array([1, 2])


def _bilinear_crop(channel, box, size):
  """numpy reference: channel [S, S] sampled at the centres of a size x size
  grid over box (input pixels), bilinear with edge clamping."""
  ymin, xmin, ymax, xmax = box
  centres = (np.arange(size) + 0.5) / size
  ys = np.clip(ymin + centres * (ymax - ymin) - 0.5, 0, channel.shape[0] - 1)
  xs = np.clip(xmin + centres * (xmax - xmin) - 0.5, 0, channel.shape[1] - 1)
  y0 = np.floor(ys).astype(int)
  x0 = np.floor(xs).astype(int)
  y1 = np.minimum(y0 + 1, channel.shape[0] - 1)
  x1 = np.minimum(x0 + 1, channel.shape[1] - 1)
  wy = (ys - y0)[:, None]
  wx = (xs - x0)[None, :]
  top = channel[y0][:, x0] * (1 - wx) + channel[y0][:, x1] * wx
  bottom = channel[y1][:, x0] * (1 - wx) + channel[y1][:, x1] * wx
  return top * (1 - wy) + bottom * wy


def test_crop_instance_masks_hand_computed():
  mask = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
  identity = tf.constant([[4, 4], [4, 4], [1, 1], [0, 0]], tf.float32)
  whole = tf.constant([[0, 0, 4, 4]], tf.float32)
  crop = maskrcnn_input.crop_instance_masks(
      mask, tf.constant([0]), whole, identity, tf.constant(False), 4)
  np.testing.assert_allclose(crop[0], mask[0], atol=1e-6)  # Pixel centres.
  flipped = maskrcnn_input.crop_instance_masks(
      mask, tf.constant([0]), whole, identity, tf.constant(True), 4)
  np.testing.assert_allclose(flipped[0], mask[0, :, ::-1], atol=1e-6)
  # 2 x 2 cells: centres at pixel coordinates 1 and 3, between pixels.
  halves = maskrcnn_input.crop_instance_masks(
      mask, tf.constant([0]), whole, identity, tf.constant(False), 2)
  np.testing.assert_allclose(halves[0], [[2.5, 4.5], [10.5, 12.5]],
                             atol=1e-6)
  # Half a pixel beyond the border takes the border's value: cell centres
  # 0.25 and 0.75 are indices -0.25 (clamped to 0) and 0.25.
  corner = maskrcnn_input.crop_instance_masks(
      mask, tf.constant([0]), tf.constant([[0, 0, 1, 1]], tf.float32),
      identity, tf.constant(False), 2)
  np.testing.assert_allclose(corner[0], [[0, 0.25], [1, 1.25]], atol=1e-6)
  # Scale 2 and offset (1, 3): input point (Y, X) is original ((Y + 1) / 2,
  # (X + 3) / 2). Input box [0, -1, 4, 3] has cell centres Y = 1, 3 and
  # X = 0, 2, i.e. original y = 1, 2 and x = 1.5, 2.5, pixel indices
  # (y - 0.5, x - 0.5) = (0.5, 1.5) x (1, 2).
  info = tf.constant([[4, 4], [8, 8], [2, 2], [1, 3]], tf.float32)
  crop = maskrcnn_input.crop_instance_masks(
      mask, tf.constant([0]), tf.constant([[0, -1, 4, 3]], tf.float32), info,
      tf.constant(False), 2)
  np.testing.assert_allclose(crop[0], [[3, 4], [7, 8]], atol=1e-5)
  # Two instances, each from its own record row.
  masks = np.stack([mask[0], 100 + mask[0]])
  both = maskrcnn_input.crop_instance_masks(
      masks, tf.constant([1, 0]), tf.concat([whole, whole], 0), identity,
      tf.constant(False), 4)
  np.testing.assert_allclose(both, masks[::-1], atol=1e-5)


@pytest.mark.parametrize("height,width", [(96, 144), (150, 70)])
def test_masks_follow_their_boxes_through_augmentation(height, width):
  """Flip, jitter, crop and pad move each mask exactly like its pixels."""
  image, masks, boxes, classes = _l_and_rectangle(height, width)
  decoded = _decoded(image, masks, boxes, classes)
  parser = _parser(True, aug_scale_min=0.5, aug_scale_max=2.0, **PLAIN)
  seeds = np.stack([np.arange(40), np.full(40, 3)], axis=1)
  parsed = _run(lambda seed: parser(decoded, seed), seeds)

  flips, crops, oriented = set(), 0, 0
  for image_out, labels in parsed:
    crops += int(labels["image_info"][3].max() > 0)
    gt_masks = labels["gt_masks"]
    assert gt_masks.shape == (100, CROP, CROP)
    assert gt_masks.dtype == np.float32
    assert 0.0 <= gt_masks.min() and gt_masks.max() <= 1.0
    num = int((labels["gt_classes"] > 0).sum())
    assert (gt_masks[num:] == 0).all()
    kept = dict(zip(labels["gt_classes"][:num],
                    zip(labels["gt_boxes"][:num], gt_masks[:num])))
    if 2 in kept:
      # The mask equals its box: the crop is all ones (the outermost
      # samples may see half a pixel outside the object).
      rectangle = kept[2][1]
      assert rectangle.min() >= 0.5 and rectangle.mean() > 0.9, labels[
          "image_info"]
    for channel, cls in enumerate(classes):
      if cls not in kept:
        continue
      box, crop = kept[cls]
      # The output image's own channel, cropped the same way: the pixels
      # went through tf.image.resize, the masks did not, so they agree up
      # to the blur of one resampling at the edges.
      reference = _bilinear_crop(image_out[..., channel] / 255.0, box, CROP)
      assert np.abs(reference - crop).mean() < 0.08, (cls, labels[
          "image_info"])
      assert ((reference > 0.5) == (crop > 0.5)).mean() > 0.9
    if 1 in kept and 2 in kept:
      flipped = kept[1][0][1] > kept[2][0][1]  # L right of the rectangle.
      flips.add(bool(flipped))
      box, crop = kept[1]
      unclipped = box[0] > 0 and box[1] > 0 and box[2] < SIZE and box[
          3] < SIZE
      if unclipped:
        oriented += 1
        quarter = CROP // 4
        bar = crop[:CROP // 2, :quarter]  # The L's upright, unflipped.
        empty = crop[:CROP // 2, -quarter:]
        if flipped:
          bar, empty = empty, bar
        assert bar.mean() > 0.9 and empty.max() < 0.1, (flipped, crop)
  assert flips == {True, False}
  assert crops > 5 and oriented > 5


def test_rpn_targets_minibatch():
  rng = np.random.default_rng(0)
  height, width = 100, 120
  masks = np.zeros((6, height, width), np.uint8)
  boxes = []
  for k in range(6):
    y0, x0 = rng.integers(0, 60), rng.integers(0, 80)
    y1, x1 = y0 + rng.integers(15, 40), x0 + rng.integers(15, 40)
    masks[k, y0:y1, x0:x1] = 1
    boxes.append((y0 / height, x0 / width, y1 / height, x1 / width))
  decoded = _decoded(helpers.random_image(rng, height, width), masks, boxes,
                     [1, 2, 3, 4, 5, 6])
  parser = _parser(True, aug_scale_min=0.8, aug_scale_max=1.2)
  anchors = parser.anchors.boxes_numpy()
  seeds = np.array([[1, 2], [3, 4], [5, 6]])
  parsed = _run(lambda seed: parser(decoded, seed), seeds)
  for _, labels in parsed:
    assert set(labels) == {"image_info", "rpn_score_targets",
                           "rpn_box_targets", "gt_boxes", "gt_classes",
                           "gt_masks"}
    for level in map(str, range(3, 8)):
      cells = SIZE // 2 ** int(level)
      assert labels["rpn_score_targets"][level].shape == (cells, cells, 3)
      assert labels["rpn_score_targets"][level].dtype == np.int32
      assert labels["rpn_box_targets"][level].shape == (cells, cells, 12)
      assert labels["rpn_box_targets"][level].dtype == np.float32
    scores = flatten_levels(labels["rpn_score_targets"], 1).numpy()[:, 0]
    deltas = flatten_levels(labels["rpn_box_targets"], 4).numpy()
    positive = scores == 1
    assert set(np.unique(scores)) <= {-1, 0, 1}
    assert 6 <= positive.sum() <= 128  # Force match: >= 1 per box.
    assert positive.sum() + (scores == 0).sum() == 256
    assert (scores == -1).sum() == len(anchors) - 256
    assert (deltas[~positive] == 0).all()
    # Each sampled positive regresses to one of the transformed boxes.
    decoded_boxes = box_ops.decode_boxes(deltas[positive],
                                         anchors[positive]).numpy()
    num = int((labels["gt_classes"] > 0).sum())
    gt = labels["gt_boxes"][:num]
    errors = np.abs(decoded_boxes[:, None, :] - gt[None]).max(-1).min(-1)
    assert errors.max() < 1e-3
  # Different seeds sample different minibatches.
  first = flatten_levels(parsed[0][1]["rpn_score_targets"], 1).numpy()
  second = flatten_levels(parsed[1][1]["rpn_score_targets"], 1).numpy()
  assert (first != second).any()


def test_eval_outputs_and_crowd():
  height, width = 96, 144
  image, masks, boxes, _ = _l_and_rectangle(height, width)
  decoded = _decoded(image, masks, boxes, [3, 90], is_crowd=[1, 0],
                     source_id=b"397133")
  parser = _parser(False, max_num_instances=5, mask_crop_size=112, **PLAIN)
  (image_out, labels), = _run(lambda _: parser(decoded), [0])
  (again, labels_again), = _run(lambda _: parser(decoded), [0])
  np.testing.assert_array_equal(image_out, again)
  for level, targets in labels["rpn_score_targets"].items():
    np.testing.assert_array_equal(targets,
                                  labels_again["rpn_score_targets"][level])
  # The RetinaNet geometry and ground truths, unchanged.
  retinanet = retinanet_input.RetinaNetParser(
      **dict(ANCHOR_ARGS, output_size=SIZE, num_classes=91, training=False,
             max_num_instances=5, **PLAIN))
  (retina_image, retina_labels), = _run(lambda _: retinanet(decoded), [0])
  np.testing.assert_array_equal(image_out, retina_image)
  np.testing.assert_array_equal(labels["image_info"],
                                retina_labels["image_info"])
  for key, value in retina_labels["groundtruths"].items():
    np.testing.assert_array_equal(labels["groundtruths"][key], value)
  assert labels["groundtruths"]["num_groundtruths"] == 2
  np.testing.assert_array_equal(labels["groundtruths"]["is_crowd"][:2],
                                [True, False])
  # The crowd instance is left out of the training targets.
  np.testing.assert_array_equal(labels["gt_classes"], [90, 0, 0, 0, 0])
  scale = np.tile(labels["image_info"][2], 2)  # y, x, y, x.
  np.testing.assert_allclose(
      labels["gt_boxes"][0],
      boxes[1] * np.array([height, width, height, width]) * scale,
      rtol=1e-5)
  assert labels["gt_masks"].shape == (5, 112, 112)
  assert labels["gt_masks"][0].min() >= 0.5
  assert labels["gt_masks"][0].mean() > 0.97
  assert (labels["gt_masks"][1:] == 0).all()


@pytest.mark.parametrize("training", [True, False])
def test_image_without_instances(training):
  decoded = _decoded(np.full((64, 80, 3), 30, np.uint8),
                     np.zeros((0, 64, 80), np.uint8), [], [])
  parser = _parser(training, aug_scale_min=0.8, aug_scale_max=1.2)
  (image, labels), = _run(lambda seed: parser(decoded, seed), [[1, 2]])
  assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all()
  assert (labels["gt_masks"] == 0).all() and (labels["gt_classes"] == 0).all()
  scores = flatten_levels(labels["rpn_score_targets"], 1).numpy()
  assert (scores == 0).sum() == 256 and (scores == 1).sum() == 0


def test_errors():
  with pytest.raises(ValueError, match="mask_crop_size"):
    _parser(True, mask_crop_size=0)
  with pytest.raises(ValueError, match=r"MaskRCNNParser: output_size=100"):
    _parser(True, output_size=100)
  with pytest.raises(ValueError, match="unmatched_threshold"):
    _parser(True, rpn_match_threshold=0.3, rpn_unmatched_threshold=0.7)
  image, masks, boxes, classes = _l_and_rectangle(32, 32)
  without_masks = decode_detection_example(
      tf.constant(_example(image, masks, boxes, classes)))
  with pytest.raises(KeyError, match="include_masks=True"):
    _parser(False)(without_masks)
  bad = _decoded(image, masks, boxes, [1, 91], source_id=b"4242")
  with pytest.raises(tf.errors.InvalidArgumentError, match="4242"):
    _run(lambda _: _parser(False)(bad), [0])


def _write_records(directory, num_examples=5):
  """Records with masks, source ids 1..num_examples, some without objects."""
  rng = np.random.default_rng(0)
  path = os.path.join(directory, "masks-00000")
  sizes = [(64, 96), (80, 80), (120, 60), (50, 130), (100, 100)]
  with tf.io.TFRecordWriter(path) as writer:
    for index in range(num_examples):
      height, width = sizes[index % len(sizes)]
      num = index % 3
      masks = np.zeros((num, height, width), np.uint8)
      boxes = []
      for k in range(num):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        y1, x1 = y0 + height // 3, x0 + width // 3
        masks[k, y0:y1, x0:x1] = 1
        boxes.append((y0 / height, x0 / width, y1 / height, x1 / width))
      writer.write(_example(helpers.random_image(rng, height, width), masks,
                            boxes, rng.integers(1, 91, size=num),
                            source_id=str(index + 1).encode()))
  return path


def _assert_static(spec):
  for item in tf.nest.flatten(spec):
    assert item.shape.is_fully_defined(), spec


def test_eval_dataset_pads_last_batch(tmp_path):
  pattern = _write_records(str(tmp_path))
  dataset = maskrcnn_input.maskrcnn_dataset(
      pattern, training=False, global_batch_size=2,
      parser=_parser(False, max_num_instances=4))
  _assert_static(dataset.element_spec)
  images_spec, labels_spec = dataset.element_spec
  assert images_spec.shape.as_list() == [2, SIZE, SIZE, 3]
  assert labels_spec["gt_masks"].shape.as_list() == [2, 4, CROP, CROP]
  assert labels_spec["rpn_score_targets"]["3"].shape.as_list() == [
      2, 16, 16, 3]
  assert labels_spec["groundtruths"]["boxes"].shape.as_list() == [2, 4, 4]
  batches = list(dataset.as_numpy_iterator())
  assert len(batches) == 3
  valid = np.concatenate([labels["valid"] for _, labels in batches])
  assert valid.tolist() == [True] * 5 + [False]
  ids = np.concatenate([l["groundtruths"]["source_id"] for _, l in batches])
  assert ids.tolist() == [1, 2, 3, 4, 5, -1]
  classes = np.concatenate([l["gt_classes"] for _, l in batches])
  assert ((classes > 0).sum(axis=1)).tolist() == [0, 1, 2, 0, 1, 0]
  masks = np.concatenate([l["gt_masks"] for _, l in batches])
  assert masks[1, 0].mean() > 0.9 and masks[2, :2].mean() > 0.9
  _, labels = batches[-1]
  assert all((t[1] == -1).all() for t in labels["rpn_score_targets"].values())
  assert (labels["gt_masks"][1] == 0).all()
  np.testing.assert_array_equal(labels["image_info"][1],
                                [[0, 0], [0, 0], [1, 1], [0, 0]])


def test_train_dataset_static_and_seeded(tmp_path):
  pattern = _write_records(str(tmp_path))

  def make():
    return maskrcnn_input.maskrcnn_dataset(
        pattern, training=True, global_batch_size=2,
        parser=dict(ANCHOR_ARGS, output_size=SIZE, num_classes=91,
                    max_num_instances=4, mask_crop_size=CROP,
                    aug_scale_min=0.5, aug_scale_max=2.0), seed=3)

  dataset = make()
  _assert_static(dataset.element_spec)
  _, labels_spec = dataset.element_spec
  assert set(labels_spec) == {"image_info", "rpn_score_targets",
                              "rpn_box_targets", "gt_boxes", "gt_classes",
                              "gt_masks"}
  batches = list(dataset.take(3).as_numpy_iterator())  # 6 > 5: repeats.
  again = list(make().take(3).as_numpy_iterator())
  for (a, la), (b, lb) in zip(batches, again):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la["gt_masks"], lb["gt_masks"])
    np.testing.assert_array_equal(la["rpn_score_targets"]["4"],
                                  lb["rpn_score_targets"]["4"])
  with pytest.raises(ValueError, match="training=False"):
    maskrcnn_input.maskrcnn_dataset(pattern, training=True,
                                    global_batch_size=2,
                                    parser=_parser(False))
