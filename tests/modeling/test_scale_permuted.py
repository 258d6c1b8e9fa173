"""The one description of a scale-permuted network against the built backbones.

modeling/backbones/scale_permuted.py derives nodes, wiring and an analytic
cost; SpineNet and SpineNetMBConv build their Keras graph from it. The
analytic parameter count must equal the built model's exactly (parameters
are a sum of kernel, batch-norm, bias and fusion-weight sizes: nothing is
approximate): trainable and all weights for the models built here, and the
trainable count official/model_stats.py measured for every registered id.
Models are built at 128 px: parameter counts do not depend on the input size.
"""

import ast
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from modeling import analysis
from modeling import architecture_graph as ag
from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones import scale_permuted as sp
from modeling.backbones import spinenet as spinenet_lib
from modeling.backbones import spinenet_mbconv as mbconv_lib
from modeling.layers.blocks import BLOCK_EXPANSION

SIZE = 128
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def _ablation_specs(name):
  """spinenet.block_specs of configs/backbones/ablations/<name>.gin."""
  path = os.path.join(REPO, "configs", "backbones", "ablations", f"{name}.gin")
  with open(path) as f:
    text = f.read()
  start = text.index("spinenet.block_specs")
  start = text.index("[", start)
  end = text.index("]\n", start) + 1
  return ast.literal_eval(text[start:end])


def _spinenet(model_id, **kwargs):
  return lambda: spinenet_lib.spinenet((SIZE, SIZE, 3), model_id, **kwargs)


def _mbconv(model_id):
  return lambda: mbconv_lib.spinenet_mbconv((SIZE, SIZE, 3), model_id)


def _eff(model_id, **kwargs):
  return lambda: eff_lib.eff_spinenet((SIZE, SIZE, 3), model_id, **kwargs)


# Block 11 (L5, unconsumed) made narrower than the L5 output block 13: it is
# then fused nowhere, reaches no endpoint and Keras leaves it out.
_D0_UNUSED_BLOCK = [96 if i == 12 else w
                    for i, w in enumerate(eff_lib.EFF_SPINENET_D0_FILTERS)]

# Built here (7 builds; the slowest part of the test). Every code path of
# the description is covered: residual, bottleneck, ResNeXt 32x8d,
# stem projection skipped (width 64 at scale 0.25), single-parent ablation
# (stem block 1 used only through stem block 2), MBConv with strided-conv or
# space-to-depth resampling, sum or weighted fusion, per-block repeats, and
# an unused block. The other registered ids differ from these only in
# widths and repeats; they are checked analytically against measured sizes
# below (test_registered_ids_match_their_measured_size).
VARIANTS = {
    "spinenet49s": _spinenet("49S"),
    "spinenet96_resnext32x8d": _spinenet(
        "96", filter_size_scale=0.25, resample_alpha=0.25,
        block_fn_override="resnext", resnext_base_width=8),
    "spinenet49_no_long_range": _spinenet(
        "49", filter_size_scale=0.25, resample_alpha=0.25,
        block_specs=_ablation_specs("spinenet49_no_long_range")),
    "mbconv49xs": _mbconv("49XS"),
    "eff_spinenet_m0": _eff("M0"),
    "eff_spinenet_d0_unused_block": _eff("D0", block_filters=_D0_UNUSED_BLOCK),
    "eff_spinenet_d1": _eff("D1"),
}

_built = {}


def _build(name):
  if name not in _built:
    _built[name] = VARIANTS[name]()
  return _built[name]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_analytic_parameters_equal_the_built_model(name):
  model = _build(name)
  network = model.network
  cost = network.cost()
  assert cost.params == analysis.count_params(model, trainable_only=True)
  assert cost.weights == analysis.count_params(model)
  # The description is a function of the config: rebuilding it from
  # get_config() (what a checkpointed experiment stores) gives the same one.
  family = (sp.SPINENET if isinstance(model, spinenet_lib.SpineNet)
            else sp.SPINENET_MBCONV)
  module = spinenet_lib if family == sp.SPINENET else mbconv_lib
  assert module.network_description(model.get_config()) == network
  layer_names = {layer.name for layer in model.layers}
  for node in network.nodes:
    last = f"{node.layer_prefix}_repeat_{node.repeats}"
    assert (last in layer_names) == node.is_used, node
    if node.is_used:
      shape = tuple(model.get_layer(last).output.shape[1:])
      assert shape == node.feature_size + (node.width,), node


# Multiply-adds against TF's profiler (modeling/analysis.py, what
# official/model_stats.py reports). The profiler's Conv2D +
# DepthwiseConv2dNative flops / 2 must equal the analytic count exactly.
# Its total also counts element-wise ops (batch-norm scale and shift, swish's
# multiply, residual and fusion adds, SE means and gating, max-pool
# compares), which the analytic count (the papers' convention) leaves out:
# measured at 128 px they add 0.5% for the residual family at full width
# (1.4% at filter_size_scale 0.25, where convs are narrower) and 5-11% for
# MBConv networks (cheap depthwise convs, swish and SE everywhere; most in
# the narrowest, 49XS: 10.4%), so the total must lie in [analytic,
# analytic * (1 + ELEMENTWISE_SHARE[family])].
# ResNeXt is left out: the profiler counts no flops for a grouped Conv2D.
ELEMENTWISE_SHARE = {sp.SPINENET: 0.03, sp.SPINENET_MBCONV: 0.15}


def _profiled_flops(model):
  spec = tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32)
  graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      spec).graph
  options = (tf.compat.v1.profiler.ProfileOptionBuilder(
      tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
             .with_empty_output().build())
  profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op",
                                          options=options)
  by_op = {}
  stack = [profile]
  while stack:
    node = stack.pop()
    by_op[node.name] = by_op.get(node.name, 0) + node.float_ops
    stack.extend(node.children)
  return by_op, profile.total_float_ops


@pytest.mark.parametrize("name", [
    "spinenet49_no_long_range", "mbconv49xs", "eff_spinenet_d1"])
def test_analytic_multiply_adds_match_the_profiler(name):
  model = _build(name)
  network = model.network
  madds = network.executed_madds()
  by_op, total = _profiled_flops(model)
  conv_flops = by_op.get("Conv2D", 0) + by_op.get("DepthwiseConv2dNative", 0)
  assert 2 * madds == conv_flops
  # Upsampling resamplers project before upsampling: fewer executed
  # multiply-adds than the network as the papers count it.
  assert madds < network.cost().madds
  # total / 2 is modeling/analysis.py's count_multiply_adds (same profile).
  assert madds <= total / 2 <= madds * (1 + ELEMENTWISE_SHARE[network.family])


def _eff_config(model_id, **overrides):
  """The SpineNetMBConv arguments eff_spinenet() passes for `model_id`."""
  scaling = eff_lib.SCALING_MAP[model_id]
  multiplier = scaling["feature_multiplier"]
  config = dict(
      block_specs=mbconv_lib.MBCONV_BLOCK_SPECS,
      block_filters=eff_lib.scaled_filters(
          scaling.get("block_filters", eff_lib.EFF_SPINENET_D0_FILTERS),
          multiplier),
      stem_filters=max(8, int(8 * multiplier)),
      block_repeats=list(scaling["block_repeats"]),
      endpoints_num_filters=scaling["head_filters"], fusion_mode="weighted",
      downsample_mode="space_to_depth")
  config.update(overrides)
  return config


# Backbone trainable parameters that official/model_stats.py measured on the
# experiments (configs/experiments/classification/spinenet*_imagenet.gin and
# retinanet/*_coco.gin: the model id's scaling; RetinaNet SpineNet-49S with
# 256-wide endpoints) before the backbones were built from the description.
MEASURED_BACKBONE_PARAMS = (
    ("spinenet49", spinenet_lib, dict(spinenet_lib.SCALING_MAP["49"]),
     21831488),
    ("spinenet49s_retinanet", spinenet_lib,
     dict(spinenet_lib.SCALING_MAP["49S"], endpoints_num_filters=256),
     9472959),
    ("spinenet96", spinenet_lib, dict(spinenet_lib.SCALING_MAP["96"]),
     36262976),
    ("spinenet143", spinenet_lib, dict(spinenet_lib.SCALING_MAP["143"]),
     60247616),
    ("spinenet190", spinenet_lib, dict(spinenet_lib.SCALING_MAP["190"]),
     126587664),
    ("mbconv49", mbconv_lib, dict(mbconv_lib.SCALING_MAP["49"]), 2268708),
    ("mbconv49xxs", mbconv_lib, dict(mbconv_lib.SCALING_MAP["49XXS"]), 842456),
    ("sp_efficientnet_b0", mbconv_lib, _eff_config("B0"), 4485585),
    ("eff_spinenet_m0", mbconv_lib, _eff_config("M0"), 615783),
    ("eff_spinenet_m1", mbconv_lib, _eff_config("M1"), 956380),
    ("eff_spinenet_m2", mbconv_lib, _eff_config("M2"), 2340544),
    ("eff_spinenet_d0", mbconv_lib, _eff_config("D0"), 3642839),
    ("eff_spinenet_d0_no_s2d", mbconv_lib,
     _eff_config("D0", downsample_mode="strided_conv"), 3217207),
    ("eff_spinenet_d0_no_s2d_sum", mbconv_lib,
     _eff_config("D0", downsample_mode="strided_conv", fusion_mode="sum"),
     3217174),
    ("eff_spinenet_d1", mbconv_lib, _eff_config("D1"), 5053738),
    ("eff_spinenet_d2", mbconv_lib, _eff_config("D2"), 6055886),
)


@pytest.mark.parametrize("name,module,config,params", MEASURED_BACKBONE_PARAMS,
                         ids=[row[0] for row in MEASURED_BACKBONE_PARAMS])
def test_registered_ids_match_their_measured_size(name, module, config,
                                                  params):
  del name
  assert module.network_description(config).cost().params == params


def test_143l_is_143_at_1_3x_width():
  """143L has no measured row; check it against 143's blocks by hand.

  Same specs, repeats and alpha as 143, widths int(FILTER_SIZE_MAP x 1.3).
  """
  n143 = spinenet_lib.network_description(spinenet_lib.SCALING_MAP["143"])
  n143l = spinenet_lib.network_description(spinenet_lib.SCALING_MAP["143L"])
  assert [(n.level, n.block_fn, n.repeats) for n in n143l.nodes] == [
      (n.level, n.block_fn, n.repeats) for n in n143.nodes]
  assert n143l.edges == n143.edges
  # Stem L2, stem L2, block 1 (L2), block 2 (L4).
  assert [n.filters for n in n143l.nodes[:4]] == [83, 83, 83, 332]
  assert n143l.cost().params > 1.6 * n143.cost().params


def test_spinenet49_block_costs_by_hand():
  """Block 1 of SpineNet-49 (L2 bottleneck, parents S1 and S2), by hand.

  Bottleneck 64 -> 256: 1x1 256x64 + 3x3 64x64 + 1x1 64x256 kernels and BN
  gamma/beta on 64 + 64 + 256 channels. Each resampling (L2 -> L2, parent
  inner width 64, alpha 0.5): 1x1 256x32 + BN(32), 1x1 32x256 + BN(256).
  """
  network = spinenet_lib.network_description({})
  cost = network.block_cost(2)
  assert cost.block.params == 256 * 64 + 9 * 64 * 64 + 64 * 256 + 2 * 384
  assert cost.block.non_trainable == 2 * 384
  assert [c.params for c in cost.resamples] == [256 * 32 + 64 + 32 * 256 +
                                                512] * 2
  assert cost.block.madds == 160 * 160 * (256 * 64 + 9 * 64 * 64 + 64 * 256)
  assert cost.fusion == sp.Cost() and cost.endpoint == sp.Cost()
  # The stem: 7x7x3x64 conv + BN, at 320 x 320 for a 640 px input.
  assert network.stem_cost() == sp.Cost(7 * 7 * 3 * 64 + 128, 128,
                                        7 * 7 * 3 * 64 * 320 * 320)
  total = network.stem_cost()
  for node in network.nodes:
    total += network.block_cost(node.index).total
  assert total == network.cost()  # Every block of SpineNet-49 is used.


def test_wiring_of_spinenet49():
  network = spinenet_lib.network_description({})
  assert [(e.parent, e.child) for e in network.edges
          if e.kind == sp.UNCONSUMED] == [(11, 14)]
  assert network.endpoints == {4: 12, 3: 13, 5: 14, 7: 15, 6: 16}
  # Block 3 takes block 1 (bottleneck, inner 64) and block 2 (residual,
  # inner = output = 256): alpha 0.5 of each.
  assert [network.resample_filters(e) for e in network.inputs(4)] == [32, 128]
  assert all(node.is_used for node in network.nodes)


def test_unconsumed_block_of_another_width_is_unused():
  config = dict(block_filters=eff_lib.scaled_filters(_D0_UNUSED_BLOCK, 1.0),
                block_specs=mbconv_lib.MBCONV_BLOCK_SPECS)
  network = mbconv_lib.network_description(config)
  assert [n.label for n in network.nodes if not n.is_used] == ["11"]
  assert not [e for e in network.edges if e.kind == sp.UNCONSUMED]


def test_bad_descriptions_name_the_problem():
  specs = sp.parse_block_specs(spinenet_lib.SPINENET_BLOCK_SPECS)
  widths = [64, 64] + [64] * len(specs)
  with pytest.raises(ValueError, match=r"Block 1: resampling parent S1.*= 0 "
                     r"channels \(resample_alpha=0.001\)"):
    sp.spinenet_network((128, 128), specs, widths, resample_alpha=0.001)
  with pytest.raises(ValueError, match="block_repeats must be an integer >= 1"):
    sp.spinenet_network((128, 128), specs, widths, block_repeats=0)
  with pytest.raises(ValueError, match="block_fn_override"):
    sp.spinenet_network((128, 128), specs, widths, block_fn_override="x")
  mb_specs = sp.parse_block_specs(mbconv_lib.MBCONV_BLOCK_SPECS,
                                  block_types=sp.MBCONV_BLOCK_TYPES)
  with pytest.raises(ValueError, match=r"block_filters has 3 entries.*18"):
    sp.mbconv_network((128, 128), mb_specs, [8, 8, 8])
  with pytest.raises(ValueError, match=r"block_repeats\[2\] \(block 3\) is 0"):
    sp.mbconv_network((128, 128), mb_specs, [8] * 18,
                      block_repeats=[1, 1, 0] + [1] * 15)
  with pytest.raises(ValueError, match="Unknown fusion mode 'max'"):
    sp.mbconv_network((128, 128), mb_specs, [8] * 18, fusion_mode="max")


def test_tables_agree_with_the_layers_and_the_drawing():
  assert sp.BLOCK_EXPANSION == BLOCK_EXPANSION
  assert (ag.PARENT, ag.UNCONSUMED) == (sp.PARENT, sp.UNCONSUMED)
  assert ag.FAMILIES == sp.FAMILIES
  assert ag.Edge is sp.Edge
  # The names other code imports from the SpineNet module still resolve.
  assert spinenet_lib.parse_block_specs is sp.parse_block_specs
  assert spinenet_lib.BlockSpec is sp.BlockSpec


def test_description_module_imports_without_tensorflow():
  """The module alone (as a search process loads it) pulls in no TF/Keras."""
  path = os.path.join(REPO, "modeling", "backbones", "scale_permuted.py")
  code = (
      "import importlib.util, sys\n"
      f"spec = importlib.util.spec_from_file_location('sp', {path!r})\n"
      "module = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(module)\n"
      "print(sorted(m for m in ('tensorflow', 'keras', 'numpy') "
      "if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "[]"
