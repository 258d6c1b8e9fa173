"""The block graph of a scale-permuted backbone, ready to be drawn.

A SpineNet-family backbone is data: stem blocks, then block specs (level,
block type, parent offsets, is_output). This module turns a built backbone's
config (SpineNet, SpineNet-MBConv, Eff-SpineNet / SP-EfficientNet) into nodes
(one per block, in build order) and edges (parent -> child), which
modeling/architecture_drawing.py lays out as in the SpineNet paper's Figure 3:
x = block order, y = feature level.

The nodes and edges are a view of the backbone's one description,
modeling/backbones/scale_permuted.py (which also holds the wiring rule: parent
edges, and the "unconsumed" edges of SpineNet Sec. 3.2); nothing is re-derived
here. Edge kinds: PARENT (a learned input connection of a block) and
UNCONSUMED (an earlier block nobody consumed, fused into the output block of
the same shape).

Importing this module needs no TensorFlow (the drawing is made without
it): the backbones and their description are imported when a graph is made,
because importing modeling.backbones registers, hence imports, every
backbone. The names below are the description's own (a test keeps them
equal to modeling/backbones/scale_permuted.py's).
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


def __getattr__(name):
  """`Edge` is the description's edge class, loaded on first use."""
  if name == "Edge":
    # pylint: disable=g-import-not-at-top
    from modeling.backbones.scale_permuted import Edge
    return Edge
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def graph_from_config(config, family):
  """The block graph of a scale-permuted backbone from its get_config().

  Args:
    config: dict from SpineNet.get_config() (family SPINENET) or
      SpineNetMBConv.get_config() (family SPINENET_MBCONV; Eff-SpineNet and
      SP-EfficientNet-B0 are SpineNetMBConv models). It must hold the keys
      that shape the graph (block specs, widths, repeats, levels); others
      take the backbone's defaults.
    family: SPINENET or SPINENET_MBCONV.

  Returns:
    ArchitectureGraph.

  Raises:
    ValueError: an unknown family, a config missing the keys of that family,
      or block specs that the backbone itself would reject.
  """
  # pylint: disable=g-import-not-at-top
  if family == SPINENET:
    from modeling.backbones import spinenet as backbone_lib
    _require(config, ("block_specs", "num_init_blocks", "filter_size_scale",
                      "block_repeats", "min_level", "max_level"), family)
  elif family == SPINENET_MBCONV:
    from modeling.backbones import spinenet_mbconv as backbone_lib
    _require(config, ("block_specs", "filter_size_scale", "block_filters",
                      "block_repeats", "min_level", "max_level"), family)
  else:
    raise ValueError(f"Unknown backbone family {family!r}; expected one of "
                     f"{FAMILIES}.")
  # pylint: enable=g-import-not-at-top
  network = backbone_lib.network_description(
      {key: value for key, value in config.items() if key != "name"})
  nodes = tuple(
      Node(index=n.index, label=n.label, layer_prefix=n.layer_prefix,
           level=n.level, block_fn=n.block_fn, width=n.width,
           repeats=n.repeats, is_stem=n.is_stem, is_output=n.is_output,
           endpoint_level=n.endpoint_level, is_used=n.is_used)
      for n in network.nodes)
  name = config.get("name", family)
  return ArchitectureGraph(
      name=name, display_name=display_name(name), family=family,
      nodes=nodes, edges=network.edges, min_level=network.min_level,
      max_level=network.max_level)


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
