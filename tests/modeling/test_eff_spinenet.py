"""SpineNet-MBConv and Eff-SpineNet backbones (issue 5), at 128 px."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling import analysis
from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS, parse_block_specs
from modeling.backbones.spinenet_mbconv import (MBCONV_BLOCK_SPECS,
                                                SpineNetMBConv,
                                                spinenet_mbconv)
from modeling.decoders.identity import identity
from modeling.heads.retinanet import RetinaNetHead
from modeling.models.retinanet import build_retinanet
from modeling.losses.retinanet import retinanet_losses
from modeling.ops.anchors import Anchors
from modeling.ops.target_assigner import AnchorLabeler
from tests.modeling.layer_harness import assert_checkpoint_covers

SIZE = 128


def _check_endpoints(model, width):
  assert sorted(model.output_specs, key=int) == ["3", "4", "5", "6", "7"]
  for level, shape in model.output_specs.items():
    side = SIZE // 2 ** int(level)
    assert shape == (None, side, side, width), (level, shape)


@pytest.mark.parametrize("model_id", sorted(eff_lib.SCALING_MAP))
def test_eff_spinenet_variants_build(model_id):
  model = eff_lib.eff_spinenet((SIZE, SIZE, 3), model_id)
  _check_endpoints(model, eff_lib.SCALING_MAP[model_id]["head_filters"])
  assert len(model.block_widths) == 18


@pytest.mark.parametrize("model_id,width", [("49", 48), ("49S", 40),
                                            ("49XS", 24), ("49XXS", 24)])
def test_spinenet_mbconv_variants_build(model_id, width):
  _check_endpoints(spinenet_mbconv((SIZE, SIZE, 3), model_id), width)


def test_widths_repeats_and_multiplier():
  d2 = eff_lib.eff_spinenet((SIZE, SIZE, 3), "D2")
  assert d2.block_widths == [int(w * 1.1) for w in
                             eff_lib.EFF_SPINENET_D0_FILTERS]
  names = [layer.name for layer in d2.layers]
  # D1/D2 repeat block 1 (stem L1) and block 5 (spec block 3) twice.
  assert "stem_block_1_repeat_2" in names and "block_3_repeat_2" in names
  assert "block_1_repeat_2" not in names
  b0 = eff_lib.eff_spinenet((SIZE, SIZE, 3), "B0")
  assert b0.block_widths == list(eff_lib.SP_EFFICIENTNET_B0_FILTERS)


def test_config_round_trip_and_checkpoint_coverage():
  model = eff_lib.eff_spinenet((SIZE, SIZE, 3), "M0", init_stochastic_depth_rate=0.2)
  clone = SpineNetMBConv.from_config(model.get_config())
  assert clone.count_params() == model.count_params()
  assert clone.get_config() == model.get_config()
  images = np.random.default_rng(0).normal(size=(1, SIZE, SIZE, 3))
  clone.set_weights(model.get_weights())
  for level, value in model(images).items():
    np.testing.assert_allclose(clone(images)[level], value, atol=1e-5)
  assert_checkpoint_covers(model)


def test_invalid_specs_name_the_entry():
  with pytest.raises(ValueError, match="block_filters has 17 entries"):
    eff_lib.eff_spinenet((SIZE, SIZE, 3), "D0", block_filters=[16] * 17)
  bad = list(eff_lib.EFF_SPINENET_D0_FILTERS)
  bad[3] = 0
  with pytest.raises(ValueError, match=r"block_filters\[3\] \(block 4\)"):
    eff_lib.eff_spinenet((SIZE, SIZE, 3), "D0", block_filters=bad)
  with pytest.raises(ValueError, match="block_repeats has 17 entries"):
    eff_lib.eff_spinenet((SIZE, SIZE, 3), "D0", block_repeats=[1] * 17)
  with pytest.raises(ValueError, match="block_filters has 17 entries.*18"):
    SpineNetMBConv((SIZE, SIZE, 3), block_filters=[16] * 17)
  specs = list(MBCONV_BLOCK_SPECS)
  specs[4] = (4, "bottleneck", (3, 5), False)
  with pytest.raises(ValueError, match=r"block_specs\[4\].*'bottleneck'"):
    SpineNetMBConv((SIZE, SIZE, 3), block_specs=specs)
  specs[4] = (4, "mbconv", (3, 9), False)
  with pytest.raises(ValueError, match=r"block_specs\[4\].*offset 9"):
    SpineNetMBConv((SIZE, SIZE, 3), block_specs=specs)
  with pytest.raises(ValueError, match="Unknown Eff-SpineNet model_id"):
    eff_lib.eff_spinenet((SIZE, SIZE, 3), "D7")
  with pytest.raises(ValueError, match="downsample_mode"):
    eff_lib.eff_spinenet((SIZE, SIZE, 3), "M0", downsample_mode="pool")
  with pytest.raises(ValueError, match="DropBlock"):
    spinenet_mbconv((SIZE, SIZE, 3), "49", dropblock_keep_prob=0.9)


def test_spinenet_specs_still_reject_mbconv():
  parse_block_specs(SPINENET_BLOCK_SPECS)
  with pytest.raises(ValueError, match="unknown block type 'mbconv'"):
    parse_block_specs(MBCONV_BLOCK_SPECS)


def test_table9_switches_move_cost_as_the_paper():
  """Space-to-depth adds a little; weighted fusion adds almost nothing."""
  def stats(fusion, downsample):
    model = eff_lib.eff_spinenet((SIZE, SIZE, 3), "D0", fusion_mode=fusion,
                                 downsample_mode=downsample)
    return (analysis.count_params(model, trainable_only=True),
            analysis.count_multiply_adds(model, (SIZE, SIZE, 3)))
  full = stats("weighted", "space_to_depth")
  no_s2d = stats("weighted", "strided_conv")
  neither = stats("sum", "strided_conv")
  # Paper Table 9: 3.6M / 2.5B -> 3.3M / 2.4B -> 3.3M / 2.4B.
  assert 1.05 < full[0] / no_s2d[0] < 1.2
  assert 1.0 < full[1] / no_s2d[1] < 1.1
  assert 0 < no_s2d[0] - neither[0] < 1e-3 * neither[0]
  assert 0 <= no_s2d[1] - neither[1] < 1e-2 * neither[1]


def test_mixed_bfloat16_fusion_weights_float32_and_training_step_finite():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    keras.utils.set_random_seed(0)
    backbone = eff_lib.eff_spinenet((SIZE, SIZE, 3), "M0",
                                    feature_multiplier=0.25,
                                    endpoints_num_filters=16,
                                    activation="swish",
                                    init_stochastic_depth_rate=0.2)
    fusion_weights = [w for w in backbone.weights
                      if "fusion_weights" in w.path]
    assert len(fusion_weights) == 16
    assert all(w.dtype == "float32" for w in fusion_weights)
    head = RetinaNetHead(3, 7, num_classes=5, num_convs=1, num_filters=16,
                         use_separable_conv=True, activation="swish")
    model = build_retinanet(backbone, identity(backbone.output_specs, 3, 7),
                            head)
    anchors = Anchors(3, 7, 3, (0.5, 1.0, 2.0), 3.0, (SIZE, SIZE))
    targets = AnchorLabeler().multilevel_targets(
        anchors, [[30.0, 40.0, 70.0, 90.0]], [2])
    labels = tf.nest.map_structure(lambda t: t[None], targets)
    images = tf.random.normal((1, SIZE, SIZE, 3), seed=0)
    optimizer = keras.optimizers.SGD(0.01)
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      losses = retinanet_losses(outputs["cls_outputs"], outputs["box_outputs"],
                                labels, num_classes=5)
    grads = tape.gradient(losses["total_loss"], model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert all(w.dtype == "float32" for w in fusion_weights)
  finally:
    keras.mixed_precision.set_global_policy("float32")
