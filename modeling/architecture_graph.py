"""The block graph of a scale-permuted backbone, ready to be drawn.

A SpineNet-family backbone is data: stem blocks, then block specs (level,
block type, parent offsets, is_output). This module turns a built backbone's
config (SpineNet, SpineNet-MBConv, Eff-SpineNet / SP-EfficientNet) into nodes
(one per block, in build order) and edges (parent -> child), which
modeling/architecture_drawing.py lays out as in the SpineNet paper's Figure 3:
x = block order, y = feature level.

Two kinds of edge exist, as in the network itself:
- "parent": the two (or more) learned input connections of a block.
- "unconsumed": an output block also fuses every earlier block nobody has
  consumed yet whose feature map has the output block's shape (SpineNet paper
  Sec. 3.2). Which blocks these are follows the backbones' own rule (same
  spatial size and same width), evaluated here without building anything.

Importing this module needs no TensorFlow; the width tables are read from the
backbone modules when a graph is made.
"""

import dataclasses
import re

PARENT = "parent"
UNCONSUMED = "unconsumed"

SPINENET = "spinenet"
SPINENET_MBCONV = "spinenet_mbconv"
FAMILIES = (SPINENET, SPINENET_MBCONV)

# How block types are written in titles and legends.
BLOCK_TYPE_NAMES = {"bottleneck": "bottleneck", "residual": "residual",
                    "resnext": "ResNeXt", "mbconv": "MBConv"}


@dataclasses.dataclass(frozen=True)
class Node:
  """One block (a group of `repeats` blocks in sequence) of the network.

  Attributes:
    index: position in the offsets list [stem blocks..., spec blocks...]; the
      parent offsets of the block specs index this.
    label: "S1", "S2", ... for stem blocks, "1", "2", ... for spec blocks
      (block k is the k-th spec entry).
    layer_prefix: name prefix of the block's layers in the backbone
      ("stem_block_1", "block_3"); its blocks are "<prefix>_repeat_<r>".
    level: feature level; the map is input size / 2^level.
    block_fn: "bottleneck", "residual", "resnext" or "mbconv".
    width: output channels of the block.
    repeats: blocks in sequence behind this node (SpineNet-96: 2).
    is_stem: one of the blocks before the scale-permuted blocks.
    is_output: marked as an output block in the spec.
    endpoint_level: the level of the backbone endpoint it feeds, or None
      (not an output, or an output outside min_level..max_level).
    is_used: some path leads from it to an endpoint. An unused block (e.g. an
      unconsumed block whose width matches no output block) is left out of
      the built keras.Model.
  """
  index: int
  label: str
  layer_prefix: str
  level: int
  block_fn: str
  width: int
  repeats: int
  is_stem: bool
  is_output: bool
  endpoint_level: int | None
  is_used: bool = True


@dataclasses.dataclass(frozen=True)
class Edge:
  """A feature map flowing from block `parent` into block `child` (indices)."""
  parent: int
  child: int
  kind: str = PARENT


@dataclasses.dataclass(frozen=True)
class ArchitectureGraph:
  """Nodes in build order and the edges between them.

  Attributes:
    name: the backbone's Keras name ("spinenet49").
    display_name: readable model name ("SpineNet-49").
    family: SPINENET or SPINENET_MBCONV.
    nodes: tuple of Node, node i has index i.
    edges: tuple of Edge; "parent" edges in spec order, each block's
      "unconsumed" edges right after its parent edges.
    min_level, max_level: endpoint levels.
  """
  name: str
  display_name: str
  family: str
  nodes: tuple
  edges: tuple
  min_level: int
  max_level: int

  @property
  def levels(self):
    """Sorted levels that hold at least one block."""
    return sorted({node.level for node in self.nodes})

  @property
  def block_types(self):
    """Block types in order of first appearance."""
    return list(dict.fromkeys(node.block_fn for node in self.nodes))

  @property
  def title(self):
    """E.g. "SpineNet-49 (bottleneck/residual blocks)"."""
    types = "/".join(BLOCK_TYPE_NAMES.get(t, t) for t in self.block_types)
    return f"{self.display_name} ({types} blocks)"

  def parents(self, index):
    """Indices of the blocks fused into block `index`, in fusion order."""
    return [edge.parent for edge in self.edges if edge.child == index]


def display_name(name):
  """A readable model name from a backbone's Keras name.

  "spinenet49s" -> "SpineNet-49S", "spinenet49xs_mbconv" -> "SpineNet-49XS
  MBConv", "eff_spinenet_d0" -> "Eff-SpineNet-D0", "sp_efficientnet_b0" ->
  "SP-EfficientNet-B0"; any other name is returned unchanged.
  """
  patterns = (
      (r"spinenet(\d+[a-z]*)_mbconv", "SpineNet-{} MBConv"),
      (r"spinenet(\d+[a-z]*)", "SpineNet-{}"),
      (r"eff_spinenet_([a-z]\d+)", "Eff-SpineNet-{}"),
      (r"sp_efficientnet_([a-z]\d+)", "SP-EfficientNet-{}"),
  )
  for pattern, template in patterns:
    match = re.fullmatch(pattern, name)
    if match:
      return template.format(match.group(1).upper())
  return name


def _require(config, keys, family):
  missing = [key for key in keys if key not in config]
  if missing:
    raise ValueError(
        f"The {family} backbone config lacks {missing}; expected the dict "
        f"returned by the backbone's get_config() (keys present: "
        f"{sorted(config)}).")


def _per_block(value, num_blocks, what):
  """An int for every block, or a per-block list checked for its length."""
  if isinstance(value, int) and not isinstance(value, bool):
    return [value] * num_blocks
  values = list(value)
  if len(values) != num_blocks:
    raise ValueError(f"{what} has {len(values)} entries for {num_blocks} "
                     "blocks (stem blocks first).")
  return [int(v) for v in values]


def _spinenet_blocks(config):
  """(level, block_fn, width) of each block and the parsed specs: SpineNet."""
  # pylint: disable=g-import-not-at-top
  from modeling.backbones import spinenet as spinenet_lib
  from modeling.layers.blocks import BLOCK_EXPANSION
  # pylint: enable=g-import-not-at-top
  _require(config, ("block_specs", "num_init_blocks", "filter_size_scale",
                    "block_repeats", "min_level", "max_level"), SPINENET)
  num_init = config["num_init_blocks"]
  specs = spinenet_lib.parse_block_specs(
      config["block_specs"], num_init, config["min_level"],
      config["max_level"])
  scale = config["filter_size_scale"]
  resnext = config.get("block_fn_override") == "resnext"

  def block(level, block_fn):
    # ResNeXt replaces bottlenecks at the same output width.
    width = (int(spinenet_lib.FILTER_SIZE_MAP[level] * scale) *
             BLOCK_EXPANSION[block_fn])
    shown = "resnext" if resnext and block_fn == "bottleneck" else block_fn
    return level, shown, width

  blocks = [block(2, "bottleneck") for _ in range(num_init)]
  blocks += [block(spec.level, spec.block_fn) for spec in specs]
  return blocks, specs, num_init


def _mbconv_blocks(config):
  """(level, block_fn, width) of each block and the parsed specs: MBConv."""
  # pylint: disable=g-import-not-at-top
  from modeling.backbones import spinenet as spinenet_lib
  from modeling.backbones import spinenet_mbconv as mbconv_lib
  # pylint: enable=g-import-not-at-top
  _require(config, ("block_specs", "filter_size_scale", "block_filters",
                    "block_repeats", "min_level", "max_level"),
           SPINENET_MBCONV)
  num_init = len(mbconv_lib.STEM_LEVELS)
  specs = spinenet_lib.parse_block_specs(
      config["block_specs"], num_init, config["min_level"],
      config["max_level"], block_types=mbconv_lib.BLOCK_TYPES)
  if config["block_filters"] is None:
    widths = mbconv_lib.level_widths(specs, config["filter_size_scale"])
  else:
    widths = _per_block(config["block_filters"], num_init + len(specs),
                        "block_filters")
  levels = list(mbconv_lib.STEM_LEVELS) + [spec.level for spec in specs]
  blocks = [(level, "mbconv", width) for level, width in zip(levels, widths)]
  return blocks, specs, num_init


def graph_from_config(config, family):
  """The block graph of a scale-permuted backbone from its get_config().

  Args:
    config: dict from SpineNet.get_config() (family SPINENET) or
      SpineNetMBConv.get_config() (family SPINENET_MBCONV; Eff-SpineNet and
      SP-EfficientNet-B0 are SpineNetMBConv models).
    family: SPINENET or SPINENET_MBCONV.

  Returns:
    ArchitectureGraph.

  Raises:
    ValueError: an unknown family, a config missing the keys of that family,
      or block specs that the backbone itself would reject.
  """
  if family == SPINENET:
    blocks, specs, num_init = _spinenet_blocks(config)
  elif family == SPINENET_MBCONV:
    blocks, specs, num_init = _mbconv_blocks(config)
  else:
    raise ValueError(f"Unknown backbone family {family!r}; expected one of "
                     f"{FAMILIES}.")
  repeats = _per_block(config["block_repeats"], len(blocks), "block_repeats")
  min_level, max_level = config["min_level"], config["max_level"]
  height, width = tuple(config.get("input_shape", (640, 640, 3)))[:2]

  def shape(index):
    # The backbones compare feature shapes: ceil(size / 2^level) and width.
    level, _, channels = blocks[index]
    return (-(-height // 2 ** level), -(-width // 2 ** level), channels)

  nodes = []
  for i, (level, block_fn, channels) in enumerate(blocks):
    is_stem = i < num_init
    spec = None if is_stem else specs[i - num_init]
    is_output = bool(spec and spec.is_output)
    nodes.append(Node(
        index=i,
        label=f"S{i + 1}" if is_stem else str(i - num_init + 1),
        layer_prefix=(f"stem_block_{i + 1}" if is_stem
                      else f"block_{i - num_init + 1}"),
        level=level, block_fn=block_fn, width=channels, repeats=repeats[i],
        is_stem=is_stem, is_output=is_output,
        endpoint_level=(level if is_output and min_level <= level <= max_level
                        else None)))

  edges = []
  out_degree = [0] * num_init
  for k, spec in enumerate(specs):
    child = num_init + k
    for offset in spec.input_offsets:
      edges.append(Edge(offset, child, PARENT))
      out_degree[offset] += 1
    if spec.is_output:
      for j in range(child):
        if out_degree[j] == 0 and shape(j) == shape(child):
          edges.append(Edge(j, child, UNCONSUMED))
          out_degree[j] += 1
    out_degree.append(0)

  used = [node.endpoint_level is not None for node in nodes]
  for edge in reversed(edges):  # Edges point forward: children come first.
    used[edge.parent] = used[edge.parent] or used[edge.child]
  nodes = [dataclasses.replace(node, is_used=u) for node, u in zip(nodes, used)]

  name = config.get("name", family)
  return ArchitectureGraph(
      name=name, display_name=display_name(name), family=family,
      nodes=tuple(nodes), edges=tuple(edges), min_level=min_level,
      max_level=max_level)


def graph_from_backbone(backbone):
  """The block graph of a built backbone (its config; no weights are read).

  Args:
    backbone: a SpineNet or SpineNetMBConv keras.Model (SpineNet-49/96/...,
      SpineNet-MBConv, Eff-SpineNet, SP-EfficientNet-B0).

  Raises:
    ValueError: the backbone is not scale-permuted (e.g. ResNet).
  """
  # pylint: disable=g-import-not-at-top
  from modeling.backbones.spinenet import SpineNet
  from modeling.backbones.spinenet_mbconv import SpineNetMBConv
  # pylint: enable=g-import-not-at-top
  if isinstance(backbone, SpineNet):
    return graph_from_config(backbone.get_config(), SPINENET)
  if isinstance(backbone, SpineNetMBConv):
    return graph_from_config(backbone.get_config(), SPINENET_MBCONV)
  raise ValueError(
      f"The architecture drawing needs a scale-permuted backbone (SpineNet, "
      f"SpineNet-MBConv, Eff-SpineNet); got {type(backbone).__name__} "
      f"{getattr(backbone, 'name', '')!r}, which has no block specs to draw.")
