"""SpineNet-MBConv's squeeze-excitation options reach every MBConv block.

se_inner_activation / se_gating (modeling/layers/mbconv.py): the default is
EfficientNet's form (block activation, sigmoid); 'relu' + 'hard_sigmoid' is
Model Garden's SpineNet-Mobile. A scaled-down 49XS at 128 px keeps it fast.
"""

import numpy as np
import pytest

from modeling.backbones.spinenet_mbconv import SpineNetMBConv, spinenet_mbconv
from modeling.layers.mbconv import MBConvBlock

SMALL = dict(filter_size_scale=0.125, endpoints_num_filters=8)


def _blocks(model):
  return [l for l in model.layers if isinstance(l, MBConvBlock)]


def _build(**kwargs):
  return spinenet_mbconv((128, 128, 3), "49XS", **SMALL, **kwargs)


@pytest.fixture(scope="module", name="garden")
def _garden():
  # Built once for the two tests below (each build takes seconds).
  return _build(se_inner_activation="relu", se_gating="hard_sigmoid")


def test_options_reach_every_block_and_change_only_the_function(garden):
  default = _build()
  # 2 stem blocks + 16 spec blocks (MBCONV_BLOCK_SPECS).
  assert len(_blocks(default)) == len(_blocks(garden)) == 18
  assert {(b.se.activation, b.se.gating) for b in _blocks(default)} == {
      ("swish", "sigmoid")}
  assert {(b.se.activation, b.se.gating) for b in _blocks(garden)} == {
      ("relu", "hard_sigmoid")}
  config = default.get_config()
  assert (config["se_inner_activation"], config["se_gating"]) == (
      None, "sigmoid")
  # Same variables, same shapes: only the squeeze-excitation's functions
  # differ, so the outputs do.
  assert [tuple(w.shape) for w in default.weights] == [
      tuple(w.shape) for w in garden.weights]
  garden.set_weights(default.get_weights())
  images = np.random.default_rng(0).normal(size=(1, 128, 128, 3)).astype(
      "float32")
  a, b = default(images, training=False), garden(images, training=False)
  # Freshly initialised outputs are small (level 3 within 0.05), so the
  # change is measured against each level's magnitude (0.4-0.5% measured).
  for level in a:
    assert np.max(np.abs(a[level] - b[level])) > 1e-3 * np.max(
        np.abs(a[level])), level


def test_config_round_trip_keeps_the_options(garden):
  config = garden.get_config()
  assert (config["se_inner_activation"], config["se_gating"]) == (
      "relu", "hard_sigmoid")
  clone = SpineNetMBConv.from_config(config)
  assert clone.get_config() == config
  clone.set_weights(garden.get_weights())
  images = np.random.default_rng(1).normal(size=(1, 128, 128, 3)).astype(
      "float32")
  a, b = garden(images, training=False), clone(images, training=False)
  for level in a:
    np.testing.assert_array_equal(a[level], b[level])


def test_bad_options_name_the_argument():
  with pytest.raises(ValueError, match=r"spinenet49xs_mbconv: unknown "
                     r"se_gating 'hard'; expected one of"):
    _build(se_gating="hard")
  with pytest.raises(ValueError, match=r"spinenet49xs_mbconv: "
                     r"se_inner_activation: Unknown activation 'gelu'"):
    _build(se_inner_activation="gelu")
