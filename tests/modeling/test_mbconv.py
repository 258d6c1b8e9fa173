"""MBConv block, depthwise conv-BN, squeeze-excitation and MBConv resampling."""

import numpy as np
import pytest

from modeling.layers.mbconv import (DepthwiseConvBNAct, MBConvBlock,
                                    SqueezeExcitation)
from modeling.layers.resampling import MBConvResample
from tests.modeling.layer_harness import check_layer


def test_depthwise_conv_bn_act_harness():
  check_layer(lambda: DepthwiseConvBNAct(3, 2, "swish", name="dw"),
              (2, 9, 9, 6), (2, 5, 5, 6))


def test_squeeze_excitation_harness():
  check_layer(lambda: SqueezeExcitation(2, "swish", name="se"),
              (2, 4, 4, 12), (2, 4, 4, 12))


def test_squeeze_excitation_hard_sigmoid_harness():
  # The config round trip inside fails if the gate is not serialized: the
  # clone would gate with a sigmoid.
  check_layer(lambda: SqueezeExcitation(3, "relu", "hard_sigmoid",
                                        name="se"),
              (2, 4, 4, 12), (2, 4, 4, 12))


def _set_se_weights(layer, channels, rng):
  layer.build((None, 4, 4, channels))
  weights = [rng.normal(size=w.shape).astype("float32")
             for w in layer.get_weights()]
  layer.set_weights(weights)
  return weights


@pytest.mark.parametrize("activation,gating", [
    ("swish", "sigmoid"),        # EfficientNet's form, the MBConv default
    ("relu", "hard_sigmoid"),    # Model Garden's SpineNet-Mobile
])
def test_squeeze_excitation_computes_its_gate(activation, gating):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 4, 4, 6)).astype("float32")
  layer = SqueezeExcitation(2, activation, gating, name="se")
  w1, b1, w2, b2 = _set_se_weights(layer, 6, rng)
  squeeze = x.mean(axis=(1, 2)) @ w1[0, 0] + b1
  squeeze = (np.maximum(squeeze, 0) if activation == "relu"
             else squeeze / (1 + np.exp(-squeeze)))
  logits = squeeze @ w2[0, 0] + b2
  if gating == "sigmoid":
    gate = 1 / (1 + np.exp(-logits))
  else:
    # Model Garden's constant 0.16667, not 1 / 6.
    gate = np.clip(logits + 3, 0, 6) * 0.16667
  np.testing.assert_allclose(layer(x), x * gate[:, None, None, :],
                             rtol=1e-5, atol=1e-6)


def test_hard_sigmoid_uses_model_gardens_constant():
  # Reduce weights zero, expand bias 5: every gate is relu6(8) * 0.16667.
  layer = SqueezeExcitation(1, "relu", "hard_sigmoid", name="se")
  layer.build((None, 2, 2, 3))
  layer.reduce.kernel.assign(np.zeros((1, 1, 3, 1), "float32"))
  layer.expand.bias.assign(np.full((3,), 5.0, "float32"))
  out = layer(np.ones((1, 2, 2, 3), "float32")).numpy()
  np.testing.assert_array_equal(out, np.float32(6.0) * np.float32(0.16667))
  assert out.flat[0] != 1.0


def test_mbconv_squeeze_excitation_options():
  default = MBConvBlock(8, 8, activation="hard_swish", name="mb")
  # Defaults unchanged: the block activation and a sigmoid.
  assert (default.se.activation, default.se.gating) == ("hard_swish",
                                                        "sigmoid")
  config = default.get_config()
  assert (config["se_inner_activation"], config["se_gating"]) == (
      None, "sigmoid")
  # A config saved before the options existed rebuilds the same block.
  del config["se_inner_activation"], config["se_gating"]
  old = MBConvBlock.from_config(config)
  assert (old.se.activation, old.se.gating) == ("hard_swish", "sigmoid")
  garden = MBConvBlock(8, 8, se_inner_activation="relu",
                       se_gating="hard_sigmoid", name="mb2")
  assert (garden.se.activation, garden.se.gating) == ("relu", "hard_sigmoid")
  # The block activation stays swish everywhere else.
  assert garden.depthwise.activation == "swish"
  assert MBConvBlock.from_config(garden.get_config()).se.gating == (
      "hard_sigmoid")


def test_mbconv_with_model_gardens_squeeze_excitation_harness():
  check_layer(lambda: MBConvBlock(8, 8, se_inner_activation="relu",
                                  se_gating="hard_sigmoid", name="mb"),
              (2, 8, 8, 8), (2, 8, 8, 8))


@pytest.mark.parametrize("in_filters,filters,strides,expected", [
    (8, 8, 1, (2, 8, 8, 8)),      # residual
    (8, 16, 2, (2, 4, 4, 16)),    # strided, no residual
    (8, 12, 1, (2, 8, 8, 12)),    # width change, no residual
])
def test_mbconv_harness(in_filters, filters, strides, expected):
  check_layer(lambda: MBConvBlock(in_filters, filters, strides,
                                  stochastic_depth_rate=0.1,
                                  activation="hard_swish", name="mb"),
              (2, 8, 8, in_filters), expected)


def test_mbconv_widths_and_parameter_count():
  block = MBConvBlock(10, 10, 1, expand_ratio=6, se_ratio=0.2, name="mb")
  block.build((None, 8, 8, 10))
  assert block.use_residual
  # SE width from the block input (10 * 0.2 = 2), not the expanded 60.
  assert block.se.reduced_filters == 2
  expected = (10 * 60 + 2 * 60          # expand conv + BN
              + 9 * 60 + 2 * 60         # depthwise + BN
              + 60 * 2 + 2 + 2 * 60 + 60  # SE convs with biases
              + 60 * 10 + 2 * 10)       # project + BN
  assert sum(int(np.prod(w.shape)) for w in block.trainable_weights) == expected
  assert not MBConvBlock(10, 12, 1, name="mb2").use_residual
  assert not MBConvBlock(10, 10, 2, name="mb3").use_residual
  assert MBConvBlock(10, 10, se_ratio=None, name="mb4").se is None


def test_mbconv_rejects_bad_arguments():
  with pytest.raises(ValueError, match="expand_ratio"):
    MBConvBlock(8, 8, expand_ratio=0)
  with pytest.raises(ValueError, match="se_ratio"):
    MBConvBlock(8, 8, se_ratio=2.0)
  with pytest.raises(ValueError, match=r"mb_gate: unknown se_gating "
                     r"'hard'; expected one of \['sigmoid', 'hard_sigmoid'\]"):
    MBConvBlock(8, 8, se_gating="hard", name="mb_gate")
  with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
    MBConvBlock(8, 8, se_inner_activation="gelu")
  with pytest.raises(ValueError, match="se: unknown se_gating 'tanh'"):
    SqueezeExcitation(2, "relu", "tanh", name="se")
  block = MBConvBlock(8, 8, name="mb")
  with pytest.raises(ValueError, match="in_filters is 8"):
    block.build((None, 4, 4, 6))


@pytest.mark.parametrize("mode", ["strided_conv", "space_to_depth"])
@pytest.mark.parametrize("input_level,target_level,in_side,out_side", [
    (3, 3, 8, 8), (3, 4, 8, 4), (2, 5, 16, 2), (5, 3, 2, 8)])
def test_mbconv_resample_harness(mode, input_level, target_level, in_side,
                                 out_side):
  check_layer(lambda: MBConvResample(input_level, target_level,
                                     (out_side, out_side), 12,
                                     downsample_mode=mode, name="resample"),
              (2, in_side, in_side, 6), (2, out_side, out_side, 12))


def test_space_to_depth_resample_costs_a_little_more():
  def params(mode):
    layer = MBConvResample(2, 4, (2, 2), 16, downsample_mode=mode, name="r")
    layer.build((None, 8, 8, 8))
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
  # strided: 2 depthwise (9*8 + 2*8 each) + 1x1 8->16 + BN;
  # space-to-depth: 1 depthwise on 32 channels + 1x1 32->16 + BN.
  assert params("strided_conv") == 2 * (72 + 16) + 8 * 16 + 32
  assert params("space_to_depth") == (9 * 32 + 64) + 32 * 16 + 32


def test_space_to_depth_odd_sides_follow_same_padding():
  layer = MBConvResample(3, 4, (4, 4), 8, downsample_mode="space_to_depth",
                         name="r")
  out = layer(np.zeros((1, 7, 7, 4), "float32"))
  assert tuple(out.shape) == (1, 4, 4, 8)


def test_resample_rejects_unknown_mode():
  with pytest.raises(ValueError, match="downsample_mode"):
    MBConvResample(2, 3, (4, 4), 8, downsample_mode="pool")
