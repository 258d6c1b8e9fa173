"""Tests of the loss package (modeling/losses/): values and normalisers.

Each loss is checked against the formula written out in numpy, and each
replica-aware normaliser by running the loss on two replicas (the two
logical CPUs of tests/conftest.py) and comparing the sum of the shares with
the one-device loss of the same global batch.
"""

import numpy as np
import pytest
import tensorflow as tf

from modeling.losses import maskrcnn as maskrcnn_losses
from modeling.losses.classification import classification_loss
from modeling.losses.elementwise import focal_loss, huber
from modeling.losses.normalizers import global_count, global_sum
from modeling.losses.retinanet import huber_box_loss, retinanet_losses
from modeling.losses.segmentation import segmentation_loss
from modeling.ops.anchors import flatten_levels


def _shares(strategy, function, per_replica_inputs):
  """Runs function on each replica's inputs; returns the local results."""
  values = strategy.experimental_distribute_values_from_function(
      lambda context: per_replica_inputs[context.replica_id_in_sync_group])
  shares = strategy.run(tf.function(function), args=(values,))
  return [float(v) for v in strategy.experimental_local_results(shares)]


# ------------------------------------------------------------- normalisers


def test_global_count_sums_over_replicas(mirrored_strategy):
  masks = (tf.constant([True, False, True]), tf.constant([True, True, True]))
  assert _shares(mirrored_strategy, global_count, masks) == [5.0, 5.0]
  local = _shares(mirrored_strategy, lambda m: global_count(m, False), masks)
  assert local == [2.0, 3.0]
  # One device (no replica context of several replicas): the value itself.
  assert float(global_count(masks[0])) == 2.0
  assert float(global_sum(tf.constant(4.0))) == 4.0
  # A normaliser is a constant of the step: no gradient flows through it.
  x = tf.constant([0.5, 2.0])
  with tf.GradientTape() as tape:
    tape.watch(x)
    count = global_count(x)
  assert tape.gradient(count, x) is None


def test_huber_is_quadratic_then_linear():
  errors = np.array([-0.3, -0.1, 0.0, 0.05, 0.1, 2.0], np.float32)
  expected = np.where(np.abs(errors) <= 0.1, 0.5 * errors ** 2,
                      0.1 * (np.abs(errors) - 0.05))
  np.testing.assert_allclose(huber(errors, 0.1), expected, rtol=1e-6)
  # delta = 1 is Fast R-CNN's smooth L1.
  np.testing.assert_allclose(huber(np.float32([0.5, 3.0]), 1.0),
                             [0.125, 2.5], rtol=1e-6)


# --------------------------------------------------------------- RetinaNet


def numpy_focal(logits, targets, alpha, gamma):
  """Per-anchor focal loss written out directly (columns 1..C-1)."""
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  losses = []
  for row, t in zip(p, targets):
    if t < 0:
      losses.append(0.0)
      continue
    total = 0.0
    for c in range(1, len(row)):
      if c == t:
        total += -alpha * (1 - row[c]) ** gamma * np.log(row[c])
      else:
        total += -(1 - alpha) * row[c] ** gamma * np.log(1 - row[c])
    losses.append(total)
  return np.array(losses)


def test_focal_loss_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (40, 6)).astype(np.float32)
  targets = rng.integers(-1, 6, 40).astype(np.int32)
  result = focal_loss(logits, targets, alpha=0.25, gamma=1.5).numpy()
  np.testing.assert_allclose(result, numpy_focal(logits, targets, 0.25, 1.5),
                             rtol=1e-4, atol=1e-6)
  assert np.all(result[targets == -1] == 0)
  # Column 0 (background) takes no part: changing it changes nothing.
  shifted = logits.copy()
  shifted[:, 0] += 5
  np.testing.assert_allclose(focal_loss(shifted, targets), focal_loss(
      logits, targets), rtol=1e-6)
  # Extreme logits stay finite, and so do the gradients.
  big = tf.constant([[0.0, 80.0, -80.0], [0.0, -80.0, 80.0]])
  with tf.GradientTape() as tape:
    tape.watch(big)
    loss = tf.reduce_sum(focal_loss(big, [1, 1]))
  assert np.isfinite(loss.numpy())
  assert np.all(np.isfinite(tape.gradient(loss, big).numpy()))


def test_huber_box_loss():
  deltas = np.array([[0.0, 0.05, 0.3, -0.2], [1.0, 1.0, 1.0, 1.0]], np.float32)
  targets = np.zeros((2, 4), np.float32)
  result = huber_box_loss(deltas, targets, [True, False], delta=0.1).numpy()
  expected = 0.5 * 0.05**2 + 0.1 * (0.3 - 0.05) + 0.1 * (0.2 - 0.05)
  np.testing.assert_allclose(result, [expected, 0.0], rtol=1e-5)


def level_labels(rng, batch, num_classes):
  """Random outputs and labels on levels 3..4 of a 32 x 32 image, A = 2."""
  shapes = {"3": (4, 4), "4": (2, 2)}
  cls_out, box_out, cls_t, box_t = {}, {}, {}, {}
  for level, (h, w) in shapes.items():
    cls_out[level] = rng.normal(-2, 2, (batch, h, w, 2 * num_classes))
    box_out[level] = rng.normal(0, 0.2, (batch, h, w, 8))
    cls_t[level] = rng.choice([-1, 0, 0, 0, 1, 2], (batch, h, w, 2))
    box_t[level] = rng.normal(0, 0.2, (batch, h, w, 8))
  cast = lambda d, t: {k: tf.constant(v, t) for k, v in d.items()}
  return (cast(cls_out, tf.float32), cast(box_out, tf.float32),
          {"cls_targets": cast(cls_t, tf.int32),
           "box_targets": cast(box_t, tf.float32)})


def test_retinanet_losses_normaliser():
  rng = np.random.default_rng(1)
  cls_out, box_out, labels = level_labels(rng, 2, num_classes=3)
  losses = retinanet_losses(cls_out, box_out, labels, num_classes=3)
  targets = flatten_levels(labels["cls_targets"], 1).numpy().reshape(-1)
  positives = np.sum(targets > 0)
  assert positives > 0
  logits = flatten_levels(cls_out, 3).numpy().reshape(-1, 3)
  focal = numpy_focal(logits, targets, 0.25, 1.5).sum()
  error = np.abs(flatten_levels(box_out, 4).numpy() -
                 flatten_levels(labels["box_targets"], 4).numpy())
  error = error.reshape(-1, 4)
  huber = np.where(error <= 0.1, 0.5 * error**2, 0.1 * (error - 0.05))
  huber = huber[targets > 0].sum()
  np.testing.assert_allclose(losses["cls_loss"], focal / (positives + 1),
                             rtol=1e-4)
  np.testing.assert_allclose(losses["box_loss"],
                             huber / (4 * (positives + 1)), rtol=1e-4)
  np.testing.assert_allclose(
      losses["total_loss"], losses["cls_loss"] + 50 * losses["box_loss"],
      rtol=1e-6)
  with pytest.raises(ValueError, match="expected 2 anchors x 4 classes"):
    retinanet_losses(cls_out, box_out, labels, num_classes=4)


def test_retinanet_losses_sum_over_replicas_equals_global_batch(
    mirrored_strategy):
  strategy = mirrored_strategy
  rng = np.random.default_rng(2)
  cls_out, box_out, labels = level_labels(rng, 2, num_classes=3)
  full = retinanet_losses(cls_out, box_out, labels, num_classes=3)
  split = lambda tree, i: tf.nest.map_structure(lambda t: t[i:i + 1], tree)

  def per_replica(context):
    i = context.replica_id_in_sync_group
    return split((cls_out, box_out, labels), i)

  values = strategy.experimental_distribute_values_from_function(per_replica)

  @tf.function
  def run(global_normalizer):
    def step(inputs):
      return retinanet_losses(*inputs, num_classes=3,
                              global_normalizer=global_normalizer)
    result = strategy.run(step, args=(values,))
    return {k: strategy.reduce("SUM", v, axis=None)
            for k, v in result.items()}

  summed = run(True)
  for key in full:
    np.testing.assert_allclose(summed[key], full[key], rtol=1e-5)
  local = run(False)  # per-replica normalisers: not the global-batch loss
  assert abs(float(local["cls_loss"]) - float(full["cls_loss"])) > 1e-4

# --------------------------------------------------------------- Mask R-CNN


def _sigmoid_ce(logit, label):
  return max(logit, 0) - logit * label + np.log1p(np.exp(-abs(logit)))


def test_rpn_losses_skip_unsampled_anchors_and_normalise():
  scores = {"3": tf.constant([[[[2.0, -1.0], [0.5, 3.0]]]])}   # [1,1,2,2]
  targets = {"3": tf.constant([[[[1, 0], [-1, 1]]]])}
  boxes = {"3": tf.constant(np.full([1, 1, 2, 8], 0.5, np.float32))}
  box_targets = np.zeros([1, 1, 2, 8], np.float32)
  box_targets[0, 0, 0, :4] = [0.5, 0.5, 0.5, 0.7]   # error 0.2 on one coord
  score_loss, box_loss = maskrcnn_losses.rpn_losses(
      scores, boxes, targets, {"3": tf.constant(box_targets)},
      global_batch_size=2, rpn_batch_size_per_image=4)
  expected = (_sigmoid_ce(2.0, 1) + _sigmoid_ce(-1.0, 0) +
              _sigmoid_ce(3.0, 1)) / (2 * 4)
  np.testing.assert_allclose(score_loss, expected, rtol=1e-6)
  # Positives: anchors 0 and 3; anchor 3's target is 0 so its error is 0.5
  # on all 4 coordinates. Huber (delta 1/9) summed / (4 x 2 positives).
  delta = 1.0 / 9.0
  huber = lambda e: delta * (e - delta / 2)  # every error here is > delta
  np.testing.assert_allclose(box_loss, (huber(0.2) + 4 * huber(0.5)) / 8.0,
                             rtol=1e-5)


def test_fast_rcnn_losses_use_the_class_columns_and_skip_ignored_rows():
  logits = tf.constant([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0],
                         [5.0, -5.0, 9.0]]])
  classes = tf.constant([[2, 0, -1]])
  deltas = np.zeros([1, 3, 12], np.float32)
  deltas[0, 0, 8:12] = [0.5, 0.0, 0.0, 0.0]    # class 2's deltas of ROI 0
  deltas[0, 0, 4:8] = 100.0                     # class 1's: must be unused
  deltas[0, 1, :] = 100.0                       # background: no box loss
  targets = np.zeros([1, 3, 4], np.float32)
  class_loss, box_loss = maskrcnn_losses.fast_rcnn_losses(
      logits, tf.constant(deltas), classes, tf.constant(targets))
  log_softmax = lambda row, c: row[c] - np.log(np.sum(np.exp(row)))
  expected = -(log_softmax(np.array([2.0, 0.0, 1.0]), 2) +
               log_softmax(np.array([0.0, 3.0, 0.0]), 0)) / 2
  np.testing.assert_allclose(class_loss, expected, rtol=1e-5)
  np.testing.assert_allclose(box_loss, 0.5 * 0.5 ** 2 / 4.0, rtol=1e-5)


def test_mask_loss_counts_foreground_rows_only():
  logits = np.zeros([1, 2, 2, 2], np.float32)
  logits[0, 0] = [[2.0, -2.0], [0.0, 1.0]]
  logits[0, 1] = 50.0                        # a background row: skipped
  targets = np.zeros([1, 2, 2, 2], np.float32)
  targets[0, 0] = [[1.0, 0.0], [1.0, 0.0]]
  loss = maskrcnn_losses.mask_loss(tf.constant(logits), tf.constant(targets),
                              tf.constant([[3, 0]]))
  expected = (_sigmoid_ce(2.0, 1) + _sigmoid_ce(-2.0, 0) +
              _sigmoid_ce(0.0, 1) + _sigmoid_ce(1.0, 0)) / 4
  np.testing.assert_allclose(loss, expected, rtol=1e-5)

# ------------------------------------------------------------ segmentation


def cross_entropy(logits, label):
  logits = np.asarray(logits, np.float64)
  return np.log(np.exp(logits).sum()) - logits[label]


def test_segmentation_loss_is_the_mean_over_valid_pixels():
  logits = np.array([[[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                      [[0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]]], np.float32)
  labels = np.array([[[0, 2], [255, 1]]])
  expected = np.mean([cross_entropy(logits[0, 0, 0], 0),
                      cross_entropy(logits[0, 0, 1], 2),
                      cross_entropy(logits[0, 1, 1], 1)])
  loss = segmentation_loss(logits, labels, 3)
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  nothing = segmentation_loss(logits, np.full([1, 2, 2], 255), 3)
  assert float(nothing) == 0.0


def test_segmentation_replica_shares_sum_to_the_global_mean(mirrored_strategy):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 4, 4)).astype(np.int32)
  labels[0, :3] = 255  # Replica 0 has 4 valid pixels, replica 1 has 16.
  expected = segmentation_loss(logits, labels, 3)

  def per_replica(context):
    i = context.replica_id_in_sync_group
    return tf.constant(logits[i:i + 1]), tf.constant(labels[i:i + 1])

  inputs = mirrored_strategy.experimental_distribute_values_from_function(
      per_replica)
  shares = mirrored_strategy.run(
      tf.function(lambda x: segmentation_loss(x[0], x[1], 3)),
      args=(inputs,))
  values = [float(v) for v in
            mirrored_strategy.experimental_local_results(shares)]
  assert values[0] != pytest.approx(values[1])
  assert sum(values) == pytest.approx(float(expected), rel=1e-5)

# ---------------------------------------------------------- classification


def _smoothed_cross_entropy(logits, label, smoothing):
  logits = np.asarray(logits, np.float64)
  log_p = logits - np.log(np.exp(logits).sum())
  target = np.full(len(logits), smoothing / len(logits))
  target[label] += 1.0 - smoothing
  return -(target * log_p).sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_loss_with_label_smoothing(smoothing):
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 4.0]], np.float32)
  labels = np.array([0, 1])
  # Normalised by the global batch (8 here), not by the 2 local examples.
  expected = sum(_smoothed_cross_entropy(l, y, smoothing)
                 for l, y in zip(logits, labels)) / 8
  loss = classification_loss(logits, labels, 3, 8, smoothing)
  assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_classification_replica_shares_sum_to_the_global_mean(
    mirrored_strategy):
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=4).astype(np.int32)
  expected = float(classification_loss(logits, labels, 5, 4, 0.1))
  shares = _shares(
      mirrored_strategy,
      lambda x: classification_loss(x[0], x[1], 5, 4, 0.1),
      [(tf.constant(logits[:2]), tf.constant(labels[:2])),
       (tf.constant(logits[2:]), tf.constant(labels[2:]))])
  assert sum(shares) == pytest.approx(expected, rel=1e-5)


def test_classification_loss_rejects_bad_arguments():
  with pytest.raises(ValueError, match="label_smoothing must be in"):
    classification_loss(np.zeros((1, 3), np.float32), [0], 3, 1, 1.0)
  with pytest.raises(ValueError, match="logits have 4 columns, expected "
                     "num_classes = 3"):
    classification_loss(np.zeros((1, 4), np.float32), [0], 3, 1)
