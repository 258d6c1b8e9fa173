"""SpineNet with MBConv blocks (SpineNet appendix A) and its generalisation.

SpineNetMBConv is the scale-permuted network of SpineNet-49 built from
MBConv blocks: the model of SpineNet-49 / 49S / 49XS / 49XXS (mobile
detection) and, with per-block widths, per-block repeats, weighted fusion and
space-to-depth resampling, of SP-EfficientNet-B0 and Eff-SpineNet
(modeling/backbones/eff_spinenet.py). The architecture is data: block specs
(level, "mbconv", parent offsets, is_output) plus one width per block; the
nodes, wiring and cost come from modeling/backbones/scale_permuted.py
(network_description below), which the Keras graph is built from.

Network (SpineNet appendix A; docs/model_garden_conventions.md):
- stem: 3x3 stride-2 conv + BN + act to `stem_filters` (8 x scale), then two
  stem MBConv groups: level 1 (stride 1) and level 2 (stride 2). They are
  blocks 0 and 1 of the offsets (and blocks 1 and 2 of Eff-SpineNet's
  Table 1 numbering).
- every spec block: each parent is resampled to the block's width by
  MBConvResample, the resampled parents (plus, for an output block, every
  unconsumed earlier block of the same shape) are fused by BlockFusion (sum or
  weighted) and activated, then an MBConv group of `block_repeats` blocks of
  the same width (stride 1, so the identity shortcut is on).
- endpoints: 1x1 conv + BN + act to endpoints_num_filters at levels
  min_level..max_level.

Choices written down here as the project rule (evidence in
configs/experiments/retinanet/spinenet49_mbconv_coco.gin and
official/model_stats.py):
- Widths are int(map[level] * filter_size_scale) (Model Garden's rule), no
  rounding to multiples of 8.
- Stochastic depth ramps over the spec blocks (block k of N at
  init_rate * k / N, N = 16); the stem blocks get none.
- DropBlock is not implemented for MBConv blocks (no protocol uses it with
  them); dropblock_keep_prob must be None.
- The squeeze-excitation is EfficientNet's (block activation, sigmoid gate)
  unless se_inner_activation / se_gating say otherwise; Model Garden's
  SpineNet-Mobile, whose checkpoints official.import_checkpoint reads, is
  se_inner_activation='relu', se_gating='hard_sigmoid'
  (modeling/layers/mbconv.py says where each form comes from). Neither
  changes a width or a parameter count.
"""

import inspect

import keras

from modeling.backbones import scale_permuted
from modeling.backbones.scale_permuted import BlockSpec  # pylint: disable=unused-import
from modeling.backbones.scale_permuted import check_input_size
from modeling.backbones.registry import register_backbone
from modeling.backbones.scale_permuted import parse_block_specs
from modeling.layers import activations
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.fusion import BlockFusion
from modeling.layers.mbconv import MBConvBlock, check_se_gating
from modeling.layers.resampling import DOWNSAMPLE_MODES, MBConvResample

BLOCK_TYPES = scale_permuted.MBCONV_BLOCK_TYPES

# 16 MBConv blocks (docs/model_garden_conventions.md): (level, type, offsets,
# is_output); offsets 0 and 1 are the level-1 and level-2 stem blocks.
MBCONV_BLOCK_SPECS = (
    (2, "mbconv", (0, 1), False),
    (2, "mbconv", (1, 2), False),
    (4, "mbconv", (1, 2), False),
    (3, "mbconv", (3, 4), False),
    (4, "mbconv", (3, 5), False),
    (6, "mbconv", (4, 6), False),
    (4, "mbconv", (4, 6), False),
    (5, "mbconv", (7, 8), False),
    (7, "mbconv", (7, 9), False),
    (5, "mbconv", (9, 10), False),
    (5, "mbconv", (9, 11), False),
    (4, "mbconv", (6, 11), True),
    (3, "mbconv", (5, 11), True),
    (5, "mbconv", (8, 13), True),
    (7, "mbconv", (6, 15), True),
    (6, "mbconv", (13, 15), True),
)

# MBConv width per level (level 0: the stem conv) before filter_size_scale.
FILTER_SIZE_MAP = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}

# Levels of the two stem MBConv blocks and their strides.
STEM_LEVELS = (1, 2)
STEM_STRIDES = (1, 2)

# SpineNet appendix A, both versions. 49XXS is 49XS at 256 px (first
# paper version); the 256 px input is the experiment's.
SCALING_MAP = {
    "49": dict(endpoints_num_filters=48, filter_size_scale=1.0),
    "49S": dict(endpoints_num_filters=40, filter_size_scale=0.65),
    "49XS": dict(endpoints_num_filters=24, filter_size_scale=0.6),
    "49XXS": dict(endpoints_num_filters=24, filter_size_scale=0.6),
}


def level_widths(specs, filter_size_scale=1.0):
  """Per-block widths from FILTER_SIZE_MAP: stem blocks first, then the specs."""
  levels = list(STEM_LEVELS) + [s.level for s in specs]
  return [int(FILTER_SIZE_MAP[level] * filter_size_scale) for level in levels]


def network_description(config):
  """The scale-permuted network (nodes, wiring, cost) of a SpineNetMBConv config.

  Args:
    config: SpineNetMBConv arguments, e.g. SpineNetMBConv.get_config(); a
      missing key takes SpineNetMBConv's default. Read: input_shape,
      block_specs, min_level, max_level, endpoints_num_filters,
      filter_size_scale, block_filters, stem_filters, block_repeats,
      expand_ratio, kernel_size, se_ratio, fusion_mode, downsample_mode.

  Returns:
    scale_permuted.ScalePermutedNetwork (family SPINENET_MBCONV); widths are
    block_filters, or level_widths(specs, filter_size_scale) when None.

  Raises:
    ValueError: bad block specs, per-block widths or repeats, or modes.
  """
  args = {name: p.default for name, p in
          inspect.signature(SpineNetMBConv.__init__).parameters.items()
          if p.default is not inspect.Parameter.empty}
  args.update(config)
  specs = parse_block_specs(args["block_specs"], len(STEM_LEVELS),
                            args["min_level"], args["max_level"],
                            block_types=BLOCK_TYPES)
  widths = args["block_filters"]
  if widths is None:
    widths = level_widths(specs, args["filter_size_scale"])
  stem_filters = args["stem_filters"]
  if stem_filters is None:
    stem_filters = int(FILTER_SIZE_MAP[0] * args["filter_size_scale"])
  return scale_permuted.mbconv_network(
      tuple(args["input_shape"])[:2], specs, widths, stem_levels=STEM_LEVELS,
      stem_strides=STEM_STRIDES, min_level=args["min_level"],
      max_level=args["max_level"], block_repeats=args["block_repeats"],
      stem_filters=stem_filters,
      endpoints_num_filters=args["endpoints_num_filters"],
      expand_ratio=args["expand_ratio"], kernel_size=args["kernel_size"],
      se_ratio=args["se_ratio"], fusion_mode=args["fusion_mode"],
      downsample_mode=args["downsample_mode"])


@keras.saving.register_keras_serializable(package="spinenet")
class SpineNetMBConv(keras.Model):
  """Scale-permuted backbone of MBConv blocks.

  Call: images [batch, H, W, 3] float -> dict str(level) -> [batch,
  ceil(H / 2^level), ceil(W / 2^level), endpoints_num_filters] for levels
  min_level..max_level.

  Args:
    input_shape: (H, W, 3); H and W divide by 2^max_level unless
      require_divisible_input is False.
    block_specs: (level, "mbconv", parent offsets, is_output) entries.
    min_level, max_level: endpoint levels.
    endpoints_num_filters: width of every endpoint.
    filter_size_scale: multiplies FILTER_SIZE_MAP (used when block_filters
      is None, and for the stem conv when stem_filters is None).
    block_filters: None or one output width per block, the 2 stem blocks
      first (Eff-SpineNet Table 1 order).
    stem_filters: width of the stem conv (None: int(8 * filter_size_scale)).
    block_repeats: an int, or one int per block (stem blocks first).
    expand_ratio, kernel_size, se_ratio: MBConv parameters.
    fusion_mode, fusion_epsilon: see BlockFusion.
    downsample_mode: "strided_conv" or "space_to_depth" (MBConvResample).
    init_stochastic_depth_rate: drop rate of the last spec block (0 = off).
    activation: "relu", "swish" or "hard_swish".
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
    dropblock_keep_prob, dropblock_size: accepted for the backbone contract;
      DropBlock is not supported here (keep_prob must be None).
    require_divisible_input: check H, W against 2^max_level.
    se_inner_activation: activation after every block's SE reduce conv; None
      (default) takes `activation` (EfficientNet), "relu" for Model Garden's
      SpineNet-Mobile.
    se_gating: every block's SE gate, "sigmoid" (default) or "hard_sigmoid"
      (Model Garden's SpineNet-Mobile; see MBConvBlock).

  Raises:
    ValueError: bad block specs, widths, repeats, input size or modes, an
      unknown activation or se_gating, or dropblock_keep_prob set.
  """

  def __init__(self, input_shape=(384, 384, 3),
               block_specs=MBCONV_BLOCK_SPECS, min_level=3, max_level=7,
               endpoints_num_filters=48, filter_size_scale=1.0,
               block_filters=None, stem_filters=None, block_repeats=1,
               expand_ratio=6, kernel_size=3, se_ratio=0.2,
               fusion_mode="sum", fusion_epsilon=1e-3,
               downsample_mode="strided_conv",
               init_stochastic_depth_rate=0.0, activation="swish",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               dropblock_keep_prob=None, dropblock_size=3,
               require_divisible_input=True, se_inner_activation=None,
               se_gating="sigmoid", name="spinenet_mbconv"):
    num_init_blocks = len(STEM_LEVELS)
    specs = parse_block_specs(block_specs, num_init_blocks, min_level,
                              max_level, block_types=BLOCK_TYPES)
    input_shape = tuple(input_shape)
    if require_divisible_input:
      check_input_size(input_shape[:2], max_level)
    if dropblock_keep_prob is not None:
      raise ValueError("SpineNetMBConv does not implement DropBlock; set "
                       "dropblock_keep_prob=None (regularization."
                       "dropblock_keep_prob in gin).")
    if downsample_mode not in DOWNSAMPLE_MODES:
      raise ValueError(f"Unknown downsample_mode {downsample_mode!r}; "
                       f"expected one of {DOWNSAMPLE_MODES}.")
    # Checked here so that the error names the backbone argument rather than
    # the first block that would build the squeeze-excitation.
    check_se_gating(se_gating, name)
    if se_inner_activation is not None:
      try:
        activations.check_activation(se_inner_activation)
      except ValueError as e:
        raise ValueError(f"{name}: se_inner_activation: {e}") from e
    network = network_description(dict(
        input_shape=input_shape, block_specs=specs, min_level=min_level,
        max_level=max_level, endpoints_num_filters=endpoints_num_filters,
        filter_size_scale=filter_size_scale, block_filters=block_filters,
        stem_filters=stem_filters, block_repeats=block_repeats,
        expand_ratio=expand_ratio, kernel_size=kernel_size, se_ratio=se_ratio,
        fusion_mode=fusion_mode, downsample_mode=downsample_mode))
    widths = [node.width for node in network.nodes]
    repeats = [node.repeats for node in network.nodes]
    stem_filters = network.stem_filters
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)

    def block_group(x, node):
      sd_rate = None  # Stem blocks: no stochastic depth.
      if init_stochastic_depth_rate and not node.is_stem:
        k = node.index - num_init_blocks + 1
        sd_rate = init_stochastic_depth_rate * k / len(specs)
      for r in range(node.repeats):
        x = MBConvBlock(
            node.in_width if r == 0 else node.width, node.width,
            strides=node.strides if r == 0 else 1,
            expand_ratio=expand_ratio, kernel_size=kernel_size,
            se_ratio=se_ratio, stochastic_depth_rate=sd_rate,
            activation=activation, se_inner_activation=se_inner_activation,
            se_gating=se_gating, name=f"{node.layer_prefix}_repeat_{r + 1}",
            **bn)(x)
      return x

    inputs = keras.Input(shape=input_shape, name="images")
    x = ConvBNAct(stem_filters, 3, 2, activation, name="stem_conv", **bn)(
        inputs)

    def resample(x, edge, j):
      node = network.nodes[edge.child]
      return MBConvResample(
          network.nodes[edge.parent].level, node.level, node.feature_size,
          node.in_width, downsample_mode=downsample_mode,
          activation=activation, name=f"{node.layer_prefix}_resample_{j}",
          **bn)(x)

    def fuse(parents, node):
      return BlockFusion(fusion_mode, fusion_epsilon, activation,
                         name=f"{node.layer_prefix}_fusion")(parents)

    features = network.build(x, block_group, resample, fuse)
    endpoints = {level: features[index]
                 for level, index in network.endpoints.items()}
    outputs = {
        str(level): ConvBNAct(endpoints_num_filters, 1, 1, activation,
                              name=f"endpoint_{level}", **bn)(endpoints[level])
        for level in range(min_level, max_level + 1)}
    super().__init__(inputs=inputs, outputs=outputs, name=name)
    self._spinenet_config = dict(
        input_shape=input_shape,
        block_specs=[tuple(s[:2]) + (tuple(s[2]), s[3]) for s in specs],
        min_level=min_level, max_level=max_level,
        endpoints_num_filters=endpoints_num_filters,
        filter_size_scale=filter_size_scale,
        block_filters=None if block_filters is None else widths,
        stem_filters=stem_filters,
        block_repeats=(block_repeats if isinstance(block_repeats, int)
                       else repeats),
        expand_ratio=expand_ratio, kernel_size=kernel_size,
        se_ratio=se_ratio, fusion_mode=fusion_mode,
        fusion_epsilon=fusion_epsilon, downsample_mode=downsample_mode,
        init_stochastic_depth_rate=init_stochastic_depth_rate,
        activation=activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
        require_divisible_input=require_divisible_input,
        se_inner_activation=se_inner_activation, se_gating=se_gating)
    self.min_level = min_level
    self.max_level = max_level
    self.endpoints_num_filters = endpoints_num_filters
    self.block_widths = list(widths)
    self.network = network

  @property
  def output_specs(self):
    """dict str(level) -> output shape, batch dimension None."""
    return {k: tuple(v.shape) for k, v in self.output.items()}

  def get_config(self):
    return dict(self._spinenet_config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@register_backbone("spinenet_mbconv")
def spinenet_mbconv(input_shape=(384, 384, 3), model_id="49", block_specs=None,
                    min_level=3, max_level=7, endpoints_num_filters=None,
                    filter_size_scale=None, block_filters=None,
                    stem_filters=None, block_repeats=1, expand_ratio=6,
                    kernel_size=3, se_ratio=0.2, fusion_mode="sum",
                    fusion_epsilon=1e-3, downsample_mode="strided_conv",
                    require_divisible_input=True, activation="swish",
                    use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
                    init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
                    dropblock_size=3, se_inner_activation=None,
                    se_gating="sigmoid", name=None):
  """Builds SpineNet-`model_id` with MBConv blocks (49, 49S, 49XS, 49XXS).

  Args:
    model_id: a SCALING_MAP key (SpineNet paper, appendix A).
    endpoints_num_filters, filter_size_scale: None takes the model id's value.
    block_specs: None for MBCONV_BLOCK_SPECS.
    name: None for "spinenet<model_id>_mbconv".
    se_inner_activation, se_gating: the squeeze-excitation's functions;
      `spinenet_mbconv.se_inner_activation = 'relu'` and
      `spinenet_mbconv.se_gating = 'hard_sigmoid'` in gin build Model
      Garden's SpineNet-Mobile blocks (needed to import its checkpoints).
    Other arguments: see SpineNetMBConv.
  Returns:
    A SpineNetMBConv (outputs as modeling/backbones/registry.py says).
  Raises:
    ValueError: for an unknown model_id, or as SpineNetMBConv raises.
  """
  model_id = str(model_id).upper()
  if model_id not in SCALING_MAP:
    raise ValueError(f"Unknown SpineNet-MBConv model_id {model_id!r}; "
                     f"expected one of {list(SCALING_MAP)}.")
  scaling = dict(SCALING_MAP[model_id])
  for key, value in (("endpoints_num_filters", endpoints_num_filters),
                     ("filter_size_scale", filter_size_scale)):
    if value is not None:
      scaling[key] = value
  return SpineNetMBConv(
      input_shape=input_shape,
      block_specs=MBCONV_BLOCK_SPECS if block_specs is None else block_specs,
      min_level=min_level, max_level=max_level, block_filters=block_filters,
      stem_filters=stem_filters, block_repeats=block_repeats,
      expand_ratio=expand_ratio, kernel_size=kernel_size, se_ratio=se_ratio,
      fusion_mode=fusion_mode, fusion_epsilon=fusion_epsilon,
      downsample_mode=downsample_mode,
      require_divisible_input=require_divisible_input, activation=activation,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
      se_inner_activation=se_inner_activation, se_gating=se_gating,
      name=name or f"spinenet{model_id.lower()}_mbconv", **scaling)


__all__ = ["BlockSpec", "MBCONV_BLOCK_SPECS", "SpineNetMBConv",
           "spinenet_mbconv"]
