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
