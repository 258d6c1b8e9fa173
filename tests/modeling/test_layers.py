"""Layer tests: every layer through the shared harness, plus behaviour."""

import numpy as np
import pytest
import tensorflow as tf

from modeling.layers import activations
from modeling.layers.blocks import BottleneckBlock, ResidualBlock, ResNeXtBlock
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.fusion import BlockFusion
from modeling.layers.regularization import (DropBlock, StochasticDepth,
                                            stochastic_depth_rate)
from modeling.layers.resampling import NearestUpsampling, SpineNetResample
from modeling.heads.classification import ClassificationHead
from tests.modeling.layer_harness import check_layer

B = 2


@pytest.mark.parametrize("activation", ["relu", "swish", "hard_swish", None])
def test_conv_bn_act(activation):
  check_layer(lambda: ConvBNAct(8, 3, 2, activation), (B, 9, 9, 4),
              (B, 5, 5, 8))


def test_residual_block():
  check_layer(lambda: ResidualBlock(8, strides=2, use_projection=True),
              (B, 8, 8, 4), (B, 4, 4, 8))


def test_bottleneck_block():
  check_layer(lambda: BottleneckBlock(4, use_projection=True,
                                      stochastic_depth_rate=0.1,
                                      dropblock_keep_prob=0.9),
              (B, 8, 8, 8), (B, 8, 8, 16))


@pytest.mark.parametrize("base_width,inner", [(4, 128), (8, 256)])
def test_resnext_block(base_width, inner):
  make = lambda: ResNeXtBlock(64, base_width=base_width, use_projection=True)
  layer = check_layer(make, (B, 4, 4, 64), (B, 4, 4, 256))
  assert layer.inner_filters == inner
  # The 3x3 conv is grouped 32 ways: its kernel is [3, 3, inner / 32, inner].
  assert tuple(layer.branch[1].conv.kernel.shape) == (3, 3, inner // 32, inner)


def test_block_without_projection_rejects_width_change():
  with pytest.raises(ValueError, match="use_projection=True"):
    BottleneckBlock(4)(np.zeros((1, 4, 4, 8), "float32"))


@pytest.mark.parametrize("input_level,target_level,in_size,out_size", [
    (3, 5, 16, 4),   # down two levels: stride-2 conv then one max-pool
    (5, 3, 4, 16),   # up two levels: nearest x4
    (4, 4, 8, 8),    # same level: 1x1 convs only
    (6, 5, 4, 7),    # non-integer factor (224 px classification)
])
def test_spinenet_resample(input_level, target_level, in_size, out_size):
  layer = check_layer(
      lambda: SpineNetResample(input_level, target_level, (out_size, out_size),
                               reduced_filters=4, target_filters=12),
      (B, in_size, in_size, 16), (B, out_size, out_size, 12))
  assert (layer.downsample is not None) == (target_level > input_level)
  assert layer.num_max_pools == max(0, target_level - input_level - 1)


def test_nearest_upsampling_repeats_pixels():
  x = np.arange(4, dtype="float32").reshape(1, 2, 2, 1)
  y = NearestUpsampling((4, 4))(x).numpy()[0, :, :, 0]
  np.testing.assert_array_equal(y, [[0, 0, 1, 1], [0, 0, 1, 1],
                                    [2, 2, 3, 3], [2, 2, 3, 3]])


@pytest.mark.parametrize("mode", ["sum", "weighted"])
def test_block_fusion_harness(mode):
  check_layer(lambda: BlockFusion(mode, activation="relu"),
              [(B, 4, 4, 8)] * 3, (B, 4, 4, 8))


def test_weighted_fusion_weights_nonnegative_and_normalised():
  layer = BlockFusion("weighted", epsilon=1e-3)
  a = np.ones((1, 2, 2, 1), "float32")
  b = 3 * np.ones((1, 2, 2, 1), "float32")
  out = layer([a, b]).numpy()
  # Initial weights are 1: (1 * 1 + 1 * 3) / (2 + eps).
  np.testing.assert_allclose(out, 4.0 / 2.001, rtol=1e-6)
  assert layer.fusion_weights.dtype == "float32"
  layer.fusion_weights.assign([-5.0, 2.0])  # a negative weight counts as 0
  w = layer.normalized_weights().numpy()
  assert np.all(w >= 0)
  np.testing.assert_allclose(w, [0.0, 2.0 / 2.001], rtol=1e-6)
  np.testing.assert_allclose(layer([a, b]).numpy(), 3 * 2.0 / 2.001, rtol=1e-6)


def test_weighted_fusion_stays_float32_under_bfloat16():
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    layer = BlockFusion("weighted")
    x = tf.ones((1, 2, 2, 1), tf.bfloat16)
    y = layer([x, x])
    assert y.dtype == tf.bfloat16
    assert layer.fusion_weights.dtype == "float32"
    assert layer.normalized_weights().dtype == tf.float32
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_fusion_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="share one shape"):
    BlockFusion()([np.zeros((1, 2, 2, 1), "float32"),
                   np.zeros((1, 4, 4, 1), "float32")])


def test_unknown_fusion_mode_and_activation():
  with pytest.raises(ValueError, match="Unknown fusion mode"):
    BlockFusion("max")
  with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
    ConvBNAct(4, activation="gelu")


def test_hard_swish_values():
  x = tf.constant([-4.0, -1.0, 0.0, 1.0, 4.0])
  np.testing.assert_allclose(activations.get_activation("hard_swish")(x),
                             [0.0, -1.0 / 3.0, 0.0, 2.0 / 3.0, 4.0], rtol=1e-6)


def test_stochastic_depth_identity_at_inference_random_in_training():
  check_layer(lambda: StochasticDepth(0.5), (B, 4, 4, 3), (B, 4, 4, 3))
  layer = StochasticDepth(0.5)
  x = tf.ones((512, 2, 2, 1))
  np.testing.assert_array_equal(layer(x, training=False), x)
  y = layer(x, training=True).numpy()
  per_sample = y.reshape(512, -1)
  # Whole samples are dropped (0) or kept and scaled by 1 / keep_prob (2).
  assert set(np.unique(per_sample)) == {0.0, 2.0}
  assert np.all(per_sample.min(1) == per_sample.max(1))
  assert 0.4 < np.mean(per_sample[:, 0] == 0.0) < 0.6
  assert not np.array_equal(layer(x, training=True), y)


def test_stochastic_depth_rate_is_linear_ramp():
  assert stochastic_depth_rate(0.2, 3, 15) == pytest.approx(0.04)
  assert stochastic_depth_rate(0.2, 15, 15) == pytest.approx(0.2)
  assert stochastic_depth_rate(0.0, 3, 15) is None


def test_dropblock_identity_at_inference_random_in_training():
  check_layer(lambda: DropBlock(0.9, 3), (B, 8, 8, 2), (B, 8, 8, 2))
  layer = DropBlock(keep_prob=0.9, block_size=3)
  x = tf.ones((8, 32, 32, 4))
  np.testing.assert_array_equal(layer(x, training=False), x)
  y = layer(x, training=True).numpy()
  dropped = np.mean(y == 0.0)
  assert 0.05 < dropped < 0.15  # about 1 - keep_prob
  # Kept activations are rescaled so the mean is preserved.
  assert y.mean() == pytest.approx(1.0, rel=1e-5)
  assert not np.array_equal(layer(x, training=True), y)
  # Drops are square blocks: every dropped pixel has a full 3x3 dropped
  # square containing it.
  mask = (y[0, :, :, 0] == 0.0)
  for i, j in zip(*np.nonzero(mask)):
    assert any(mask[max(a, 0):a + 3, max(b, 0):b + 3].all() and
               a >= 0 and b >= 0 and a + 3 <= 32 and b + 3 <= 32
               for a in range(i - 2, i + 1) for b in range(j - 2, j + 1))


def test_classification_head():
  shapes = {"3": (B, 8, 8, 16), "4": (B, 4, 4, 16), "5": (B, 2, 2, 16)}
  check_layer(lambda: ClassificationHead(10), shapes, (B, 10))
  head = ClassificationHead(3)
  features = {"3": tf.ones((1, 4, 4, 2)), "4": 4 * tf.ones((1, 2, 2, 2))}
  head(features)
  head.classifier.kernel.assign(np.eye(2, 3, dtype="float32"))
  head.classifier.bias.assign(np.zeros(3, "float32"))
  # Upsampled and averaged: (1 + 4) / 2 everywhere.
  np.testing.assert_allclose(head(features), [[2.5, 2.5, 0.0]])
  with pytest.raises(ValueError, match="levels"):
    ClassificationHead(3, levels=["6"])(features)


@pytest.mark.parametrize("size", [128, 200])
def test_classification_head_pools_the_average_of_upsampled_levels(size):
  # The head's function (SpineNet paper Sec. 4.2): levels nearest-upsampled
  # to the largest map, averaged, globally pooled. At 128 px every level
  # divides P3 and the head pools each level instead (the same function);
  # at 200 px (P3 25x25, P4 13x13) the upsampling is uneven and the head
  # averages the upsampled maps.
  sizes = {str(l): -(-size // 2 ** l) for l in range(3, 8)}
  features = {l: tf.random.stateless_normal((2, s, s, 4), [int(l), 1])
              for l, s in sizes.items()}
  head = ClassificationHead(5)
  logits = head(features)
  top = sizes["3"]
  upsampled = [tf.image.resize(features[l], [top, top], method="nearest")
               for l in sorted(features, key=int)]
  pooled = tf.reduce_mean(tf.add_n(upsampled) / 5.0, axis=[1, 2])
  expected = head.classifier(pooled)
  np.testing.assert_allclose(logits, expected, atol=1e-5)
