"""Tests for the decoders (modeling/decoders): FPN, identity, registry."""

import keras
import numpy as np
import pytest

from modeling.backbones.resnet import resnet
from modeling.decoders.auto_fpn import auto_fpn
from modeling.decoders.fpn import FPN, fpn
from modeling.decoders.identity import identity
from modeling.decoders.registry import DECODERS

IMAGE_SIZE = 128


def count_trainable(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.fixture(scope="module")
def backbone():
  return resnet((IMAGE_SIZE, IMAGE_SIZE, 3), 50)


@pytest.fixture(scope="module")
def features(backbone):
  images = np.random.RandomState(0).rand(2, IMAGE_SIZE, IMAGE_SIZE, 3)
  return backbone(images.astype("float32"), training=False)


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


def fake_specs(levels, size=IMAGE_SIZE, channels=8):
  return {str(l): (None, size // 2**l, size // 2**l, channels) for l in levels}


def test_registry():
  assert DECODERS == {"identity": identity, "fpn": fpn, "auto_fpn": auto_fpn}


def test_fpn_on_resnet50(backbone, features):
  decoder = fpn(backbone.output_specs, min_level=3, max_level=7)
  outputs = decoder(features, training=False)
  assert sorted(outputs) == ["3", "4", "5", "6", "7"]
  for level in range(3, 8):
    side = IMAGE_SIZE // 2**level
    assert tuple(outputs[str(level)].shape) == (2, side, side, 256)
  assert decoder.output_specs == {
      str(l): (None, IMAGE_SIZE // 2**l, IMAGE_SIZE // 2**l, 256)
      for l in range(3, 8)}
  # Laterals 512/1024/2048 -> 256 (+bias), five 3x3 256 -> 256 convs (+bias),
  # five batch norms (gamma, beta).
  expected = ((512 + 1024 + 2048) * 256 + 3 * 256 +
              5 * (9 * 256 * 256 + 256) + 5 * 2 * 256)
  assert count_trainable(decoder) == expected == 3_871_232


def test_fpn_levels_within_backbone():
  decoder = fpn(fake_specs(range(2, 8)), min_level=2, max_level=6,
                num_filters=16)
  outputs = decoder({l: np.zeros((1,) + s[1:], "float32")
                     for l, s in fake_specs(range(2, 8)).items()})
  assert {k: tuple(v.shape) for k, v in outputs.items()} == {
      str(l): (1, IMAGE_SIZE // 2**l, IMAGE_SIZE // 2**l, 16)
      for l in range(2, 7)}
  # Every output level is a lateral: no stride-2 convs.
  assert not [l for l in decoder.layers if l.name.startswith("coarser")]


def test_fpn_level_mismatch_names_both_ranges():
  with pytest.raises(ValueError) as info:
    fpn(fake_specs(range(3, 8)), min_level=2, max_level=7)
  message = str(info.value)
  assert "2..7" in message  # the FPN's levels
  assert "3..7" in message  # the backbone's levels
  assert "[2]" in message   # the missing one


def test_fpn_min_level_above_backbone():
  with pytest.raises(ValueError, match=r"2\.\.5"):
    fpn(fake_specs(range(2, 6)), min_level=6, max_level=7)


def test_fpn_rejects_list_specs(backbone):
  with pytest.raises(ValueError, match="output_specs"):
    fpn(backbone.output_shape)


def test_fpn_separable():
  specs = fake_specs(range(3, 6), channels=32)
  decoder = fpn(specs, min_level=3, max_level=7, num_filters=16,
                use_separable_conv=True)
  separable = [l for l in decoder.layers
               if isinstance(l, keras.layers.SeparableConv2D)]
  assert len(separable) == 5
  outputs = decoder({l: np.ones((1,) + s[1:], "float32")
                     for l, s in specs.items()})
  assert tuple(outputs["7"].shape) == (1, 1, 1, 16)


def test_fpn_config_round_trip(features, backbone):
  decoder = fpn(backbone.output_specs, activation="swish", num_filters=64)
  config = decoder.get_config()
  clone = FPN.from_config(config)
  assert clone.get_config() == config
  assert count_trainable(clone) == count_trainable(decoder)
  clone.set_weights(decoder.get_weights())
  expected = decoder(features, training=False)
  actual = clone(features, training=False)
  for level in expected:
    np.testing.assert_allclose(actual[level], expected[level], rtol=1e-5,
                               atol=1e-5)


def test_identity_passes_through(backbone, features):
  decoder = identity(backbone.output_specs, min_level=3, max_level=5)
  outputs = decoder(features)
  assert sorted(outputs) == ["3", "4", "5"]
  for level in outputs:
    np.testing.assert_array_equal(outputs[level], features[level])


def test_identity_level_mismatch_names_both_ranges(backbone):
  with pytest.raises(ValueError) as info:
    identity(backbone.output_specs, min_level=3, max_level=7)
  assert "3..7" in str(info.value) and "2..5" in str(info.value)


def test_mixed_bfloat16_forward(bfloat16_policy):
  backbone = resnet((IMAGE_SIZE, IMAGE_SIZE, 3), 50)
  decoder = fpn(backbone.output_specs, num_filters=32)
  images = np.random.RandomState(1).rand(1, IMAGE_SIZE, IMAGE_SIZE, 3)
  outputs = decoder(backbone(images.astype("float32"), training=False),
                    training=False)
  for level in range(3, 8):
    output = outputs[str(level)]
    side = IMAGE_SIZE // 2**level
    assert tuple(output.shape) == (1, side, side, 32)
    assert output.dtype == "bfloat16"
    assert np.isfinite(np.asarray(output, dtype="float32")).all()


def test_identity_keeps_bfloat16(bfloat16_policy):
  decoder = identity(fake_specs([3, 4]), min_level=3, max_level=4)
  features = {str(l): keras.ops.ones((1, IMAGE_SIZE // 2**l,
                                      IMAGE_SIZE // 2**l, 8), "bfloat16")
              for l in (3, 4)}
  outputs = decoder(features)
  for level in ("3", "4"):
    assert outputs[level].dtype == "bfloat16"
    np.testing.assert_array_equal(np.asarray(outputs[level], "float32"),
                                  np.asarray(features[level], "float32"))
