"""Tests for modeling/ops: anchors, box ops, labelling, post-processing."""

import math

import numpy as np
import pytest
import tensorflow as tf

from modeling.ops import box_ops
from modeling.ops.anchors import Anchors, flatten_levels
from modeling.ops.postprocess import multilevel_detections
from modeling.ops.target_assigner import AnchorLabeler


def retinanet_anchors(size=128):
  return Anchors(3, 7, 3, (0.5, 1.0, 2.0), 3.0, (size, size))


# ----------------------------------------------------------------- anchors


def test_anchor_counts_and_shapes():
  anchors = Anchors(3, 7, 3, (0.5, 1.0, 2.0), 3.0, (128, 256))
  assert anchors.anchors_per_location == 9
  assert anchors.levels == ["3", "4", "5", "6", "7"]
  cells = sum((128 >> l) * (256 >> l) for l in range(3, 8))
  assert anchors.num_anchors == 9 * cells
  assert tuple(anchors.boxes().shape) == (9 * cells, 4)
  assert anchors.boxes().dtype == tf.float32
  for level, boxes in anchors.multilevel_boxes().items():
    l = int(level)
    assert tuple(boxes.shape) == (128 >> l, 256 >> l, 36)


def test_anchor_centres_and_sizes():
  anchors = retinanet_anchors()
  level3 = anchors.multilevel_boxes()["3"].numpy().reshape(16, 16, 9, 4)
  # Cell (0, 0) of level 3, scale 0, ratio 1: side 3 * 8 = 24 around (4, 4).
  np.testing.assert_allclose(level3[0, 0, 1], [-8, -8, 16, 16], atol=1e-5)
  # Ratio 0.5 (= width / height): height 24 / sqrt(0.5), width 24 * sqrt(0.5).
  ymin, xmin, ymax, xmax = level3[0, 0, 0]
  np.testing.assert_allclose([ymax - ymin, xmax - xmin],
                             [24 / math.sqrt(0.5), 24 * math.sqrt(0.5)],
                             rtol=1e-5)
  # Scale 2 of 3, ratio 2: side 24 * 2^(2/3); same area as the ratio-1 box.
  side = 24 * 2 ** (2 / 3)
  ymin, xmin, ymax, xmax = level3[0, 0, 8]
  np.testing.assert_allclose([ymax - ymin, xmax - xmin],
                             [side / math.sqrt(2), side * math.sqrt(2)],
                             rtol=1e-5)
  # Level 4, row 1, column 2: centre ((1 + 0.5) * 16, (2 + 0.5) * 16).
  level4 = anchors.multilevel_boxes()["4"].numpy().reshape(8, 8, 9, 4)
  centre = (level4[1, 2, :, :2] + level4[1, 2, :, 2:]) / 2
  np.testing.assert_allclose(centre, np.tile([[24.0, 40.0]], (9, 1)))


def test_flat_order_is_level_row_column_anchor():
  anchors = retinanet_anchors()
  flat = anchors.boxes().numpy()
  per_level = anchors.multilevel_boxes()
  offset = 16 * 16 * 9  # all of level 3 comes first
  expected = per_level["4"].numpy()[1, 2].reshape(9, 4)
  start = offset + (1 * 8 + 2) * 9
  np.testing.assert_array_equal(flat[start:start + 9], expected)
  np.testing.assert_array_equal(
      flatten_levels({k: v[None] for k, v in per_level.items()}, 4)[0], flat)


def test_unpack_labels_round_trip():
  anchors = retinanet_anchors()
  n = anchors.num_anchors
  values = tf.reshape(tf.range(n * 4), [n, 4])
  unpacked = anchors.unpack_labels(values)
  assert {k: tuple(v.shape) for k, v in unpacked.items()} == {
      str(l): (128 >> l, 128 >> l, 36) for l in range(3, 8)}
  np.testing.assert_array_equal(flatten_levels(unpacked, 4), values)
  classes = anchors.unpack_labels(tf.range(n))
  assert tuple(classes["5"].shape) == (4, 4, 9)
  with pytest.raises(ValueError, match="one per anchor"):
    anchors.unpack_labels(tf.zeros([n - 1, 4]))


def test_anchor_errors():
  with pytest.raises(ValueError, match=r"multiples of 2\^max_level = 128"):
    Anchors(3, 7, 3, (1.0,), 3, (100, 128))
  with pytest.raises(ValueError, match="impossible level range"):
    Anchors(5, 3, 3, (1.0,), 3, (128, 128))


# --------------------------------------------------------------- box ops


def test_iou_hand_computed():
  a = tf.constant([[0, 0, 10, 10], [3, 3, 3, 3]], tf.float32)
  b = tf.constant([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30],
                   [3, 3, 3, 3], [5, 5, 2, 2]], tf.float32)
  expected = [[25 / 175, 1.0, 0.0, 0.0, 0.0],
              [0.0, 0.0, 0.0, 0.0, 0.0]]  # zero-area rows/columns are 0
  result = box_ops.iou(a, b).numpy()
  np.testing.assert_allclose(result, expected, rtol=1e-6)
  assert np.all(np.isfinite(result))
  batched = box_ops.iou(tf.stack([a, a]), tf.stack([b, b]))
  assert tuple(batched.shape) == (2, 2, 5)


def test_encode_decode_round_trip():
  rng = np.random.default_rng(0)
  anchors = rng.uniform(0, 50, (64, 2))
  anchors = np.concatenate([anchors, anchors + rng.uniform(5, 40, (64, 2))], 1)
  boxes = rng.uniform(0, 50, (64, 2))
  boxes = np.concatenate([boxes, boxes + rng.uniform(2, 60, (64, 2))], 1)
  for weights in (None, (10.0, 10.0, 5.0, 5.0)):
    deltas = box_ops.encode_boxes(boxes, anchors, weights)
    np.testing.assert_allclose(
        box_ops.decode_boxes(deltas, anchors, weights), boxes, atol=1e-3)


def test_encode_known_values_and_decode_clip():
  anchor = tf.constant([[0.0, 0.0, 10.0, 20.0]])
  box = tf.constant([[5.0, 0.0, 25.0, 20.0]])  # centre +10 in y, twice as tall
  np.testing.assert_allclose(box_ops.encode_boxes(box, anchor),
                             [[1.0, 0.0, math.log(2.0), 0.0]], atol=1e-6)
  np.testing.assert_allclose(
      box_ops.encode_boxes(box, anchor, (10, 10, 5, 5)),
      [[10.0, 0.0, 5 * math.log(2.0), 0.0]], rtol=1e-6)
  huge = box_ops.decode_boxes(tf.constant([[0.0, 0.0, 100.0, 100.0]]), anchor)
  np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 10 * 1000 / 16,
                             rtol=1e-4)


def test_clip_and_normalize():
  boxes = tf.constant([[-5.0, 10.0, 70.0, 140.0]])
  np.testing.assert_allclose(box_ops.clip_boxes(boxes, 64, 128),
                             [[0, 10, 64, 128]])
  normalized = box_ops.normalize_boxes(boxes, 64, 128)
  np.testing.assert_allclose(normalized, [[-5 / 64, 10 / 128, 70 / 64,
                                           140 / 128]], rtol=1e-6)
  np.testing.assert_allclose(box_ops.denormalize_boxes(normalized, 64, 128),
                             boxes, rtol=1e-6)


# --------------------------------------------------------- anchor labeler

# Hand-made anchors with known IoUs against the ground truth [0, 0, 10, 10].
ANCHORS = tf.constant([
    [0, 0, 10, 10],          # 0: IoU 1.0
    [0, 0, 10, 20],          # 1: IoU 0.5
    [0, 0, 10, 25],          # 2: IoU 0.4
    [50, 50, 60, 60],        # 3: IoU 0
    [100, 100, 110, 110],    # 4: overlaps the small boxes near (100, 100)
    [200, 200, 210, 210],    # 5 and 6: tie for the box near (200, 207)
    [200, 205, 210, 215],    # 6
], tf.float32)


def test_labeler_thresholds():
  gt = [[0, 0, 10, 10]]
  out = AnchorLabeler(0.5, 0.4, force_match=False)(ANCHORS, gt, [3])
  np.testing.assert_array_equal(out["cls_targets"], [3, 3, -1, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["positive"],
                                [1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["ignore"], [0, 0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["matched_gt"], [0, 0, -1, -1, -1, -1, -1])
  assert float(out["num_positives"]) == 2.0
  # Anchor 0 is the box itself; anchor 1: same centre y, x centre 5 vs 10.
  np.testing.assert_allclose(out["box_targets"][0], [0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(out["box_targets"][1],
                             [0, -0.25, 0, math.log(0.5)], atol=1e-6)
  np.testing.assert_array_equal(out["box_targets"][2:], np.zeros((5, 4)))
  # Equal thresholds: nothing is ignored.
  out = AnchorLabeler(0.5, 0.5, force_match=False)(ANCHORS, gt, [3])
  np.testing.assert_array_equal(out["cls_targets"], [3, 3, 0, 0, 0, 0, 0])


def test_labeler_force_match_small_box():
  gt = [[0, 0, 10, 10], [100, 100, 104, 104]]  # IoU 16 / 100 with anchor 4
  out = AnchorLabeler(force_match=False)(ANCHORS, gt, [3, 7])
  assert int(out["cls_targets"][4]) == 0
  out = AnchorLabeler(force_match=True)(ANCHORS, gt, [3, 7])
  np.testing.assert_array_equal(out["cls_targets"], [3, 3, 0, 0, 7, 0, 0])
  assert int(out["matched_gt"][4]) == 1
  np.testing.assert_allclose(
      out["box_targets"][4],
      box_ops.encode_boxes(tf.constant(gt[1], tf.float32), ANCHORS[4]),
      atol=1e-6)


def test_labeler_force_match_conflicts_and_ties():
  # Both small boxes have anchor 4 as their best: it goes to the one it
  # overlaps most (box 1, IoU 0.25 against box 0's 0.16).
  gt = [[100, 100, 104, 104], [101, 101, 106, 106], [200, 207, 204, 208]]
  out = AnchorLabeler()(ANCHORS, gt, [5, 6, 8])
  assert int(out["cls_targets"][4]) == 6
  assert int(out["matched_gt"][4]) == 1
  # Box 2 overlaps anchors 5 and 6 equally (IoU 0.04): both are matched.
  np.testing.assert_array_equal(out["cls_targets"][5:], [8, 8])


def test_labeler_padded_ground_truth_never_matches():
  gt = [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 50, 50], [100, 100, 104, 104]]
  classes = [3, 9, 4, 0]
  valid = [True, False, True, True]  # row 2 has zero area, row 3 class 0
  out = AnchorLabeler()(ANCHORS, gt, classes, valid)
  np.testing.assert_array_equal(out["cls_targets"], [3, 3, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(out["matched_gt"], [0, 0, -1, -1, -1, -1, -1])


def test_labeler_without_ground_truth():
  for gt, classes, valid in ((tf.zeros([0, 4]), tf.zeros([0], tf.int32), None),
                             (tf.ones([3, 4]), [1, 2, 3], [False] * 3)):
    out = AnchorLabeler()(ANCHORS, gt, classes, valid)
    np.testing.assert_array_equal(out["cls_targets"], np.zeros(7))
    assert not np.any(out["positive"]) and not np.any(out["ignore"])
    assert float(out["num_positives"]) == 0.0
    np.testing.assert_array_equal(out["box_targets"], np.zeros((7, 4)))


def test_labeler_in_tf_data():
  anchors = retinanet_anchors()
  labeler = AnchorLabeler()
  # Ground truths padded to 4 rows; the second image has none.
  boxes = np.zeros((2, 4, 4), np.float32)
  boxes[0, :2] = [[20, 30, 60, 90], [70, 10, 100, 30]]
  classes = np.array([[1, 5, 0, 0], [0, 0, 0, 0]], np.int32)
  valid = classes > 0

  def parse(b, c, v):
    return labeler.multilevel_targets(anchors, b, c, v)

  dataset = tf.data.Dataset.from_tensor_slices((boxes, classes, valid))
  dataset = dataset.map(parse).batch(2)
  spec = dataset.element_spec
  assert spec["cls_targets"]["3"].shape.as_list() == [None, 16, 16, 9]
  assert spec["box_targets"]["7"].shape.as_list() == [None, 1, 1, 36]
  batch = next(iter(dataset))
  eager = labeler(anchors.boxes(), boxes[0], classes[0], valid[0])
  np.testing.assert_array_equal(
      flatten_levels(batch["cls_targets"], 1)[0, :, 0], eager["cls_targets"])
  np.testing.assert_allclose(flatten_levels(batch["box_targets"], 4)[0],
                             eager["box_targets"])
  classes_found = set(np.unique(eager["cls_targets"]))
  assert {1, 5} <= classes_found
  assert float(batch["num_positives"][0]) == float(eager["num_positives"]) > 0
  assert float(batch["num_positives"][1]) == 0.0
  assert np.all(flatten_levels(batch["cls_targets"], 1)[1].numpy() == 0)


def test_labeler_rejects_bad_thresholds():
  with pytest.raises(ValueError, match="unmatched_threshold <= match"):
    AnchorLabeler(match_threshold=0.4, unmatched_threshold=0.5)


# --------------------------------------------------------- post-processing

NUM_CLASSES = 4


def small_anchors():
  # Levels 3..4 on 32 x 32: 4 x 4 + 2 x 2 cells, one square anchor of side
  # 8 (level 3) or 16 (level 4) per cell.
  return Anchors(3, 4, 1, (1.0,), 1.0, (32, 32))


def head_outputs(batch=1):
  cls = {"3": np.full((batch, 4, 4, NUM_CLASSES), -10.0, np.float32),
         "4": np.full((batch, 2, 2, NUM_CLASSES), -10.0, np.float32)}
  box = {"3": np.zeros((batch, 4, 4, 4), np.float32),
         "4": np.zeros((batch, 2, 2, 4), np.float32)}
  return cls, box


def detect(cls, box, **kwargs):
  kwargs.setdefault("max_detections", 5)
  return {k: v.numpy() for k, v in multilevel_detections(
      cls, box, small_anchors(), (32, 32), **kwargs).items()}


@pytest.mark.parametrize("nms_method", ["combined", "batched"])
def test_postprocess_single_detection(nms_method):
  cls, box = head_outputs()
  cls["3"][0, 1, 2, 2] = 3.0
  box["3"][0, 1, 2] = [0.1, -0.2, math.log(1.5), 0.0]
  cls["3"][0, 3, 3, 0] = 10.0  # background column: never output
  out = detect(cls, box, nms_method=nms_method)
  # Anchor of cell (1, 2): centre (12, 20), side 8 -> centre (12.8, 18.4),
  # height 12, width 8.
  np.testing.assert_allclose(out["boxes"][0, 0], [6.8, 14.4, 18.8, 22.4],
                             atol=1e-4)
  np.testing.assert_allclose(out["scores"][0, 0], 1 / (1 + math.exp(-3)),
                             rtol=1e-5)
  assert out["classes"][0, 0] == 2
  assert out["num_detections"][0] == 1
  # Padding after num_detections.
  np.testing.assert_array_equal(out["boxes"][0, 1:], 0)
  np.testing.assert_array_equal(out["scores"][0, 1:], 0)
  np.testing.assert_array_equal(out["classes"][0, 1:], 0)
  assert out["classes"].dtype == np.int32
  assert out["num_detections"].dtype == np.int32


@pytest.mark.parametrize("nms_method", ["combined", "batched"])
def test_postprocess_threshold_nms_and_max_detections(nms_method):
  cls, box = head_outputs()
  # Score threshold 0.05: logit -3 (0.047) is dropped, -2.9 (0.052) kept.
  cls["3"][0, 0, 0, 1] = -3.0
  cls["3"][0, 0, 3, 1] = -2.9
  # Cells (2, 1) and (2, 2) shifted onto the same box: same class -> one
  # survives; another class on the same box is kept.
  cls["3"][0, 2, 1, 3] = 2.0
  cls["3"][0, 2, 2, 3] = 1.0
  box["3"][0, 2, 2] = [0.0, -1.0, 0.0, 0.0]
  cls["3"][0, 2, 2, 1] = 0.5
  out = detect(cls, box, nms_method=nms_method)
  assert out["num_detections"][0] == 3
  np.testing.assert_array_equal(out["classes"][0], [3, 1, 1, 0, 0])
  np.testing.assert_allclose(
      out["scores"][0, :3],
      1 / (1 + np.exp(-np.array([2.0, 0.5, -2.9]))), rtol=1e-5)
  np.testing.assert_allclose(out["boxes"][0, 0], out["boxes"][0, 1])
  # max_detections keeps the best ones.
  out = detect(cls, box, nms_method=nms_method, max_detections=2)
  np.testing.assert_array_equal(out["classes"][0], [3, 1])
  assert out["num_detections"][0] == 2


@pytest.mark.parametrize("nms_method", ["combined", "batched"])
def test_postprocess_static_shapes_in_tf_function(nms_method):
  anchors = small_anchors()
  spec = ({"3": tf.TensorSpec([2, 4, 4, NUM_CLASSES]),
           "4": tf.TensorSpec([2, 2, 2, NUM_CLASSES])},
          {"3": tf.TensorSpec([2, 4, 4, 4]), "4": tf.TensorSpec([2, 2, 2, 4])})

  @tf.function(input_signature=spec)
  def run(cls, box):
    return multilevel_detections(cls, box, anchors, (32, 32),
                                 max_detections=7, nms_method=nms_method)

  concrete = run.get_concrete_function()
  shapes = {k: v.shape.as_list() for k, v in
            concrete.structured_outputs.items()}
  assert shapes == {"boxes": [2, 7, 4], "scores": [2, 7], "classes": [2, 7],
                    "num_detections": [2]}
  cls, box = head_outputs(batch=2)
  cls["4"][0, 0, 0, 2] = 1.0
  cls["3"][1, 0, 0, 1] = 1.0
  cls["3"][1, 3, 3, 3] = 2.0
  out = run(cls, box)
  np.testing.assert_array_equal(out["num_detections"], [1, 2])
  np.testing.assert_array_equal(out["classes"][:, :3], [[2, 0, 0], [3, 1, 0]])


def test_postprocess_methods_agree_on_random_outputs():
  anchors = retinanet_anchors(size=128)
  rng = np.random.default_rng(0)
  cls = {str(l): rng.normal(-3, 2, (2, 128 >> l, 128 >> l, 9 * 6))
         .astype("float32") for l in range(3, 8)}
  box = {str(l): rng.normal(0, 0.3, (2, 128 >> l, 128 >> l, 36))
         .astype("float32") for l in range(3, 8)}
  outs = [multilevel_detections(cls, box, anchors, (128, 128),
                                pre_nms_top_k=1000, nms_method=m)
          for m in ("combined", "batched")]
  assert int(outs[0]["num_detections"][0]) == 100
  for key in outs[0]:
    np.testing.assert_allclose(outs[0][key], outs[1][key], atol=1e-5)
  boxes = outs[0]["boxes"].numpy()
  assert boxes.min() >= 0 and boxes.max() <= 128


def test_postprocess_clips_to_per_image_sizes():
  cls, box = head_outputs(batch=2)
  cls["3"][:, 1, 2, 2] = 3.0
  box["3"][:, 1, 2] = [0.1, -0.2, math.log(1.5), 0.0]
  out = multilevel_detections(cls, box, small_anchors(),
                              tf.constant([[32, 32], [16, 20]]),
                              max_detections=5)
  np.testing.assert_allclose(out["boxes"][:, 0], [[6.8, 14.4, 18.8, 22.4],
                                                  [6.8, 14.4, 16.0, 20.0]],
                             atol=1e-4)


def test_postprocess_errors():
  cls, box = head_outputs()
  with pytest.raises(ValueError, match="num_classes=5"):
    multilevel_detections(cls, box, small_anchors(), (32, 32), num_classes=5)
  with pytest.raises(ValueError, match="anchors cover levels"):
    multilevel_detections(cls, box, retinanet_anchors(), (32, 32))


def test_batched_postprocess_compiles_with_xla():
  anchors = small_anchors()
  cls, box = head_outputs(batch=2)
  cls["3"][0, 1, 2, 2] = 3.0
  cls["3"][1, 2, 2, 1] = 2.0

  @tf.function(jit_compile=True)
  def run(cls, box):
    return multilevel_detections(cls, box, anchors, (32, 32), max_detections=5,
                                 nms_method="batched")

  out = run(cls, box)
  np.testing.assert_array_equal(out["num_detections"], [1, 1])
  np.testing.assert_array_equal(out["classes"][:, 0], [2, 1])
