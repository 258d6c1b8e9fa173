"""Tests for the RetinaNet head, model and detector wrapper.

The losses are tested in tests/modeling/test_losses.py.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.backbones.spinenet import spinenet
from modeling.decoders.identity import identity
from modeling.heads.retinanet import RetinaNetHead
from modeling.models.retinanet import RetinaNetDetector, build_retinanet
from modeling.losses.retinanet import retinanet_losses
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
