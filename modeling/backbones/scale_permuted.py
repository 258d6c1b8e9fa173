"""One description of a scale-permuted network: blocks, wiring and cost.

Du et al., "SpineNet: Learning Scale-Permuted Backbone for Recognition and
Localization" (CVPR 2020), Sec. 3: a scale-permuted network is a stem of
blocks followed by block specs (level, block type, parent offsets,
is_output). Offsets index the list [stem block 0, stem block 1, ..., spec
block 1, spec block 2, ...]. This module turns that data (plus per-block
widths, repeats, the level range and the input size) into nodes, parent
edges, the unconsumed-block edges (Sec. 3.2), which blocks reach an endpoint,
and an analytic parameter and multiply-add count per block. It is the one
place the wiring rule is written; SpineNet (modeling/backbones/spinenet.py),
SpineNetMBConv (modeling/backbones/spinenet_mbconv.py, Eff-SpineNet included)
and the drawing (modeling/architecture_graph.py) all walk it.

Two block families are described:
- SPINENET: residual, bottleneck and ResNeXt blocks (modeling/layers/blocks.py)
  resampled by SpineNetResample (modeling/layers/resampling.py: 1x1 reduce to
  alpha x the parent's inner width, a 3x3 stride-2 conv and max-pools going
  down, nearest upsampling going up, 1x1 projection), fused by summation.
- SPINENET_MBCONV: MBConv blocks (modeling/layers/mbconv.py) resampled by
  MBConvResample (strided depthwise convs or space-to-depth going down,
  Eff-SpineNet Sec. 3.2), fused by sum or weighted fusion (Eff-SpineNet
  eq. 1).

Pure Python: importing it loads no TensorFlow or Keras, so a search can
sample and cost thousands of architectures without building one.

Cost convention (what `Cost` holds):
- params: trainable scalars (conv kernels, batch-norm gamma and beta, SE
  biases, weighted-fusion weights); non_trainable: batch-norm moving mean and
  variance. params + non_trainable is what the built Keras model holds.
- madds: multiply-adds of the convolutions (dense, grouped and depthwise) and
  of the squeeze-excitation 1x1 convs for one image, the quantity the SpineNet
  papers report as FLOPs. Element-wise work (batch norm at inference, adds,
  activations, max-pooling) is not counted; TF's profiler
  (modeling/analysis.py) counts part of it, so its figure is slightly above.
"""

import collections
import dataclasses
import logging

SPINENET = "spinenet"
SPINENET_MBCONV = "spinenet_mbconv"
FAMILIES = (SPINENET, SPINENET_MBCONV)

PARENT = "parent"
UNCONSUMED = "unconsumed"

# Output width of a residual-family block as a multiple of its `filters`
# argument (modeling/layers/blocks.py BLOCK_EXPANSION; a test keeps the two
# equal).
BLOCK_EXPANSION = {"residual": 1, "bottleneck": 4, "resnext": 4}
RESIDUAL_BLOCK_TYPES = tuple(BLOCK_EXPANSION)
MBCONV_BLOCK_TYPES = ("mbconv",)
FUSION_MODES = ("sum", "weighted")
DOWNSAMPLE_MODES = ("strided_conv", "space_to_depth")
# ResNeXt 32xNd (SpineNet appendix B; Xie et al. 2017).
RESNEXT_CARDINALITY = 32

BlockSpec = collections.namedtuple(
    "BlockSpec", ["level", "block_fn", "input_offsets", "is_output"])


def parse_block_specs(block_specs, num_init_blocks=2, min_level=3,
                      max_level=7, block_types=None):
  """Validates raw spec entries and returns a list of BlockSpec.

  Args:
    block_specs: sequence of (level, block_fn, parent offsets, is_output).
    num_init_blocks: stem blocks before the first spec block (offsets 0..n-1).
    min_level, max_level: endpoint levels; each needs exactly one output block.
    block_types: allowed block_fn names (default: RESIDUAL_BLOCK_TYPES;
      SpineNet-MBConv passes MBCONV_BLOCK_TYPES).
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
  allowed = RESIDUAL_BLOCK_TYPES if block_types is None else block_types
  specs = []
  output_entry = {}
  for i, entry in enumerate(block_specs):
    if len(entry) != 4:
      raise ValueError(f"{_where(i, entry)}: expected (level, block_fn, parent offsets, "
                       f"is_output), got {len(entry)} fields.")
    level, block_fn, offsets, is_output = entry
    if isinstance(level, bool) or not isinstance(level, int) or not (
        1 <= level <= 7):
      raise ValueError(f"{_where(i, entry)}: level {level!r} is outside 1..7.")
    if block_fn not in allowed:
      raise ValueError(f"{_where(i, entry)}: unknown block type {block_fn!r}; expected "
                       f"one of {sorted(allowed)}.")
    offsets = tuple(offsets) if isinstance(offsets, (list, tuple)) else (
        offsets,)
    if not offsets:
      raise ValueError(f"{_where(i, entry)}: a block needs at least one parent offset.")
    last_offset = num_init_blocks + i - 1
    for offset in offsets:
      if (isinstance(offset, bool) or not isinstance(offset, int) or
          not 0 <= offset <= last_offset):
        raise ValueError(
            f"{_where(i, entry)}: parent offset {offset!r} is out of range; block {i + 1} "
            f"may only take the {num_init_blocks} stem blocks and the blocks "
            f"before it (offsets 0..{last_offset}).")
    if is_output:
      if level in output_entry:
        raise ValueError(
            f"{_where(i, entry)}: duplicate output level {level}; block_specs"
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


def _where(index, entry):
  """Names a block-spec entry in errors (formatted only when one is raised:
  a search validates hundreds of thousands of specs)."""
  return f"block_specs[{index}] {tuple(entry)!r}"


def check_input_size(image_size, max_level):
  """Raises ValueError unless both sides divide by 2^max_level."""
  stride = 2 ** max_level
  for side in image_size:
    if side is None or side % stride:
      raise ValueError(
          f"Input size {tuple(image_size)} is not divisible by 2^max_level = "
          f"{stride} (max_level={max_level}); use a multiple of {stride}, "
          "e.g. " f"{max(stride, (int(side or stride) // stride) * stride)}.")


def feature_size(image_size, level):
  """(height, width) of a level-`level` map: ceil(side / 2^level) ('SAME')."""
  return tuple(-(-int(side) // 2 ** level) for side in image_size)


def per_block(name, values, num_blocks, low=1):
  """One integer >= low per block (an int is repeated), else ValueError.

  Args:
    name: the argument's name, for the message.
    values: an int, or a sequence of `num_blocks` ints (stem blocks first).
    num_blocks: stem blocks + spec blocks.
    low: the smallest value allowed.
  """
  if isinstance(values, int) and not isinstance(values, bool):
    if values < low:
      raise ValueError(f"{name} must be >= {low}, got {values}")
    values = [values] * num_blocks
  values = list(values)
  if len(values) != num_blocks:
    raise ValueError(
        f"{name} has {len(values)} entries but the network has {num_blocks} "
        "blocks (stem blocks + spec blocks); give one per block, stem blocks "
        "first.")
  for i, value in enumerate(values):
    if isinstance(value, bool) or int(value) != value or value < low:
      raise ValueError(f"{name}[{i}] (block {i + 1}) is {value!r}; expected "
                       f"an integer >= {low}.")
  return [int(v) for v in values]


@dataclasses.dataclass(frozen=True)
class Cost:
  """Size and cost of a part of the network (see the module doc).

  Attributes:
    params: trainable scalars.
    non_trainable: batch-norm moving statistics.
    madds: multiply-adds of one image (convolutions and SE only).
  """
  params: int = 0
  non_trainable: int = 0
  madds: int = 0

  @property
  def weights(self):
    """All scalars the built layers hold (trainable + non-trainable)."""
    return self.params + self.non_trainable

  def __add__(self, other):
    return Cost(self.params + other.params,
                self.non_trainable + other.non_trainable,
                self.madds + other.madds)


def _conv_bn(kernel, in_channels, out_channels, out_size, groups=1, bn=True,
             bias=False):
  """A kxk conv (groups: grouped) producing out_size, with batch norm."""
  kernel_scalars = kernel * kernel * (in_channels // groups) * out_channels
  return Cost(
      params=kernel_scalars + (2 * out_channels if bn else 0) +
      (out_channels if bias else 0),
      non_trainable=2 * out_channels if bn else 0,
      madds=kernel_scalars * out_size[0] * out_size[1])


def _depthwise_bn(kernel, channels, out_size):
  """A kxk depthwise conv producing out_size, with batch norm."""
  return Cost(params=kernel * kernel * channels + 2 * channels,
              non_trainable=2 * channels,
              madds=kernel * kernel * channels * out_size[0] * out_size[1])


def _total(costs):
  return sum(costs, Cost())


@dataclasses.dataclass(frozen=True)
class Node:
  """One block of the network: a group of `repeats` blocks in sequence.

  Attributes:
    index: position in the offsets list [stem blocks..., spec blocks...].
    label: "S1", "S2", ... for stem blocks, "1", "2", ... for spec blocks.
    layer_prefix: name prefix of its layers ("stem_block_1", "block_3"): the
      blocks are "<prefix>_repeat_<r>", resamplings "<prefix>_resample_<j>"
      and the fusion "<prefix>_fusion".
    level: feature level (the map is input size / 2^level).
    block_fn: the block built: "bottleneck", "residual", "resnext" (a
      bottleneck under block_fn_override="resnext" too) or "mbconv".
    filters: the block's `filters` argument (the inner width of residual
      blocks; the output width of MBConv blocks).
    in_width: channels entering the first repeat.
    width: output channels.
    repeats: blocks in sequence (SpineNet-96: 2).
    strides: stride of the first repeat (1, except the level-2 MBConv stem).
    feature_size: (height, width) of its output map.
    is_stem: one of the blocks before the spec blocks.
    is_output: marked as an output block in the spec.
    endpoint_level: the endpoint it feeds, or None (not an output, or an
      output outside min_level..max_level).
    is_used: a path leads from it to an endpoint; Keras leaves an unused
      block out of the built model, so it adds no cost.
  """
  index: int
  label: str
  layer_prefix: str
  level: int
  block_fn: str
  filters: int
  in_width: int
  width: int
  repeats: int
  strides: int
  feature_size: tuple
  is_stem: bool
  is_output: bool
  endpoint_level: int | None
  is_used: bool


@dataclasses.dataclass(frozen=True)
class Edge:
  """A feature map flowing from block `parent` into block `child` (indices).

  kind: PARENT (a learned, resampled input of the spec) or UNCONSUMED (an
  earlier block nobody consumed, fused as it is into an output block of the
  same shape, SpineNet Sec. 3.2).
  """
  parent: int
  child: int
  kind: str = PARENT


@dataclasses.dataclass(frozen=True)
class BlockCost:
  """Cost of one node, by part.

  Attributes:
    block: the `repeats` blocks.
    resamples: one Cost per parent edge, in spec order.
    fusion: the fusion of the inputs (weighted fusion's weights).
    endpoint: the 1x1 conv-BN to endpoints_num_filters, if it feeds one.
  """
  block: Cost
  resamples: tuple
  fusion: Cost
  endpoint: Cost

  @property
  def total(self):
    return _total((self.block, self.fusion, self.endpoint) + self.resamples)


@dataclasses.dataclass(frozen=True)
class ScalePermutedNetwork:
  """Nodes, edges and options of one scale-permuted network.

  Build with spinenet_network() or mbconv_network(); the Keras backbones
  create one layer group per node, in node order, from exactly this.

  Attributes:
    family: SPINENET or SPINENET_MBCONV.
    input_size: (height, width) of the image.
    min_level, max_level: endpoint levels.
    stem_filters: width of the stem conv.
    endpoints_num_filters: width of every endpoint.
    nodes: tuple of Node; node i has index i.
    edges: tuple of Edge; each spec block's parent edges in spec order, then
      its unconsumed edges in block order.
    options: family options as a tuple of (name, value) pairs: SPINENET:
      resample_alpha, resnext_base_width; SPINENET_MBCONV: expand_ratio,
      kernel_size, se_ratio, fusion_mode, downsample_mode.
  """
  family: str
  input_size: tuple
  min_level: int
  max_level: int
  stem_filters: int
  endpoints_num_filters: int
  nodes: tuple
  edges: tuple
  options: tuple

  @property
  def option(self):
    """options as a dict."""
    return dict(self.options)

  @property
  def num_stem_blocks(self):
    return sum(node.is_stem for node in self.nodes)

  @property
  def endpoints(self):
    """dict level -> index of the node feeding that endpoint."""
    return {node.endpoint_level: node.index for node in self.nodes
            if node.endpoint_level is not None}

  def inputs(self, index, kind=None):
    """Edges into node `index` in fusion order (only `kind`, if given)."""
    return [edge for edge in self.edges if edge.child == index and
            (kind is None or edge.kind == kind)]

  def build(self, stem_output, block_group, resample, fuse):
    """Wires the caller's layers along the network: the one build order.

    For every node in order: a stem block takes the previous stem block's
    output (the first takes `stem_output`); a spec block resamples each
    parent (spec order), appends the unconsumed blocks fused into it as they
    are, fuses and runs its block group. The backbones create their layers
    inside the callbacks, so layer creation order (and names) follow this.

    Args:
      stem_output: what enters the first stem block.
      block_group: (x, node) -> the node's output.
      resample: (x, edge, j) -> x resampled for the child of `edge`; j is the
        parent's 1-based position among the child's parent edges.
      fuse: (inputs, node) -> the fused input of the node's block group.

    Returns:
      list of node outputs, node i at position i (unused nodes included).
      An output block outside min_level..max_level is logged (info).
    """
    features = []
    x = stem_output
    for node in self.nodes:
      if not node.is_stem:
        inputs = [resample(features[edge.parent], edge, j)
                  for j, edge in enumerate(self.inputs(node.index, PARENT),
                                           start=1)]
        inputs += [features[edge.parent]
                   for edge in self.inputs(node.index, UNCONSUMED)]
        x = fuse(inputs, node)
      x = block_group(x, node)
      features.append(x)
      if node.is_output and node.endpoint_level is None:
        logging.info("%s: output block %s at level %d is outside [%d, %d] "
                     "and feeds no endpoint.", self.family, node.label,
                     node.level, self.min_level, self.max_level)
    return features

  def resample_filters(self, edge):
    """SPINENET: width after the resampling's first 1x1 conv of `edge`.

    int(resample_alpha x the parent's inner width) (SpineNet Sec. 3.2).
    """
    parent = self.nodes[edge.parent]
    inner = parent.width // BLOCK_EXPANSION[parent.block_fn]
    return int(inner * self.option["resample_alpha"])

  def stem_cost(self):
    """The stem conv (and max-pool, which holds nothing) before block 0."""
    conv_size = feature_size(self.input_size, 1)
    kernel = 7 if self.family == SPINENET else 3
    return _conv_bn(kernel, 3, self.stem_filters, conv_size)

  def block_cost(self, index):
    """BlockCost of node `index` (counted whether or not it is used)."""
    node = self.nodes[index]
    if self.family == SPINENET:
      block = self._residual_group_cost(node)
    else:
      block = self._mbconv_group_cost(node)
    parent_edges = self.inputs(index, PARENT)
    resamples = tuple(self._resample_cost(edge) for edge in parent_edges)
    fusion = Cost()
    if (not node.is_stem and self.family == SPINENET_MBCONV and
        self.option["fusion_mode"] == "weighted"):
      fusion = Cost(params=len(self.inputs(index)))
    endpoint = Cost()
    if node.endpoint_level is not None:
      endpoint = _conv_bn(1, node.width, self.endpoints_num_filters,
                          node.feature_size)
    return BlockCost(block, resamples, fusion, endpoint)

  def cost(self):
    """Cost of the built backbone: the stem plus every used node."""
    return self.stem_cost() + _total(
        [self.block_cost(n.index).total for n in self.nodes if n.is_used])

  def executed_madds(self):
    """Multiply-adds the built layers execute for one image.

    cost().madds counts the network as SpineNet Sec. 3.2 orders it (and as
    the papers' FLOPs are counted): an upsampling resampler projects after
    upsampling. The layers project first wherever the factor is an integer
    (modeling/layers/resampling.py, project_then_upsample: the same
    function), so that 1x1 conv runs at the parent's feature size.
    """
    saved = 0
    for node in self.nodes:
      if not node.is_used:
        continue
      for edge in self.inputs(node.index, PARENT):
        parent = self.nodes[edge.parent]
        low, high = parent.feature_size, node.feature_size
        if (parent.level <= node.level or high[0] % low[0] or
            high[1] % low[1]):
          continue
        channels = parent.width
        if self.family == SPINENET:
          channels = self.resample_filters(edge)
        saved += channels * node.in_width * (
            high[0] * high[1] - low[0] * low[1])
    return self.cost().madds - saved

  def _residual_group_cost(self, node):
    costs = []
    in_width = node.in_width
    size = node.feature_size
    f = node.filters
    for _ in range(node.repeats):
      if node.block_fn == "residual":
        costs += [_conv_bn(3, in_width, f, size), _conv_bn(3, f, f, size)]
      elif node.block_fn == "bottleneck":
        costs += [_conv_bn(1, in_width, f, size), _conv_bn(3, f, f, size),
                  _conv_bn(1, f, node.width, size)]
      else:  # ResNeXt: grouped 3x3 of cardinality x base_width x f / 64.
        inner = RESNEXT_CARDINALITY * max(
            1, self.option["resnext_base_width"] * f // 64)
        costs += [_conv_bn(1, in_width, inner, size),
                  _conv_bn(3, inner, inner, size, groups=RESNEXT_CARDINALITY),
                  _conv_bn(1, inner, node.width, size)]
      if in_width != node.width:  # Projection shortcut (first repeat only).
        costs.append(_conv_bn(1, in_width, node.width, size))
      in_width = node.width
    return _total(costs)

  def _mbconv_group_cost(self, node):
    opt = self.option
    costs = []
    in_width = node.in_width
    # A strided first repeat (the level-2 stem block) expands its input at
    # the level below.
    in_size = feature_size(self.input_size,
                           node.level - (1 if node.strides == 2 else 0))
    for _ in range(node.repeats):
      expanded = in_width * opt["expand_ratio"]
      if opt["expand_ratio"] != 1:
        costs.append(_conv_bn(1, in_width, expanded, in_size))
      costs.append(_depthwise_bn(opt["kernel_size"], expanded,
                                 node.feature_size))
      if opt["se_ratio"]:
        # SE width from the block INPUT width (modeling/layers/mbconv.py).
        squeeze = max(1, int(in_width * opt["se_ratio"]))
        costs += [_conv_bn(1, expanded, squeeze, (1, 1), bn=False, bias=True),
                  _conv_bn(1, squeeze, expanded, (1, 1), bn=False, bias=True)]
      costs.append(_conv_bn(1, expanded, node.width, node.feature_size))
      in_width, in_size = node.width, node.feature_size
    return _total(costs)

  def _resample_cost(self, edge):
    parent, child = self.nodes[edge.parent], self.nodes[edge.child]
    levels_down = child.level - parent.level
    if self.family == SPINENET:
      reduced = self.resample_filters(edge)
      costs = [_conv_bn(1, parent.width, reduced, parent.feature_size)]
      if levels_down > 0:  # Then max-pools, which hold and count nothing.
        costs.append(_conv_bn(3, reduced, reduced, feature_size(
            self.input_size, parent.level + 1)))
      costs.append(_conv_bn(1, reduced, child.in_width, child.feature_size))
      return _total(costs)
    channels, costs = parent.width, []
    first = parent.level + 1
    if levels_down > 0 and self.option["downsample_mode"] == "space_to_depth":
      channels, first = 4 * channels, first + 1
    for level in range(first, child.level + 1):
      costs.append(_depthwise_bn(3, channels,
                                 feature_size(self.input_size, level)))
    costs.append(_conv_bn(1, channels, child.in_width, child.feature_size))
    return _total(costs)


def _wire(family, input_size, min_level, max_level, stem_filters,
          endpoints_num_filters, stem, specs, widths, filters, repeats,
          block_fns, options):
  """Nodes and edges from stem blocks and parsed specs (the wiring rule).

  stem: ((level, strides, in_width), ...) of the stem blocks; widths,
  filters, repeats, block_fns: one per block, stem blocks first.
  """
  num_stem = len(stem)
  nodes, edges = [], []
  for i in range(num_stem + len(specs)):
    is_stem = i < num_stem
    if is_stem:
      level, strides, in_width = stem[i]
      is_output = False
    else:
      spec = specs[i - num_stem]
      level, strides, in_width = spec.level, 1, widths[i]
      is_output = spec.is_output
    nodes.append(Node(
        index=i, label=f"S{i + 1}" if is_stem else str(i - num_stem + 1),
        layer_prefix=(f"stem_block_{i + 1}" if is_stem
                      else f"block_{i - num_stem + 1}"),
        level=level, block_fn=block_fns[i], filters=filters[i],
        in_width=in_width, width=widths[i], repeats=repeats[i],
        strides=strides, feature_size=feature_size(input_size, level),
        is_stem=is_stem, is_output=is_output,
        endpoint_level=(level if is_output and min_level <= level <= max_level
                        else None),
        is_used=False))

  def shape(index):
    return nodes[index].feature_size + (nodes[index].width,)

  consumed = [False] * len(nodes)
  for k, spec in enumerate(specs):
    child = num_stem + k
    for offset in spec.input_offsets:
      edges.append(Edge(offset, child, PARENT))
      consumed[offset] = True
    if spec.is_output:
      # An output block also fuses every earlier block nobody has consumed
      # yet whose map already has its shape (SpineNet Sec. 3.2).
      for j in range(child):
        if not consumed[j] and shape(j) == shape(child):
          edges.append(Edge(j, child, UNCONSUMED))
          consumed[j] = True

  used = [node.endpoint_level is not None for node in nodes]
  for edge in reversed(edges):  # Edges point forward: children come first.
    used[edge.parent] = used[edge.parent] or used[edge.child]
  for j in range(num_stem - 2, -1, -1):  # Stem block j feeds stem block j+1.
    used[j] = used[j] or used[j + 1]
  nodes = tuple(dataclasses.replace(node, is_used=u)
                for node, u in zip(nodes, used))
  return ScalePermutedNetwork(
      family=family, input_size=tuple(int(s) for s in input_size),
      min_level=min_level, max_level=max_level, stem_filters=stem_filters,
      endpoints_num_filters=endpoints_num_filters, nodes=nodes,
      edges=tuple(edges), options=tuple(sorted(options.items())))


def spinenet_network(input_size, specs, block_filters, min_level=3,
                     max_level=7, block_repeats=1, stem_filters=64,
                     endpoints_num_filters=256, resample_alpha=0.5,
                     block_fn_override=None, resnext_base_width=4):
  """SpineNet: residual/bottleneck (or ResNeXt) blocks, SpineNetResample.

  Args:
    input_size: (height, width) of the image.
    specs: BlockSpec list from parse_block_specs (residual block types).
    block_filters: the `filters` argument (inner width) of every block, stem
      blocks first; the number of stem blocks (all level 2) is
      len(block_filters) - len(specs). Output width = filters x
      BLOCK_EXPANSION[block_fn].
    min_level, max_level: endpoint levels.
    block_repeats: blocks in sequence per node (an int, as SpineNet Table 1).
    stem_filters: the 7x7 stride-2 stem conv's width.
    endpoints_num_filters: width of the endpoint 1x1 conv-BN.
    resample_alpha: SpineNet Sec. 3.2's alpha.
    block_fn_override: None, or "resnext" (bottlenecks become ResNeXt blocks
      of the same output width, SpineNet appendix B).
    resnext_base_width: 4 (32x4d) or 8 (32x8d).

  Raises:
    ValueError: a bad override, repeat count or width, or a resampling whose
      reduced width would be zero (alpha too small).
  """
  if block_fn_override not in (None, "resnext"):
    raise ValueError(f"block_fn_override must be None or 'resnext', got "
                     f"{block_fn_override!r}")
  if (isinstance(block_repeats, bool) or not isinstance(block_repeats, int)
      or block_repeats < 1):
    raise ValueError(f"block_repeats must be an integer >= 1, got "
                     f"{block_repeats!r}")
  num_stem = len(block_filters) - len(specs)
  filters = per_block("block_filters", block_filters, num_stem + len(specs))
  spec_fns = ["bottleneck"] * num_stem + [s.block_fn for s in specs]
  widths = [f * BLOCK_EXPANSION[fn] for f, fn in zip(filters, spec_fns)]
  block_fns = ["resnext" if fn == "bottleneck" and block_fn_override else fn
               for fn in spec_fns]
  stem = [(2, 1, stem_filters if i == 0 else widths[i - 1])
          for i in range(num_stem)]
  network = _wire(
      SPINENET, input_size, min_level, max_level, stem_filters,
      endpoints_num_filters, stem, specs, widths, filters,
      [block_repeats] * len(widths), block_fns,
      dict(resample_alpha=resample_alpha,
           resnext_base_width=resnext_base_width))
  for edge in network.edges:
    if edge.kind == PARENT and network.resample_filters(edge) < 1:
      raise ValueError(
          f"Block {network.nodes[edge.child].label}: resampling parent "
          f"{network.nodes[edge.parent].label} to int(resample_alpha x "
          f"inner width) = 0 channels (resample_alpha={resample_alpha}); "
          "raise resample_alpha or the widths.")
  return network


def mbconv_network(input_size, specs, block_filters, stem_levels=(1, 2),
                   stem_strides=(1, 2), min_level=3, max_level=7,
                   block_repeats=1, stem_filters=8, endpoints_num_filters=48,
                   expand_ratio=6, kernel_size=3, se_ratio=0.2,
                   fusion_mode="sum", downsample_mode="strided_conv"):
  """SpineNet-MBConv / Eff-SpineNet: MBConv blocks, MBConvResample.

  Args:
    input_size: (height, width) of the image.
    specs: BlockSpec list from parse_block_specs (MBCONV_BLOCK_TYPES).
    block_filters: output width of every block, stem blocks first
      (Eff-SpineNet Table 1 order).
    stem_levels, stem_strides: level and first stride of each stem block.
    min_level, max_level: endpoint levels.
    block_repeats: an int or one per block (Eff-SpineNet Table 2).
    stem_filters: width of the 3x3 stride-2 stem conv.
    endpoints_num_filters: width of the endpoint 1x1 conv-BN.
    expand_ratio, kernel_size, se_ratio: MBConv parameters.
    fusion_mode: "sum" or "weighted" (Eff-SpineNet eq. 1).
    downsample_mode: "strided_conv" or "space_to_depth" (Eff-SpineNet
      Sec. 3.2).

  Raises:
    ValueError: naming the bad width, repeat count or mode.
  """
  if fusion_mode not in FUSION_MODES:
    raise ValueError(f"Unknown fusion mode {fusion_mode!r}; expected one of "
                     f"{FUSION_MODES}.")
  if downsample_mode not in DOWNSAMPLE_MODES:
    raise ValueError(f"Unknown downsample_mode {downsample_mode!r}; "
                     f"expected one of {DOWNSAMPLE_MODES}.")
  num_blocks = len(stem_levels) + len(specs)
  widths = per_block("block_filters", block_filters, num_blocks)
  repeats = per_block("block_repeats", block_repeats, num_blocks)
  stem = [(level, strides, stem_filters if i == 0 else widths[i - 1])
          for i, (level, strides) in enumerate(zip(stem_levels, stem_strides))]
  return _wire(
      SPINENET_MBCONV, input_size, min_level, max_level, stem_filters,
      endpoints_num_filters, stem, specs, widths, widths, repeats,
      ["mbconv"] * num_blocks,
      dict(expand_ratio=expand_ratio, kernel_size=kernel_size,
           se_ratio=se_ratio, fusion_mode=fusion_mode,
           downsample_mode=downsample_mode))
