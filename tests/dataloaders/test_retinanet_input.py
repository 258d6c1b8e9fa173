"""Tests of dataloaders.retinanet_input (RetinaNet parser and dataset)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dataloaders import retinanet_input
from dataloaders.detection_decoder import decode_detection_example
from modeling.ops import box_ops
from modeling.ops.anchors import flatten_levels
from tests.dataloaders import helpers

SIZE = 128
# Small pyramid: levels 3..5 need SIZE % 32 == 0.
ANCHOR_ARGS = dict(min_level=3, max_level=5, num_scales=2,
                   aspect_ratios=(0.5, 1.0, 2.0), anchor_size=3.0)
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # Image = pixels.


def _parser(training, **kwargs):
  args = dict(ANCHOR_ARGS, output_size=SIZE, num_classes=91,
              training=training)
  args.update(kwargs)
  return retinanet_input.RetinaNetParser(**args)


def _example(image, boxes=(), classes=(), is_crowd=None, source_id=b"7"):
  """Serialized detection tf.Example (the coco_records keys); PNG image.

  Args:
    image: uint8 [h, w, 3] numpy array.
    boxes: normalised (ymin, xmin, ymax, xmax) rows.
    classes: class ids, one per box.
    is_crowd: optional 0/1 per box.
    source_id: bytes.
  """
  boxes = np.reshape(np.asarray(boxes, np.float32), [-1, 4])

  def floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))

  def ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

  feature = {
      "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[helpers.encode_image(image, "png")])),
      "image/source_id": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[source_id])),
      "image/object/bbox/ymin": floats(boxes[:, 0]),
      "image/object/bbox/xmin": floats(boxes[:, 1]),
      "image/object/bbox/ymax": floats(boxes[:, 2]),
      "image/object/bbox/xmax": floats(boxes[:, 3]),
      "image/object/class/label": ints(list(classes)),
  }
  if is_crowd is not None:
    feature["image/object/is_crowd"] = ints(list(is_crowd))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def _decoded(*args, **kwargs):
  return decode_detection_example(tf.constant(_example(*args, **kwargs)))


def _run(fn, inputs):
  """fn mapped over inputs in tf.data (graph mode, as in training)."""
  dataset = tf.data.Dataset.from_tensor_slices(inputs).map(fn)
  return list(dataset.as_numpy_iterator())


def _two_rectangles(height, width):
  """A black image with a red and a green rectangle, and their boxes.

  Returns:
    (image uint8 [height, width, 3], boxes normalised [2, 4], classes [2]):
    box 0 (class 1) is the red rectangle, box 1 (class 2) the green one;
    their edges lie on pixel boundaries.
  """
  image = np.zeros((height, width, 3), np.uint8)
  rects = [(0.2, 0.15, 0.6, 0.45), (0.5, 0.6, 0.9, 0.95)]
  boxes = []
  for channel, (y0, x0, y1, x1) in enumerate(rects):
    top, left = round(y0 * height), round(x0 * width)
    bottom, right = round(y1 * height), round(x1 * width)
    image[top:bottom, left:right, channel] = 255
    boxes.append((top / height, left / width, bottom / height, right / width))
  return image, np.asarray(boxes, np.float32), np.array([1, 2])


@pytest.mark.parametrize("height,width", [(96, 144), (150, 70)])
def test_train_boxes_stay_on_their_pixels(height, width):
  """Flip, scale jitter, crop and pad move boxes exactly like the pixels."""
  image, boxes, classes = _two_rectangles(height, width)
  decoded = _decoded(image, boxes, classes)
  parser = _parser(True, aug_scale_min=0.5, aug_scale_max=2.0, **PLAIN)
  seeds = np.stack([np.arange(48), np.full(48, 5)], axis=1)
  outputs = _run(lambda seed: parser.transform(decoded, seed), seeds)

  ys = np.arange(SIZE)[:, None] + 0.5  # Pixel centres.
  xs = np.arange(SIZE)[None, :] + 0.5
  flips, crops, scales = set(), 0, []
  for out in outputs:
    info = out["image_info"]
    scales.append(info[2, 0])
    crops += int(info[3].max() > 0)
    np.testing.assert_array_equal(info[0], [height, width])
    num = out["num_boxes"]
    assert (out["classes"][num:] == 0).all()
    assert (out["boxes"][num:] == 0).all()
    kept = dict(zip(out["classes"][:num], out["boxes"][:num]))
    for channel, cls in enumerate(classes):
      coloured = out["image"][:, :, channel] > 127.5
      if cls not in kept:  # Cropped away: no colour (but a blurred edge).
        assert coloured.sum() <= SIZE
        continue
      ymin, xmin, ymax, xmax = kept[cls]
      assert 0 <= ymin < ymax <= SIZE and 0 <= xmin < xmax <= SIZE
      inside = ((ys > ymin + 1) & (ys < ymax - 1) &
                (xs > xmin + 1) & (xs < xmax - 1))
      near = ((ys > ymin - 1) & (ys < ymax + 1) &
              (xs > xmin - 1) & (xs < xmax + 1))
      assert coloured[inside].all(), (cls, kept[cls], info)
      assert not coloured[~near].any(), (cls, kept[cls], info)
    if len(kept) == 2:
      flips.add(kept[1][1] < kept[2][1])  # Red left of green: not flipped.
    # Outside the scaled image: padding (0 = the normalised mean).
    valid_h, valid_w = np.minimum(info[1] - info[3], SIZE).astype(int)
    assert (out["image"][valid_h:] == 0).all()
    assert (out["image"][:, valid_w:] == 0).all()
  # The seeds exercised both flips, crops and the whole scale range.
  assert flips == {True, False}
  assert crops > 5
  long_side = max(height, width)
  assert min(scales) < 0.7 * SIZE / long_side
  assert max(scales) > 1.6 * SIZE / long_side


def test_targets_are_the_transformed_boxes():
  image, boxes, classes = _two_rectangles(96, 144)
  decoded = _decoded(image, boxes, classes)
  parser = _parser(True, aug_scale_min=0.5, aug_scale_max=2.0)
  seeds = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
  transformed = _run(lambda seed: parser.transform(decoded, seed), seeds)
  parsed = _run(lambda seed: parser(decoded, seed), seeds)
  anchors = parser.anchors.boxes().numpy()
  for out, (image_out, labels) in zip(transformed, parsed):
    np.testing.assert_array_equal(image_out, out["image"])
    np.testing.assert_array_equal(labels["image_info"], out["image_info"])
    assert labels["num_positives"].dtype == np.float32
    for level in ("3", "4", "5"):
      cells = SIZE // 2 ** int(level)
      assert labels["cls_targets"][level].shape == (cells, cells, 6)
      assert labels["cls_targets"][level].dtype == np.int32
      assert labels["box_targets"][level].shape == (cells, cells, 24)
      assert labels["box_targets"][level].dtype == np.float32
    cls = flatten_levels(labels["cls_targets"], 1).numpy()[:, 0]
    deltas = flatten_levels(labels["box_targets"], 4).numpy()
    positive = cls > 0
    assert positive.sum() == labels["num_positives"]
    assert positive.sum() >= out["num_boxes"]  # Force match: >= 1 each.
    decoded_boxes = box_ops.decode_boxes(deltas[positive],
                                         anchors[positive]).numpy()
    truth = dict(zip(out["classes"], out["boxes"]))
    for cls_id, box in zip(cls[positive], decoded_boxes):
      np.testing.assert_allclose(box, truth[cls_id], atol=1e-3)


def test_eval_groundtruths_map_back_to_original_pixels():
  height, width = 100, 150
  image, _, _ = _two_rectangles(height, width)
  boxes = np.array([[0.113, 0.071, 0.527, 0.333],
                    [0.25, 0.5, 0.97, 0.99]], np.float32)
  decoded = _decoded(image, boxes, [3, 90], is_crowd=[0, 1],
                     source_id=b"397133")
  parser = _parser(False, max_num_instances=5, **PLAIN)
  (image_out, labels), = _run(lambda _: parser(decoded), [0])
  out, = _run(lambda _: parser.transform(decoded), [0])
  info = labels["image_info"]
  scale = SIZE / width
  np.testing.assert_allclose(info, [[height, width],
                                    [round(height * scale), SIZE],
                                    [round(height * scale) / height,
                                     SIZE / width],
                                    [0, 0]], rtol=1e-6)
  gt = labels["groundtruths"]
  assert gt["source_id"] == 397133 and gt["source_id"].dtype == np.int64
  assert (gt["height"], gt["width"]) == (height, width)
  assert gt["num_groundtruths"] == 2
  assert gt["boxes"].shape == (5, 4) and gt["boxes"].dtype == np.float32
  expected = boxes * np.array([height, width, height, width], np.float32)
  np.testing.assert_allclose(gt["boxes"][:2], expected, rtol=1e-6)
  assert (gt["boxes"][2:] == 0).all()
  np.testing.assert_array_equal(gt["classes"], [3, 90, 0, 0, 0])
  np.testing.assert_array_equal(gt["is_crowd"], [False, True] + [False] * 3)
  np.testing.assert_allclose(gt["areas"][:2], (
      (expected[:, 2] - expected[:, 0]) * (expected[:, 3] - expected[:, 1])),
                             rtol=1e-5)
  # Input pixels / scale = original pixels (eval has no offset). The crowd
  # box is left out of the targets, hence of the transformed boxes.
  assert out["num_boxes"] == 1
  np.testing.assert_allclose(out["boxes"][0] / np.tile(info[2], 2),
                             expected[0], rtol=1e-5, atol=1e-4)
  # The image is in the top-left corner, the rest is padding.
  valid_h = int(info[1, 0])
  assert image_out[:valid_h].max() == 255
  assert (image_out[valid_h:] == 0).all()
  # Deterministic.
  (again, _), = _run(lambda _: parser(decoded), [0])
  np.testing.assert_array_equal(image_out, again)


@pytest.mark.parametrize("training", [True, False])
def test_image_without_boxes(training):
  decoded = _decoded(np.full((64, 80, 3), 30, np.uint8))
  parser = _parser(training, aug_scale_min=0.8, aug_scale_max=1.2)
  (image, labels), = _run(lambda seed: parser(decoded, seed), [[1, 2]])
  assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all()
  assert labels["num_positives"] == 0
  for level, targets in labels["cls_targets"].items():
    assert (targets == 0).all()  # All negative, none ignored.
    assert (labels["box_targets"][level] == 0).all()
  if not training:
    assert labels["groundtruths"]["num_groundtruths"] == 0
    assert (labels["groundtruths"]["classes"] == 0).all()


@pytest.mark.parametrize("training", [True, False])
def test_degenerate_and_outside_boxes_are_dropped_or_clipped(training):
  height, width = 64, 96
  boxes = [[0.1, 0.1, 0.5, 0.5],      # Fine.
           [0.5, 0.2, 0.5, 0.6],      # Zero height.
           [0.7, 0.7, 0.6, 0.6],      # Inverted.
           [-0.2, 0.6, 0.3, 1.3],     # Partly outside: clipped.
           [1.1, 1.1, 1.4, 1.5],      # Outside the image.
           [np.nan, 0.1, np.nan, 0.2]]  # Corrupt.
  decoded = _decoded(np.zeros((height, width, 3), np.uint8), boxes,
                     [1, 2, 3, 4, 5, 6])
  parser = _parser(training, random_flip=False)
  (image, labels), = _run(lambda seed: parser(decoded, seed), [[1, 2]])
  out, = _run(lambda seed: parser.transform(decoded, seed), [[1, 2]])
  for value in tf.nest.flatten((image, labels, out)):
    if np.issubdtype(value.dtype, np.floating):
      assert np.isfinite(value).all()
  scale = np.tile(out["image_info"][2], 2)  # y, x, y, x.
  assert out["num_boxes"] == 2
  np.testing.assert_array_equal(out["classes"][:2], [1, 4])
  np.testing.assert_allclose(
      out["boxes"][:2],
      np.array([[0.1 * height, 0.1 * width, 0.5 * height, 0.5 * width],
                [0.0, 0.6 * width, 0.3 * height, width]]) * scale,
      rtol=1e-5, atol=1e-3)
  assert labels["num_positives"] >= 2
  if not training:
    gt = labels["groundtruths"]
    assert gt["num_groundtruths"] == 2
    np.testing.assert_allclose(
        gt["boxes"][:2], [[0.1 * height, 0.1 * width, 0.5 * height,
                           0.5 * width], [0.0, 0.6 * width, 0.3 * height,
                                          width]], rtol=1e-5)


def test_class_out_of_range_names_the_record():
  parser = _parser(False)
  serialized = _example(np.zeros((32, 32, 3), np.uint8),
                        [[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]],
                        [1, 91], source_id=b"4242")
  dataset = tf.data.Dataset.from_tensors(serialized).map(
      lambda s: parser(decode_detection_example(s)))
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    list(dataset)
  message = str(info.value)
  assert "4242" in message and "91" in message and "num_classes" in message

  zero = _decoded(np.zeros((32, 32, 3), np.uint8), [[0.1, 0.1, 0.5, 0.5]],
                  [0], source_id=b"555")
  with pytest.raises(tf.errors.InvalidArgumentError, match="555"):
    _parser(True).transform(zero, tf.constant([1, 2]))


def test_crowd_skipped_in_training_kept_in_eval_groundtruths():
  boxes = [[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9]]
  decoded = _decoded(np.zeros((64, 64, 3), np.uint8), boxes, [1, 5],
                     is_crowd=[0, 1])
  no_jitter = dict(random_flip=False)
  out, = _run(lambda s: _parser(True, **no_jitter).transform(decoded, s),
              [[1, 2]])
  assert out["num_boxes"] == 1 and out["classes"][0] == 1
  out, = _run(lambda s: _parser(
      True, skip_crowd_during_training=False, **no_jitter).transform(
          decoded, s), [[1, 2]])
  assert out["num_boxes"] == 2

  (_, labels), = _run(lambda _: _parser(False)(decoded), [0])
  gt = labels["groundtruths"]
  assert gt["num_groundtruths"] == 2
  np.testing.assert_array_equal(gt["classes"][:2], [1, 5])
  np.testing.assert_array_equal(gt["is_crowd"][:2], [False, True])
  # The evaluation loss measures the training objective: no crowd targets.
  for targets in labels["cls_targets"].values():
    assert not (targets == 5).any()


def test_construction_errors():
  with pytest.raises(ValueError, match=r"2\^max_level = 32"):
    _parser(True, output_size=100)
  with pytest.raises(ValueError, match="aug_scale_min"):
    _parser(True, aug_scale_min=1.5, aug_scale_max=1.0)
  with pytest.raises(ValueError, match="max_num_instances"):
    _parser(True, max_num_instances=0)
  assert _parser(True, output_size=96).anchors.image_size == (96, 96)


def test_source_id_to_int64():
  convert = retinanet_input.source_id_to_int64
  assert int(convert(tf.constant("397133"))) == 397133
  assert int(convert(tf.constant(""))) == -1
  assert int(convert(tf.constant(12))) == 12
  hashed = int(convert(tf.constant("img_a.jpg")))
  assert hashed >= 1 << 62
  assert hashed == int(convert(tf.constant("img_a.jpg")))
  assert hashed != int(convert(tf.constant("img_b.jpg")))


def _write_records(directory, num_files=1, num_examples=5):
  """Detection records with source ids 1..num_examples (round-robin)."""
  rng = np.random.default_rng(0)
  writers = [tf.io.TFRecordWriter(os.path.join(directory, f"det-{i:05d}"))
             for i in range(num_files)]
  sizes = [(64, 96), (80, 80), (120, 60), (50, 130), (100, 100)]
  for index in range(num_examples):
    height, width = sizes[index % len(sizes)]
    num_boxes = index % 3  # Some records have no box.
    corner = rng.uniform(0.0, 0.5, size=(num_boxes, 2))
    boxes = np.concatenate([corner, corner + 0.4], axis=1)
    serialized = _example(helpers.random_image(rng, height, width), boxes,
                          rng.integers(1, 91, size=num_boxes),
                          source_id=str(index + 1).encode())
    writers[index % num_files].write(serialized)
  for writer in writers:
    writer.close()
  return os.path.join(directory, "det-*")


def _parser_kwargs(**kwargs):
  args = dict(ANCHOR_ARGS, output_size=SIZE, num_classes=91,
              max_num_instances=8)
  args.update(kwargs)
  return args


def _assert_static(spec):
  for item in tf.nest.flatten(spec):
    assert item.shape.is_fully_defined(), spec


def test_eval_dataset_pads_last_batch(tmp_path):
  pattern = _write_records(str(tmp_path))
  dataset = retinanet_input.retinanet_dataset(
      pattern, training=False, global_batch_size=2,
      parser=_parser(False, max_num_instances=8))
  _assert_static(dataset.element_spec)
  images_spec, labels_spec = dataset.element_spec
  assert images_spec.shape.as_list() == [2, SIZE, SIZE, 3]
  assert labels_spec["groundtruths"]["boxes"].shape.as_list() == [2, 8, 4]
  assert labels_spec["cls_targets"]["3"].shape.as_list() == [2, 16, 16, 6]
  assert labels_spec["image_info"].shape.as_list() == [2, 4, 2]
  batches = list(dataset.as_numpy_iterator())
  assert len(batches) == 3
  valid = np.concatenate([labels["valid"] for _, labels in batches])
  assert valid.tolist() == [True] * 5 + [False]
  ids = np.concatenate([l["groundtruths"]["source_id"] for _, l in batches])
  assert ids.tolist() == [1, 2, 3, 4, 5, -1]  # One pass, record order.
  counts = np.concatenate(
      [l["groundtruths"]["num_groundtruths"] for _, l in batches])
  assert counts.tolist() == [0, 1, 2, 0, 1, 0]
  images, labels = batches[-1]
  assert (images[1] == 0).all()
  assert labels["num_positives"][1] == 0
  assert all((t[1] == -1).all() for t in labels["cls_targets"].values())
  np.testing.assert_array_equal(labels["image_info"][1],
                                [[0, 0], [0, 0], [1, 1], [0, 0]])


def test_eval_dataset_sharded_by_input_context(tmp_path):
  pattern = _write_records(str(tmp_path), num_files=2)
  ids = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline,
        num_replicas_in_sync=2)
    dataset = retinanet_input.retinanet_dataset(
        pattern, training=False, global_batch_size=4,
        parser=_parser_kwargs(), input_context=context)
    assert dataset.element_spec[0].shape.as_list() == [2, SIZE, SIZE, 3]
    batches = list(dataset.as_numpy_iterator())
    ids.append([i for _, l in batches
                for i, v in zip(l["groundtruths"]["source_id"], l["valid"])
                if v])
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == [1, 2, 3, 4, 5]


def test_train_dataset_per_replica_static_and_seeded(tmp_path):
  pattern = _write_records(str(tmp_path), num_files=2)
  context = tf.distribute.InputContext(num_input_pipelines=1,
                                       input_pipeline_id=0,
                                       num_replicas_in_sync=2)

  def make():
    return retinanet_input.retinanet_dataset(
        pattern, training=True, global_batch_size=6,
        parser=_parser_kwargs(aug_scale_min=0.5, aug_scale_max=2.0),
        input_context=context, seed=3)

  dataset = make()
  _assert_static(dataset.element_spec)
  images_spec, labels_spec = dataset.element_spec
  assert images_spec.shape.as_list() == [3, SIZE, SIZE, 3]  # Per replica.
  assert set(labels_spec) == {"cls_targets", "box_targets", "num_positives",
                              "image_info"}
  assert labels_spec["box_targets"]["5"].shape.as_list() == [3, 4, 4, 24]
  assert labels_spec["num_positives"].shape.as_list() == [3]
  batches = list(dataset.take(3).as_numpy_iterator())  # 9 > 5: repeats.
  again = list(make().take(3).as_numpy_iterator())
  for (a, la), (b, lb) in zip(batches, again):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la["image_info"], lb["image_info"])
    np.testing.assert_array_equal(la["cls_targets"]["3"],
                                  lb["cls_targets"]["3"])

  with pytest.raises(ValueError, match="training=False"):
    retinanet_input.retinanet_dataset(pattern, training=True,
                                      global_batch_size=2,
                                      parser=_parser(False))
