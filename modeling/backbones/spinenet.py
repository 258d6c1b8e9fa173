"""SpineNet: scale-permuted backbones with cross-scale connections.

Du et al., "SpineNet: Learning Scale-Permuted Backbone for Recognition and
Localization" (CVPR 2020). The architecture is data: a list of block specs
(level, block type, parent offsets, is_output). Offsets index the list
[stem block 0, stem block 1, block 1, block 2, ...], so offset 2 is the first
scale-permuted block.

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

import collections
import logging

import keras

from modeling.layers.blocks import BLOCK_EXPANSION, BLOCKS
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.fusion import BlockFusion
from modeling.layers.resampling import SpineNetResample, level_size

BlockSpec = collections.namedtuple(
    "BlockSpec", ["level", "block_fn", "input_offsets", "is_output"])

# REFERENCE §1; (level, block type, parent offsets, is_output).
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

# REFERENCE §1 scaling table (final paper version for 49S: 0.65).
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


def parse_block_specs(block_specs, num_init_blocks=2, min_level=3,
                      max_level=7, block_types=None):
  """Validates raw spec entries and returns a list of BlockSpec.

  Args:
    block_specs: sequence of (level, block_fn, parent offsets, is_output).
    num_init_blocks: stem blocks before the first spec block (offsets 0..n-1).
    min_level, max_level: endpoint levels; each needs exactly one output block.
    block_types: allowed block_fn names (default: the residual blocks of
      modeling.layers.blocks; SpineNet-MBConv passes ("mbconv",)).
  Raises:
    ValueError: naming the offending entry and the rule it breaks.
  """
  if not 1 <= min_level <= max_level <= 7:
    raise ValueError(f"Impossible level range min_level={min_level}, "
                     f"max_level={max_level}: need 1 <= min_level <= "
                     "max_level <= 7.")
  if not block_specs:
    raise ValueError("block_specs is empty: a SpineNet needs at least one "
                     "block per output level.")
  specs = []
  output_entry = {}
  for i, entry in enumerate(block_specs):
    where = f"block_specs[{i}] {tuple(entry)!r}"
    if len(entry) != 4:
      raise ValueError(f"{where}: expected (level, block_fn, parent offsets, "
                       f"is_output), got {len(entry)} fields.")
    level, block_fn, offsets, is_output = entry
    if isinstance(level, bool) or not isinstance(level, int) or not (
        1 <= level <= 7):
      raise ValueError(f"{where}: level {level!r} is outside 1..7.")
    allowed = BLOCKS if block_types is None else block_types
    if block_fn not in allowed:
      raise ValueError(f"{where}: unknown block type {block_fn!r}; expected "
                       f"one of {sorted(allowed)}.")
    offsets = tuple(offsets) if isinstance(offsets, (list, tuple)) else (
        offsets,)
    if not offsets:
      raise ValueError(f"{where}: a block needs at least one parent offset.")
    last_offset = num_init_blocks + i - 1
    for offset in offsets:
      if (isinstance(offset, bool) or not isinstance(offset, int) or
          not 0 <= offset <= last_offset):
        raise ValueError(
            f"{where}: parent offset {offset!r} is out of range; block {i + 1} "
            f"may only take the {num_init_blocks} stem blocks and the blocks "
            f"before it (offsets 0..{last_offset}).")
    if is_output:
      if level in output_entry:
        raise ValueError(
            f"{where}: duplicate output level {level}; block_specs"
            f"[{output_entry[level]}] is already the level-{level} output.")
      output_entry[level] = i
    specs.append(BlockSpec(level, block_fn, offsets, bool(is_output)))
  missing = [l for l in range(min_level, max_level + 1) if l not in output_entry]
  if missing:
    raise ValueError(
        f"block_specs has no output block for level(s) {missing}; endpoints "
        f"{min_level}..{max_level} each need one (outputs at levels "
        f"{sorted(output_entry)}).")
  return specs


def check_input_size(image_size, max_level):
  """Raises ValueError unless both sides divide by 2^max_level."""
  stride = 2 ** max_level
  for side in image_size:
    if side is None or side % stride:
      raise ValueError(
          f"Input size {tuple(image_size)} is not divisible by 2^max_level = "
          f"{stride} (max_level={max_level}); use a multiple of {stride}, "
          "e.g. " f"{max(stride, (int(side or stride) // stride) * stride)}.")


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
    if block_repeats < 1:
      raise ValueError(f"block_repeats must be >= 1, got {block_repeats}")
    if block_fn_override not in (None, "resnext"):
      raise ValueError(f"block_fn_override must be None or 'resnext', got "
                       f"{block_fn_override!r}")
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)

    def block_group(x, block_fn, filters, sd_rate, dropblock, name):
      """block_repeats blocks; only the first may project its input."""
      kind = "resnext" if (block_fn == "bottleneck" and
                           block_fn_override == "resnext") else block_fn
      extra = dict(base_width=resnext_base_width) if kind == "resnext" else {}
      if dropblock:
        extra.update(dropblock_keep_prob=dropblock_keep_prob,
                     dropblock_size=dropblock_size)
      out_width = filters * BLOCK_EXPANSION[block_fn]
      for r in range(block_repeats):
        x = BLOCKS[kind](
            filters, strides=1,
            use_projection=(r == 0 and x.shape[-1] != out_width),
            stochastic_depth_rate=sd_rate, activation=activation,
            name=f"{name}_repeat_{r + 1}", **bn, **extra)(x)
      return x

    height, width = input_shape[0], input_shape[1]
    inputs = keras.Input(shape=input_shape, name="images")
    x = ConvBNAct(STEM_FILTERS, 7, 2, activation, name="stem_conv", **bn)(inputs)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)

    stem_filters = int(FILTER_SIZE_MAP[2] * filter_size_scale)
    net, net_levels, net_fns = [], [], []
    for i in range(num_init_blocks):
      x = block_group(x, "bottleneck", stem_filters, None, False,
                      f"stem_block_{i + 1}")
      net.append(x)
      net_levels.append(2)
      net_fns.append("bottleneck")
    out_degree = [0] * len(net)

    endpoints = {}
    for k, spec in enumerate(specs, start=1):
      target_size = (level_size(height, spec.level),
                     level_size(width, spec.level))
      filters = int(FILTER_SIZE_MAP[spec.level] * filter_size_scale)
      in_width = filters * BLOCK_EXPANSION[spec.block_fn]
      parents = []
      for j, offset in enumerate(spec.input_offsets):
        parent = net[offset]
        parent_inner = parent.shape[-1] // BLOCK_EXPANSION[net_fns[offset]]
        parents.append(SpineNetResample(
            net_levels[offset], spec.level, target_size,
            int(parent_inner * resample_alpha), in_width, activation,
            name=f"block_{k}_resample_{j + 1}", **bn)(parent))
        out_degree[offset] += 1
      if spec.is_output:
        # An output block also takes every earlier block nobody consumed yet,
        # when its shape already matches (paper Sec. 3.2).
        for j, feature in enumerate(net):
          if (out_degree[j] == 0 and tuple(feature.shape[1:]) ==
              target_size + (in_width,)):
            parents.append(feature)
            out_degree[j] += 1
      x = BlockFusion(fusion_mode, fusion_epsilon, activation,
                      name=f"block_{k}_fusion")(parents)
      x = block_group(
          x, spec.block_fn, filters,
          init_stochastic_depth_rate * k / len(specs)
          if init_stochastic_depth_rate else None,
          dropblock_keep_prob is not None, f"block_{k}")
      net.append(x)
      net_levels.append(spec.level)
      net_fns.append(spec.block_fn)
      out_degree.append(0)
      if spec.is_output:
        if min_level <= spec.level <= max_level:
          endpoints[spec.level] = x
        else:
          logging.info("SpineNet output block %d at level %d is outside "
                       "[%d, %d] and is not used.", k, spec.level, min_level,
                       max_level)

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

  @property
  def output_specs(self):
    """dict str(level) -> output shape, batch dimension None."""
    return {k: tuple(v.shape) for k, v in self.output.items()}

  def get_config(self):
    return dict(self._spinenet_config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


def spinenet(input_shape=(640, 640, 3), model_id="49", **overrides):
  """Builds SpineNet-`model_id` (49S, 49, 96, 143, 143L, 190).

  `overrides` are SpineNet arguments (e.g. filter_size_scale=0.25 and
  resample_alpha=0.25 for the paper's search proxy) applied on top of the
  model id's scaling.
  """
  model_id = str(model_id).upper()
  if model_id not in SCALING_MAP:
    raise ValueError(f"Unknown SpineNet model_id {model_id!r}; expected one of "
                     f"{list(SCALING_MAP)}.")
  args = dict(SCALING_MAP[model_id])
  args.update(overrides)
  args.setdefault("name", f"spinenet{model_id.lower()}")
  return SpineNet(input_shape=input_shape, **args)
