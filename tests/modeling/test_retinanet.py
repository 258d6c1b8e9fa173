"""Tests for the RetinaNet head, model, detector wrapper and losses."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.backbones.spinenet import spinenet
from modeling.decoders.identity import identity
from modeling.heads.retinanet import RetinaNetHead
from modeling.models.retinanet import RetinaNetDetector, build_retinanet
from modeling.models.retinanet_losses import (focal_loss, huber_box_loss,
                                              retinanet_losses)
from modeling.ops.anchors import Anchors, flatten_levels
from modeling.ops.target_assigner import AnchorLabeler
from tests.modeling.layer_harness import check_layer

IMAGE_SIZE = 128


@keras.saving.register_keras_serializable(package="spinenet_tests")
class FlatRetinaNetHead(keras.layers.Layer):
  """Harness adapter: one tensor [B, N, num_classes + 4], not two dicts."""

  def __init__(self, head_kwargs, **kwargs):
    super().__init__(**kwargs)
    self.head_kwargs = dict(head_kwargs)
    self.head = RetinaNetHead(**head_kwargs, name="head")

  def build(self, input_shape):
    self.head.build(input_shape)

  def call(self, features, training=None):
    cls, box = self.head(features, training=training)
    return tf.concat([flatten_levels(cls, self.head.num_classes),
                      flatten_levels(box, 4)], axis=-1)

  def compute_output_shape(self, input_shape):
    cls, _ = self.head.compute_output_shape(input_shape)
    first = next(iter(cls.values()))
    n = sum(s[1] * s[2] * self.head.num_anchors_per_location
            for s in cls.values())
    return (first[0], n, self.head.num_classes + 4)

  def get_config(self):
    return dict(super().get_config(), head_kwargs=self.head_kwargs)


def fake_backbone(size=64, channels=8, levels=(3, 4, 5, 6)):
  """A cheap backbone: images -> dict str(level) of pooled 1x1 conv features."""
  images = keras.Input((size, size, 3), name="images")
  x = keras.layers.Conv2D(channels, 1)(images)
  outputs = {str(l): keras.layers.AveragePooling2D(2**l)(x) for l in levels}
  return keras.Model(images, outputs)


def specs(model):
  return {k: tuple(v.shape) for k, v in model.output.items()}


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


# -------------------------------------------------------------------- head

HEAD = dict(min_level=3, max_level=4, num_classes=3,
            num_anchors_per_location=2, num_convs=2, num_filters=8)
FEATURES = {"3": (2, 8, 8, 16), "4": (2, 4, 4, 16)}


@pytest.mark.parametrize("separable", [False, True])
def test_head_harness(separable):
  kwargs = dict(HEAD, use_separable_conv=separable)
  check_layer(lambda: FlatRetinaNetHead(kwargs), FEATURES,
              (2, (64 + 16) * 2, 3 + 4))


def test_head_outputs_and_shapes():
  head = RetinaNetHead(**HEAD)
  features = {k: tf.random.normal(s) for k, s in FEATURES.items()}
  features["5"] = tf.random.normal((2, 2, 2, 16))  # extra levels are unused
  cls, box = head(features)
  assert {k: tuple(v.shape) for k, v in cls.items()} == {
      "3": (2, 8, 8, 6), "4": (2, 4, 4, 6)}
  assert {k: tuple(v.shape) for k, v in box.items()} == {
      "3": (2, 8, 8, 8), "4": (2, 4, 4, 8)}
  with pytest.raises(ValueError, match=r"levels 3..4 .*missing \['4'\]"):
    RetinaNetHead(**HEAD)({"3": features["3"]})


def test_head_shares_convs_with_per_level_batch_norm():
  head = RetinaNetHead(min_level=3, max_level=7, num_classes=91,
                       num_anchors_per_location=9, num_convs=4, num_filters=32)
  head.build({str(l): (None, None, None, 16) for l in range(3, 8)})
  convs = [w for w in head.weights if "conv" in w.path or "predict" in w.path]
  norms = [w for w in head.weights if "norm" in w.path]
  # 2 subnets x (4 convs + prediction) x (kernel, bias), once for all levels.
  assert len(convs) == 2 * 5 * 2
  # 2 subnets x 5 levels x 4 convs batch norms x (gamma, beta, mean, var).
  assert len(norms) == 2 * 5 * 4 * 4
  expected = (2 * (9 * 16 * 32 + 32 + 3 * (9 * 32 * 32 + 32)) +
              9 * 32 * 9 * 91 + 9 * 91 + 9 * 32 * 9 * 4 + 9 * 4 +
              2 * 5 * 4 * 4 * 32)
  assert sum(int(np.prod(w.shape)) for w in head.weights) == expected


def test_head_initialisation_prior():
  head = RetinaNetHead(**HEAD)
  cls, box = head({k: tf.random.normal(s) for k, s in FEATURES.items()})
  prior = -math.log((1 - 0.01) / 0.01)
  np.testing.assert_allclose(head.cls_predict.bias.numpy(), prior, rtol=1e-6)
  np.testing.assert_array_equal(head.box_predict.bias.numpy(), 0.0)
  np.testing.assert_allclose(tf.sigmoid(cls["3"]).numpy().mean(), 0.01,
                             rtol=0.01)
  assert float(tf.reduce_max(tf.abs(box["3"]))) < 1e-2
  std = float(tf.math.reduce_std(head.cls_convs[0].kernel))
  assert 0.008 < std < 0.012


def test_head_float32_outputs_under_mixed_bfloat16(bfloat16_policy):
  head = RetinaNetHead(**HEAD)
  cls, box = head({k: tf.random.normal(s) for k, s in FEATURES.items()},
                  training=True)
  assert head.cls_convs[0].compute_dtype == "bfloat16"
  for tensor in list(cls.values()) + list(box.values()):
    assert tensor.dtype == tf.float32
  inputs = {k: keras.Input(batch_shape=s, dtype="bfloat16")
            for k, s in FEATURES.items()}
  symbolic_cls, _ = RetinaNetHead(**HEAD)(inputs)
  assert symbolic_cls["3"].dtype == "float32"


# ------------------------------------------------------------------- model


def test_model_outputs_and_level_mismatch():
  backbone = fake_backbone()
  head = RetinaNetHead(3, 6, num_classes=5, num_anchors_per_location=9,
                       num_convs=1, num_filters=8)
  model = build_retinanet(backbone, identity(specs(backbone), 3, 6), head)
  out = model(tf.zeros((2, 64, 64, 3)))
  assert sorted(out) == ["box_outputs", "cls_outputs"]
  assert tuple(out["cls_outputs"]["6"].shape) == (2, 1, 1, 45)
  assert tuple(out["box_outputs"]["3"].shape) == (2, 8, 8, 36)

  head = RetinaNetHead(3, 7, num_classes=5, num_anchors_per_location=9)
  with pytest.raises(ValueError, match=r"head predicts on levels 3..7 but the "
                     r"decoder outputs levels 3..6"):
    build_retinanet(backbone, identity(specs(backbone), 3, 6), head)


def test_detector(tmp_path):
  backbone = fake_backbone()
  head = RetinaNetHead(3, 6, num_classes=5, num_anchors_per_location=9,
                       num_convs=1, num_filters=8)
  model = build_retinanet(backbone, identity(specs(backbone), 3, 6), head)
  detector = RetinaNetDetector(model, anchor_size=3.0, max_detections=10,
                               score_threshold=0.0)
  assert detector.anchors.num_anchors == 9 * (64 + 16 + 4 + 1)
  images = tf.random.normal((2, 64, 64, 3))
  out = detector(images)
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "boxes": (2, 10, 4), "scores": (2, 10), "classes": (2, 10),
      "num_detections": (2,)}
  assert np.all((out["classes"].numpy() >= 1) & (out["classes"].numpy() <= 4))
  path = str(tmp_path / "detector.keras")
  detector.save(path)
  reloaded = keras.models.load_model(path)
  np.testing.assert_allclose(reloaded(images)["scores"], out["scores"],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="9 anchors per location"):
    RetinaNetDetector(model, num_scales=1)


# ------------------------------------------------------------------ losses


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


# ------------------------------------------------------ end-to-end training


def test_tiny_spinenet_retinanet_trains():
  keras.utils.set_random_seed(0)
  backbone = spinenet((IMAGE_SIZE, IMAGE_SIZE, 3), "49",
                      filter_size_scale=0.25, resample_alpha=0.25,
                      endpoints_num_filters=64)
  head = RetinaNetHead(3, 7, num_classes=5, num_anchors_per_location=9,
                       num_convs=2, num_filters=32)
  model = build_retinanet(backbone, identity(backbone.output_specs, 3, 7),
                          head)
  anchors = Anchors(3, 7, 3, (0.5, 1.0, 2.0), 3.0, (IMAGE_SIZE, IMAGE_SIZE))
  targets = AnchorLabeler().multilevel_targets(
      anchors, [[30.0, 40.0, 70.0, 90.0]], [2])
  labels = tf.nest.map_structure(lambda t: t[None], targets)
  images = tf.random.normal((1, IMAGE_SIZE, IMAGE_SIZE, 3), seed=0)
  optimizer = keras.optimizers.SGD(0.01)
  history = []
  for _ in range(5):
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      losses = retinanet_losses(outputs["cls_outputs"], outputs["box_outputs"],
                                labels, num_classes=5)
    grads = tape.gradient(losses["total_loss"], model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    history.append(float(losses["total_loss"]))
  assert np.all(np.isfinite(history))
  assert history[-1] < 0.9 * history[0], history
