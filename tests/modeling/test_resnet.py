"""Tests for the ResNet backbone (modeling/backbones/resnet.py)."""

import keras
import numpy as np
import pytest

from modeling.backbones.resnet import RESNET_SPECS, ResNet, resnet

IMAGE_SIZE = 128

# Channels of C2..C5: 4 x the stage's bottleneck width.
LEVEL_CHANNELS = {2: 256, 3: 512, 4: 1024, 5: 2048}


def count_trainable(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def expected_specs(image_size, min_level=2, max_level=5):
  return {str(level): (None, image_size // 2**level, image_size // 2**level,
                       LEVEL_CHANNELS[level])
          for level in range(min_level, max_level + 1)}


@pytest.fixture(scope="module")
def resnet50():
  return resnet((IMAGE_SIZE, IMAGE_SIZE, 3), 50)


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_resnet50_endpoints(resnet50):
  images = np.random.RandomState(0).rand(2, IMAGE_SIZE, IMAGE_SIZE, 3)
  outputs = resnet50(images.astype("float32"), training=False)
  assert sorted(outputs) == ["2", "3", "4", "5"]
  for level, spec in expected_specs(IMAGE_SIZE).items():
    assert tuple(outputs[level].shape) == (2,) + spec[1:]
  assert resnet50.output_specs == expected_specs(IMAGE_SIZE)


@pytest.mark.parametrize("depth", [101, 152])
def test_deeper_resnet_endpoints(depth):
  model = resnet((IMAGE_SIZE, IMAGE_SIZE, 3), depth)
  assert model.output_specs == expected_specs(IMAGE_SIZE)
  # One block layer per bottleneck: 3 + 4 + 23 + 3 or 3 + 8 + 36 + 3.
  blocks = [l for l in model.layers if "_block_" in l.name]
  assert len(blocks) == sum(RESNET_SPECS[depth])
  assert model.name == f"resnet{depth}"


def test_resnet50_param_count(resnet50):
  # torchvision resnet50: 25,557,032 minus its fc layer (2048 * 1000 + 1000).
  assert count_trainable(resnet50) == 25_557_032 - 2_049_000 == 23_508_032


def test_level_subset():
  model = resnet((64, 64, 3), 50, min_level=3, max_level=4)
  assert model.output_specs == expected_specs(64, 3, 4)


@pytest.mark.parametrize("min_level,max_level", [(1, 5), (2, 6), (4, 3)])
def test_bad_level_range(min_level, max_level):
  with pytest.raises(ValueError, match=r"2\.\.5") as info:
    resnet((64, 64, 3), 50, min_level=min_level, max_level=max_level)
  assert f"min_level={min_level}" in str(info.value)


def test_unknown_model_id():
  with pytest.raises(ValueError, match=r"\[50, 101, 152\]"):
    resnet((64, 64, 3), 34)


def test_config_round_trip(resnet50):
  config = resnet50.get_config()
  assert config["model_id"] == 50
  clone = ResNet.from_config(config)
  assert clone.get_config() == config
  assert count_trainable(clone) == count_trainable(resnet50)
  clone.set_weights(resnet50.get_weights())
  images = np.random.RandomState(1).rand(1, IMAGE_SIZE, IMAGE_SIZE, 3)
  images = images.astype("float32")
  expected = resnet50(images, training=False)
  actual = clone(images, training=False)
  for level in expected:
    np.testing.assert_allclose(actual[level], expected[level], rtol=1e-5,
                               atol=1e-5)


def test_regularization_placement():
  model = resnet((64, 64, 3), 50, init_stochastic_depth_rate=0.2,
                 dropblock_keep_prob=0.9, dropblock_size=3, activation="swish")
  blocks = {l.name: l for l in model.layers if "_block_" in l.name}
  # Linear ramp over all 16 blocks: first block 0.2 / 16, last 0.2.
  assert blocks["c2_block_1"].stochastic_depth_rate == pytest.approx(0.2 / 16)
  assert blocks["c5_block_3"].stochastic_depth_rate == pytest.approx(0.2)
  assert blocks["c4_block_1"].stochastic_depth_rate == pytest.approx(
      0.2 * 8 / 16)
  for name, block in blocks.items():
    expected = 0.9 if name[:2] in ("c4", "c5") else None
    assert block.dropblock_keep_prob == expected, name
  images = np.random.RandomState(2).rand(2, 64, 64, 3).astype("float32")
  outputs = model(images, training=True)
  assert all(np.isfinite(v).all() for v in outputs.values())


def test_mixed_bfloat16_forward(bfloat16_policy):
  model = resnet((64, 64, 3), 50)
  images = np.random.RandomState(3).rand(1, 64, 64, 3).astype("float32")
  outputs = model(images, training=False)
  for level, spec in expected_specs(64).items():
    assert tuple(outputs[level].shape) == (1,) + spec[1:]
    assert outputs[level].dtype == "bfloat16"
    assert np.isfinite(np.asarray(outputs[level], dtype="float32")).all()
