"""Tests for the segmentation head and the segmenter assembly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.backbones.spinenet import spinenet
from modeling.heads.segmentation import SegmentationHead
from modeling.models.segmentation import build_segmenter
from tests.modeling.layer_harness import assert_checkpoint_covers, check_layer

SHAPES = {"3": (2, 16, 16, 8), "4": (2, 8, 8, 8), "5": (2, 4, 4, 8)}


def fake_backbone(size=128, channels=8, levels=(3, 4, 5, 6, 7)):
  """A cheap backbone: images -> dict str(level) of pooled 1x1 conv features."""
  images = keras.Input((size, size, 3), name="images")
  x = keras.layers.Conv2D(channels, 1)(images)
  outputs = {str(l): keras.layers.AveragePooling2D(2**l)(x) for l in levels}
  return keras.Model(images, outputs)


@pytest.fixture
def bfloat16_policy():
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  yield
  keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("separable", [True, False])
def test_head_harness(separable):
  check_layer(lambda: SegmentationHead(
      num_classes=5, min_level=3, max_level=5, num_convs=2, num_filters=16,
      use_separable_conv=separable, activation="swish"),
              SHAPES, (2, 16, 16, 5))


def test_head_averages_nearest_upsampled_levels():
  """With no convs and an identity classifier the output is the P3..P5 mean."""
  head = SegmentationHead(num_classes=8, min_level=3, max_level=5,
                          num_convs=0)
  rng = np.random.default_rng(0)
  features = {k: rng.normal(size=s).astype("float32")
              for k, s in SHAPES.items()}
  head.build(SHAPES)
  head.classifier.kernel.assign(np.eye(8, dtype="float32")[None, None])
  out = head(features).numpy()
  expected = np.zeros(SHAPES["3"], np.float32)
  for level, x in features.items():
    factor = 2 ** (int(level) - 3)
    expected += np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)
  np.testing.assert_allclose(out, expected / 3, rtol=1e-5, atol=1e-6)


def test_head_layer_structure():
  head = SegmentationHead(num_classes=21, num_convs=3, num_filters=64,
                          use_separable_conv=True)
  head.build({str(l): (None, 64 // 2**(l - 3), 64 // 2**(l - 3), 40)
              for l in range(3, 8)})
  assert [type(c).__name__ for c in head.convs] == ["SeparableConv2D"] * 3
  assert head.convs[0].depthwise_kernel.shape == (3, 3, 40, 1)
  assert head.convs[0].pointwise_kernel.shape == (1, 1, 40, 64)
  assert head.convs[1].pointwise_kernel.shape == (1, 1, 64, 64)
  assert head.classifier.kernel.shape == (1, 1, 64, 21)


def test_head_input_errors_name_the_levels():
  head = SegmentationHead(num_classes=3, min_level=3, max_level=7)
  with pytest.raises(ValueError, match=r"levels 3..7 but the features have "
                     r"levels 3..5 \(missing \['6', '7'\]\)"):
    head({k: tf.zeros(s) for k, s in SHAPES.items()})
  uneven = dict(SHAPES, **{"4": (2, 8, 8, 4)})
  with pytest.raises(ValueError, match=r"one width; got widths \[4, 8\]"):
    SegmentationHead(num_classes=3, min_level=3, max_level=5).build(uneven)
  with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
    SegmentationHead(num_classes=1)
  with pytest.raises(ValueError, match="impossible level range"):
    SegmentationHead(num_classes=3, min_level=5, max_level=3)


def test_segmenter_logits_at_input_size_float32(bfloat16_policy):
  head = SegmentationHead(num_classes=4, num_convs=1, num_filters=8)
  model = build_segmenter(fake_backbone(), None, head)
  logits = model(tf.zeros([2, 128, 128, 3]), training=True)
  assert logits.shape == (2, 128, 128, 4) and logits.dtype == tf.float32


def test_segmenter_upsamples_the_stride_8_logits_bilinearly():
  head = SegmentationHead(num_classes=3, num_convs=0)
  model = build_segmenter(fake_backbone(), None, head)
  images = np.random.default_rng(1).normal(size=(1, 128, 128, 3))
  images = images.astype("float32")
  inner = keras.Model(model.input, model.get_layer(head.name).output)
  coarse = inner(images)
  assert coarse.shape == (1, 16, 16, 3)
  np.testing.assert_allclose(
      model(images), tf.image.resize(coarse, [128, 128], method="bilinear"),
      rtol=1e-5, atol=1e-6)


def test_segmenter_level_mismatch_names_both_ranges():
  head = SegmentationHead(num_classes=3, min_level=3, max_level=7)
  with pytest.raises(ValueError, match=r"levels 3..7 but the backbone outputs "
                     r"levels 3..5 \(missing \['6', '7'\]\)"):
    build_segmenter(fake_backbone(levels=(3, 4, 5)), None, head)


def test_spinenet_segmenter_checkpoint_round_trip():
  def make():
    backbone = spinenet((128, 128, 3), "49", filter_size_scale=0.125,
                        resample_alpha=0.25, endpoints_num_filters=16)
    head = SegmentationHead(num_classes=5, num_convs=2, num_filters=8)
    return build_segmenter(backbone, None, head)
  model = make()
  assert model(tf.zeros([1, 128, 128, 3])).shape == (1, 128, 128, 5)
  assert_checkpoint_covers(model, make)
