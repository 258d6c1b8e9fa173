"""SpineNet: scale-permuted backbones with cross-scale connections.

Du et al., "SpineNet: Learning Scale-Permuted Backbone for Recognition and
Localization" (CVPR 2020). The architecture is data: a list of block specs
(level, block type, parent offsets, is_output). Offsets index the list
[stem block 0, stem block 1, block 1, block 2, ...], so offset 2 is the first
scale-permuted block. The nodes, wiring and cost come from
modeling/backbones/scale_permuted.py (network_description below); SpineNet
builds its Keras graph by walking that description.

Choices where the paper leaves a detail open (written down here as the project
rule):
- Stochastic depth: block k of the N blocks in `block_specs` drops at
  init_rate * k / N; N = 15 for SpineNet. Model Garden appends an unused 16th
  level-2 block and so divides by 16; its rates are 15/16 of ours.
- A feature map whose size is not divisible by 2^level (224 px classification)
  follows TF 'SAME' arithmetic: level size = ceil(size / 2^level), and nearest
  upsampling then resizes to that exact size. Detection inputs must be
  divisible by 2^max_level (checked), so every resize there is an exact repeat.
- DropBlock, when enabled (protocol A), follows each batch norm inside the
  scale-permuted blocks, not the stem.
- `block_fn_override="resnext"` turns every bottleneck block (stem included)
  into a ResNeXt block of the same output width (SpineNet appendix B);
  residual blocks stay residual.
"""

import inspect

import keras

from modeling.backbones import scale_permuted
from modeling.backbones.scale_permuted import BlockSpec  # pylint: disable=unused-import
from modeling.backbones.scale_permuted import check_input_size
from modeling.backbones.registry import register_backbone
from modeling.backbones.scale_permuted import parse_block_specs
from modeling.layers.blocks import BLOCKS
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.fusion import BlockFusion
from modeling.layers.resampling import SpineNetResample

# SpineNet-49 (final version Fig. 4d) as data, as the public code writes it
# (docs/model_garden_conventions.md): (level, block type, parent offsets,
# is_output).
SPINENET_BLOCK_SPECS = (
    (2, "bottleneck", (0, 1), False),
    (4, "residual", (0, 1), False),
    (3, "bottleneck", (2, 3), False),
    (4, "bottleneck", (2, 4), False),
    (6, "residual", (3, 5), False),
    (4, "bottleneck", (3, 5), False),
    (5, "residual", (6, 7), False),
    (7, "residual", (6, 8), False),
    (5, "bottleneck", (8, 9), False),
    (5, "bottleneck", (8, 10), False),
    (4, "bottleneck", (5, 10), True),
    (3, "bottleneck", (4, 10), True),
    (5, "bottleneck", (7, 12), True),
    (7, "bottleneck", (5, 14), True),
    (6, "bottleneck", (12, 14), True),
)

# Inner width of a block at each level before filter_size_scale.
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}

# Scaling table of docs/model_garden_conventions.md (49S: 0.65, SpineNet
# final version Sec. 3.4).
SCALING_MAP = {
    "49S": dict(endpoints_num_filters=128, filter_size_scale=0.65,
                resample_alpha=0.5, block_repeats=1),
    "49": dict(endpoints_num_filters=256, filter_size_scale=1.0,
               resample_alpha=0.5, block_repeats=1),
    "96": dict(endpoints_num_filters=256, filter_size_scale=1.0,
               resample_alpha=0.5, block_repeats=2),
    "143": dict(endpoints_num_filters=256, filter_size_scale=1.0,
                resample_alpha=1.0, block_repeats=3),
    "143L": dict(endpoints_num_filters=256, filter_size_scale=1.3,
                 resample_alpha=1.0, block_repeats=3),
    "190": dict(endpoints_num_filters=512, filter_size_scale=1.3,
                resample_alpha=1.0, block_repeats=4),
}

STEM_FILTERS = 64


def network_description(config):
  """The scale-permuted network (nodes, wiring, cost) of a SpineNet config.

  Args:
    config: SpineNet arguments, e.g. SpineNet.get_config(); a missing key
      takes SpineNet's default. Only the arguments that shape the network
      are read (input_shape, block_specs, min_level, max_level,
      endpoints_num_filters, resample_alpha, block_repeats,
      filter_size_scale, num_init_blocks, block_fn_override,
      resnext_base_width).

  Returns:
    scale_permuted.ScalePermutedNetwork (family SPINENET); block widths are
    int(FILTER_SIZE_MAP[level] * filter_size_scale) x the block expansion.

  Raises:
    ValueError: bad block specs, override, repeats or resample_alpha.
  """
  args = {name: p.default for name, p in
          inspect.signature(SpineNet.__init__).parameters.items()
          if p.default is not inspect.Parameter.empty}
  args.update(config)
  num_init = args["num_init_blocks"]
  specs = parse_block_specs(args["block_specs"], num_init, args["min_level"],
                            args["max_level"])
  levels = [2] * num_init + [spec.level for spec in specs]
  return scale_permuted.spinenet_network(
      tuple(args["input_shape"])[:2], specs,
      [int(FILTER_SIZE_MAP[level] * args["filter_size_scale"])
       for level in levels],
      min_level=args["min_level"], max_level=args["max_level"],
      block_repeats=args["block_repeats"], stem_filters=STEM_FILTERS,
      endpoints_num_filters=args["endpoints_num_filters"],
      resample_alpha=args["resample_alpha"],
      block_fn_override=args["block_fn_override"],
      resnext_base_width=args["resnext_base_width"])


@keras.saving.register_keras_serializable(package="spinenet")
class SpineNet(keras.Model):
  """Scale-permuted backbone.

  Call: images [batch, H, W, 3] float -> dict str(level) -> [batch,
  ceil(H / 2^level), ceil(W / 2^level), endpoints_num_filters] for levels
  min_level..max_level.

  Args:
    input_shape: (H, W, 3). H and W must divide by 2^max_level unless
      require_divisible_input is False (classification at 224 px).
    block_specs: spec entries (default SpineNet-49's 15 blocks).
    min_level, max_level: endpoint levels.
    endpoints_num_filters: width of every endpoint.
    resample_alpha: resampling reduction factor alpha.
    block_repeats: each block becomes this many blocks in sequence.
    filter_size_scale: multiplies FILTER_SIZE_MAP (stem conv stays 64).
    init_stochastic_depth_rate: drop rate of the last block (0 = off).
    activation: "relu", "swish" or "hard_swish".
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
    fusion_mode, fusion_epsilon: see BlockFusion.
    dropblock_keep_prob, dropblock_size: DropBlock (None = off).
    num_init_blocks: level-2 stem blocks.
    block_fn_override: None or "resnext" (ResNeXt variant).
    resnext_base_width: 4 (32x4d) or 8 (32x8d).
  """

  def __init__(self, input_shape=(640, 640, 3), block_specs=SPINENET_BLOCK_SPECS,
               min_level=3, max_level=7, endpoints_num_filters=256,
               resample_alpha=0.5, block_repeats=1, filter_size_scale=1.0,
               init_stochastic_depth_rate=0.0, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               fusion_mode="sum", fusion_epsilon=1e-3,
               dropblock_keep_prob=None, dropblock_size=3, num_init_blocks=2,
               block_fn_override=None, resnext_base_width=4,
               require_divisible_input=True, name="spinenet"):
    specs = parse_block_specs(block_specs, num_init_blocks, min_level,
                              max_level)
    input_shape = tuple(input_shape)
    if require_divisible_input:
      check_input_size(input_shape[:2], max_level)
    network = network_description(dict(
        input_shape=input_shape, block_specs=specs, min_level=min_level,
        max_level=max_level, endpoints_num_filters=endpoints_num_filters,
        resample_alpha=resample_alpha, block_repeats=block_repeats,
        filter_size_scale=filter_size_scale, num_init_blocks=num_init_blocks,
        block_fn_override=block_fn_override,
        resnext_base_width=resnext_base_width))
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)

    def block_group(x, node):
      """node.repeats blocks; only the first may project its input."""
      extra = (dict(base_width=resnext_base_width)
               if node.block_fn == "resnext" else {})
      sd_rate = None  # Stem blocks: no stochastic depth, no DropBlock.
      if not node.is_stem:
        if dropblock_keep_prob is not None:
          extra.update(dropblock_keep_prob=dropblock_keep_prob,
                       dropblock_size=dropblock_size)
        if init_stochastic_depth_rate:
          k = node.index - num_init_blocks + 1
          sd_rate = init_stochastic_depth_rate * k / len(specs)
      for r in range(node.repeats):
        x = BLOCKS[node.block_fn](
            node.filters, strides=1,
            use_projection=(r == 0 and node.in_width != node.width),
            stochastic_depth_rate=sd_rate, activation=activation,
            name=f"{node.layer_prefix}_repeat_{r + 1}", **bn, **extra)(x)
      return x

    inputs = keras.Input(shape=input_shape, name="images")
    x = ConvBNAct(STEM_FILTERS, 7, 2, activation, name="stem_conv", **bn)(inputs)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)

    def resample(x, edge, j):
      node = network.nodes[edge.child]
      return SpineNetResample(
          network.nodes[edge.parent].level, node.level, node.feature_size,
          network.resample_filters(edge), node.in_width, activation,
          name=f"{node.layer_prefix}_resample_{j}", **bn)(x)

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
        resample_alpha=resample_alpha, block_repeats=block_repeats,
        filter_size_scale=filter_size_scale,
        init_stochastic_depth_rate=init_stochastic_depth_rate,
        activation=activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        fusion_mode=fusion_mode, fusion_epsilon=fusion_epsilon,
        dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
        num_init_blocks=num_init_blocks, block_fn_override=block_fn_override,
        resnext_base_width=resnext_base_width,
        require_divisible_input=require_divisible_input)
    self.min_level = min_level
    self.max_level = max_level
    self.endpoints_num_filters = endpoints_num_filters
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


@register_backbone("spinenet")
def spinenet(input_shape=(640, 640, 3), model_id="49", block_specs=None,
             min_level=3, max_level=7, endpoints_num_filters=None,
             filter_size_scale=None, resample_alpha=None, block_repeats=None,
             fusion_mode="sum", fusion_epsilon=1e-3, block_fn_override=None,
             resnext_base_width=4, num_init_blocks=2,
             require_divisible_input=True, activation="relu",
             use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
             init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
             dropblock_size=3, name=None):
  """Builds SpineNet-`model_id` (49S, 49, 96, 143, 143L, 190).

  Args:
    model_id: a SCALING_MAP key (SpineNet paper, final version, Sec. 3.4).
    endpoints_num_filters, filter_size_scale, resample_alpha, block_repeats:
      None takes the model id's value; e.g. filter_size_scale=0.25 and
      resample_alpha=0.25 give the paper's search proxy (Sec. 5.1, NAS
      details).
    block_specs: None for SPINENET_BLOCK_SPECS.
    name: None for "spinenet<model_id>".
    Other arguments: see SpineNet.
  Returns:
    A SpineNet (keras.Model; outputs as modeling/backbones/registry.py says).
  Raises:
    ValueError: for an unknown model_id, or as SpineNet raises.
  """
  model_id = str(model_id).upper()
  if model_id not in SCALING_MAP:
    raise ValueError(f"Unknown SpineNet model_id {model_id!r}; expected one of "
                     f"{list(SCALING_MAP)}.")
  scaling = dict(SCALING_MAP[model_id])
  for key, value in (("endpoints_num_filters", endpoints_num_filters),
                     ("filter_size_scale", filter_size_scale),
                     ("resample_alpha", resample_alpha),
                     ("block_repeats", block_repeats)):
    if value is not None:
      scaling[key] = value
  return SpineNet(
      input_shape=input_shape,
      block_specs=SPINENET_BLOCK_SPECS if block_specs is None else block_specs,
      min_level=min_level, max_level=max_level, fusion_mode=fusion_mode,
      fusion_epsilon=fusion_epsilon, block_fn_override=block_fn_override,
      resnext_base_width=resnext_base_width, num_init_blocks=num_init_blocks,
      require_divisible_input=require_divisible_input, activation=activation,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
      name=name or f"spinenet{model_id.lower()}", **scaling)
