"""SP-EfficientNet-B0 and Eff-SpineNet M0-M2, D0-D2 (Eff-SpineNet paper, Sec. 3).

The network is SpineNetMBConv (modeling/backbones/spinenet_mbconv.py): the
SpineNet-49 topology of MBConv blocks (kernel 3, expansion 6, SE, swish),
with 18 blocks in Table 1 order (blocks 1-2: the level-1 and level-2 stem
MBConvs; blocks 3-18: MBCONV_BLOCK_SPECS), a width per block (Table 1),
the Table 2 feature multiplier and per-block repeats, weighted block fusion
(eq. 1) and space-to-depth downsampling (§3.2). Both switches are
arguments, so the Table 9 ablation is three configurations.

Choices written down here as the project rule (the evidence, measured with
official/model_stats.py, is in the experiment files and in
official/model_stats.py's PUBLISHED rows):
- Width of block i: int(table_width_i * feature_multiplier) (truncation, as
  SpineNet's filter_size_scale; at least 1); the multiplier 1.0 leaves Table 1
  untouched. Evidence (RetinaNet, official.model_stats, published M0 0.67M /
  0.15B, M1 0.99M / 0.51B, M2 2.36M / 0.97B):
    truncation:                M0 -3.9% / -3.7%, M1 +1.7% / -2.7%, M2 +2.9% / +3.5%
    EfficientNet round to 8:   M0 +0.1% / +7.8%, M1 +11.5% / +3.3%, M2 +5.9% / +12.9%
    round to 4:                M0 -0.7% / +4.8%, M1 +1.7% / -2.7%, M2 +3.7% / +4.6%
    nearest integer:           M0 -3.0% / -3.0%, M1 +1.7% / -2.7%, M2 +3.8% / +5.6%
  only truncation (and, barely, rounding to 4) keeps all three within 5%.
- The stem conv has int(8 * feature_multiplier) filters (at least 8), as in
  SpineNet-MBConv (the paper does not give it; its cost is negligible).
- Endpoints have the subnet width of Table 2 (24/40/64/64/88/112), so the
  RetinaNet head's first separable conv does not change width.
- SP-EfficientNet-B0 uses the same resampling and fusion as D0 (the paper's
  Table 8 changes only the widths between the two).
"""

from modeling.backbones.registry import register_backbone
from modeling.backbones.spinenet_mbconv import MBCONV_BLOCK_SPECS
from modeling.backbones.spinenet_mbconv import SpineNetMBConv

NUM_BLOCKS = 18

# Eff-SpineNet paper Table 1: output width of the 18 blocks.
SP_EFFICIENTNET_B0_FILTERS = (16, 24, 24, 24, 96, 40, 96, 152, 96, 152, 152,
                              152, 152, 96, 40, 152, 152, 152)
EFF_SPINENET_D0_FILTERS = (16, 24, 16, 16, 104, 48, 120, 40, 120, 168, 96,
                           192, 136, 104, 40, 136, 136, 40)

_ONES = (1,) * NUM_BLOCKS
_D1_REPEATS = (2, 2, 1, 1, 2, 2, 2, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1)

# Table 2: input size, feature multiplier, block repeats, subnet width (the
# endpoint width here) and subnet layers.
SCALING_MAP = {
    "B0": dict(image_size=512, feature_multiplier=1.0, block_repeats=_ONES,
               head_filters=64, head_convs=3,
               block_filters=SP_EFFICIENTNET_B0_FILTERS),
    "M0": dict(image_size=256, feature_multiplier=0.4, block_repeats=_ONES,
               head_filters=24, head_convs=3),
    "M1": dict(image_size=384, feature_multiplier=0.5, block_repeats=_ONES,
               head_filters=40, head_convs=3),
    "M2": dict(image_size=384, feature_multiplier=0.8, block_repeats=_ONES,
               head_filters=64, head_convs=3),
    "D0": dict(image_size=512, feature_multiplier=1.0, block_repeats=_ONES,
               head_filters=64, head_convs=3),
    "D1": dict(image_size=640, feature_multiplier=1.0,
               block_repeats=_D1_REPEATS, head_filters=88, head_convs=3),
    "D2": dict(image_size=768, feature_multiplier=1.1,
               block_repeats=_D1_REPEATS, head_filters=112, head_convs=3),
}


def scaled_filters(block_filters, feature_multiplier):
  """Table 1 widths times the Table 2 multiplier, truncated (at least 1)."""
  return [max(1, int(f * feature_multiplier)) for f in block_filters]


@register_backbone("eff_spinenet")
def eff_spinenet(input_shape=(512, 512, 3), model_id="D0", block_filters=None,
                 feature_multiplier=None, block_repeats=None,
                 endpoints_num_filters=None, fusion_mode="weighted",
                 downsample_mode="space_to_depth", block_specs=None,
                 min_level=3, max_level=7, stem_filters=None, expand_ratio=6,
                 kernel_size=3, se_ratio=0.2, fusion_epsilon=1e-3,
                 require_divisible_input=True, activation="swish",
                 use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
                 init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
                 dropblock_size=3, name=None):
  """Builds Eff-SpineNet-`model_id` (M0, M1, M2, D0, D1, D2) or SP-EfficientNet "B0".

  Args:
    input_shape: (H, W, 3).
    model_id: a SCALING_MAP key.
    block_filters: 18 widths before the multiplier (None: Table 1 for the
      model: D0's for Eff-SpineNet, SP-EfficientNet-B0's for "B0"); the
      resource-distribution tool's output goes here.
    feature_multiplier, block_repeats, endpoints_num_filters: None takes
      Table 2's value for the model id.
    fusion_mode: "weighted" (paper) or "sum" (Table 9 ablation).
    downsample_mode: "space_to_depth" (paper) or "strided_conv" (Table 9).
    block_specs: None for MBCONV_BLOCK_SPECS.
    stem_filters: None for int(8 * multiplier), at least 8.
    name: None for "eff_spinenet_<model_id>" ("sp_efficientnet_b0" for B0).
    Other arguments: see SpineNetMBConv.
  Returns:
    A SpineNetMBConv (outputs as modeling/backbones/registry.py says).
  Raises:
    ValueError: for an unknown model_id or bad block_filters, or as
      SpineNetMBConv raises.
  """
  model_id = str(model_id).upper()
  if model_id not in SCALING_MAP:
    raise ValueError(f"Unknown Eff-SpineNet model_id {model_id!r}; expected "
                     f"one of {list(SCALING_MAP)}.")
  scaling = SCALING_MAP[model_id]
  if block_filters is None:
    block_filters = scaling.get("block_filters", EFF_SPINENET_D0_FILTERS)
  block_filters = list(block_filters)
  if len(block_filters) != NUM_BLOCKS:
    raise ValueError(
        f"block_filters has {len(block_filters)} entries; Eff-SpineNet has "
        f"{NUM_BLOCKS} blocks (Table 1 order, stem blocks first): "
        f"{block_filters}")
  for i, value in enumerate(block_filters):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f"block_filters[{i}] (block {i + 1}) is {value!r}; "
                       "expected an integer >= 1.")
  multiplier = (scaling["feature_multiplier"] if feature_multiplier is None
                else feature_multiplier)
  repeats = scaling["block_repeats"] if block_repeats is None else block_repeats
  endpoints = (scaling["head_filters"] if endpoints_num_filters is None
               else endpoints_num_filters)
  if name is None:
    name = ("sp_efficientnet_b0" if model_id == "B0"
            else f"eff_spinenet_{model_id.lower()}")
  if stem_filters is None:
    stem_filters = max(8, int(8 * multiplier))
  return SpineNetMBConv(
      input_shape=input_shape, block_filters=scaled_filters(block_filters,
                                                            multiplier),
      block_repeats=list(repeats) if not isinstance(repeats, int) else repeats,
      endpoints_num_filters=endpoints, fusion_mode=fusion_mode,
      downsample_mode=downsample_mode,
      block_specs=MBCONV_BLOCK_SPECS if block_specs is None else block_specs,
      min_level=min_level, max_level=max_level, stem_filters=stem_filters,
      expand_ratio=expand_ratio, kernel_size=kernel_size, se_ratio=se_ratio,
      fusion_epsilon=fusion_epsilon,
      require_divisible_input=require_divisible_input, activation=activation,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
      name=name)
