"""Model Garden checkpoints mapped onto this project's models, by structure.

The trained SpineNet weights that exist are TensorFlow Model Garden TF2
checkpoints (`github.com/tensorflow/models`, folder `official/vision`; how
its layers correspond to ours: docs/model_garden_conventions.md). This
module reads one with `tf.train.load_checkpoint` alone (no Model Garden
install) and pairs every variable of a model of this project with one
variable of the checkpoint. Nothing is guessed from shapes: every pair comes
from the structure both networks are built from.

How Model Garden's variables are found:
- Subclassed layers (the RetinaNet head) keep their variables under their
  attribute names: `model/_head/_cls_convs/0/kernel`, `_cls_norms/<level
  index>/<conv index>/gamma`, `_classifier`, `_box_convs`, `_box_norms`,
  `_box_regressor`.
- The SpineNet backbone is a Keras 2 functional model, whose checkpoint
  keys number its layers in graph order (`model/_backbone/layer_with_weights-
  N/...`), an order that depends on every weightless op of the graph.
  Instead, each layer is identified by the name Keras 2 gave it when it was
  created, which the checkpoint's object graph keeps with each variable
  (`full_name`: "conv2d_44/kernel", "bottleneck_block_6/conv2d/kernel").
  Keras 2 numbers the layers of one class in creation order (`conv2d`,
  `conv2d_1`, ...), and Model Garden's SpineNet creates them in a fixed
  order: the stem conv and batch norm, the stem blocks, then for every block
  the resampling of its first and its second parent (1x1 conv + batch norm,
  a 3x3 stride-2 conv + batch norm when it goes down, 1x1 conv + batch norm)
  followed by the block's repeats, and last the endpoint convs and batch
  norms (`tensorflow/models/official/vision/modeling/backbones/spinenet.py`).
  This project's SpineNet walks the same nodes and edges
  (modeling/backbones/scale_permuted.py), so the k-th `conv2d` Model Garden
  created is the k-th convolution of that walk, and likewise for batch norms,
  bottleneck and residual blocks. Layers that feed no endpoint are left out
  on both sides (Keras prunes them from a functional model, and their
  variables are not in the checkpoint): Model Garden's 16th SpineNet block
  (level 2, docs/model_garden_conventions.md) is one.

What is refused: a variable of ours without a counterpart (missing), a
checkpoint variable of the model that nothing of ours takes (unused: Model
Garden computes something ours does not, such as a squeeze-excitation in a
block, an attribute head or an FPN decoder), a pair whose shapes differ,
and layers whose variables all pair but which our model, as configured,
computes with another function (differences, e.g. a SpineNet-Mobile block's
squeeze-excitation unless the MBConv blocks are built with Model Garden's,
SE_BINDINGS, or a classifier head pooling other levels). `Mapping.check` raises
ImportMismatchError listing each with the name on both sides and the
shapes, before any value is read.
"""

import dataclasses
import re

import keras
import numpy as np
import tensorflow as tf
import tqdm
from tensorflow.core.protobuf import trackable_object_graph_pb2

from modeling.backbones import scale_permuted
from modeling.backbones.spinenet import SpineNet
from modeling.backbones.spinenet_mbconv import SpineNetMBConv
from modeling.heads.classification import ClassificationHead
from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.retinanet import RetinaNetHead
from official.core import checkpointing

_ATTRIBUTE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_FUNCTIONAL_LAYER = re.compile(r"^layer_with_weights-(\d+)$")
_KERAS_NAME = re.compile(r"^(?P<base>.*?)(?:_(?P<ordinal>\d+))?$")
# Keras 2 class names of layers (snake case) -> the kind used here. A plain
# and a synchronized batch norm play the same part.
_KINDS = {
    "conv2d": "conv2d",
    "depthwise_conv2d": "depthwise_conv2d",
    "batch_normalization": "batch_norm",
    "sync_batch_normalization": "batch_norm",
    "bottleneck_block": "bottleneck_block",
    "residual_block": "residual_block",
    "inverted_bottleneck_block": "inverted_bottleneck_block",
}
# This project's block types -> the Keras 2 layer Model Garden builds.
_BLOCK_KINDS = {"bottleneck": "bottleneck_block", "residual": "residual_block"}
# Inside Model Garden's blocks (nn_blocks.BottleneckBlock / ResidualBlock):
# attribute -> the sublayer of ours (modeling/layers/blocks.py).
_BLOCK_SUBLAYERS = {
    "bottleneck_block": (("_conv1", "conv_1/conv"), ("_norm1", "conv_1/bn"),
                         ("_conv2", "conv_2/conv"), ("_norm2", "conv_2/bn"),
                         ("_conv3", "conv_3/conv"), ("_norm3", "conv_3/bn"),
                         ("_shortcut", "shortcut/conv"),
                         ("_norm0", "shortcut/bn")),
    "residual_block": (("_conv1", "conv_1/conv"), ("_norm1", "conv_1/bn"),
                       ("_conv2", "conv_2/conv"), ("_norm2", "conv_2/bn"),
                       ("_shortcut", "shortcut/conv"),
                       ("_norm0", "shortcut/bn")),
    # nn_blocks.InvertedBottleneckBlock -> modeling/layers/mbconv.py's
    # MBConvBlock.
    "inverted_bottleneck_block": (
        ("_conv0", "expand/conv"), ("_norm0", "expand/bn"),
        ("_conv1", "depthwise/depthwise"), ("_norm1", "depthwise/bn"),
        ("_squeeze_excitation/_se_reduce", "se/reduce"),
        ("_squeeze_excitation/_se_expand", "se/expand"),
        ("_conv2", "project/conv"), ("_norm2", "project/bn")),
}
# Keras 2's DepthwiseConv2D names its kernel "depthwise_kernel", Keras 3's
# "kernel" (a SeparableConv2D keeps "depthwise_kernel" in both).
_DEPTHWISE_LEAVES = {"depthwise_kernel": "kernel"}
_MAX_LISTED = 40


class ImportMismatchError(ValueError):
  """The checkpoint and the configured model are not the same network."""


@dataclasses.dataclass(frozen=True)
class SourceVariable:
  """One variable of the Model Garden checkpoint.

  Attributes:
    key: the checkpoint key (".../.ATTRIBUTES/VARIABLE_VALUE").
    path: the object path, the key without that suffix
      ("model/_head/_classifier/bias").
    full_name: the variable's name when it was saved
      ("retina_net_model/retina_net_head/scores/bias"), "" when absent.
    shape: list of ints.
  """
  key: str
  path: str
  full_name: str
  shape: tuple

  def describe(self):
    name = f" ({self.full_name})" if self.full_name else ""
    return f"{self.path}{name} {list(self.shape)}"


class ModelGardenCheckpoint:
  """The variables of a Model Garden TF2 checkpoint, by object path.

  Reads only the index and the object graph; values are read by `value`.

  Args:
    path: checkpoint path prefix (the file name before ".index").

  Raises:
    ImportMismatchError: the checkpoint cannot be read or holds no object
      graph (a TF1 name-based checkpoint).
  """

  def __init__(self, path):
    self.path = path
    try:
      self.reader = tf.train.load_checkpoint(path)
      serialized = self.reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    except (tf.errors.OpError, ValueError) as e:
      raise ImportMismatchError(
          f"Checkpoint {path} cannot be read as a TF2 (object-based) "
          f"checkpoint: {type(e).__name__}: {str(e).splitlines()[0]}. "
          "Expected the prefix of a Model Garden checkpoint, e.g. "
          "DIR/ckpt-231500 (DIR/ckpt-231500.index must exist).") from e
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(serialized)
    shapes = self.reader.get_variable_to_shape_map()
    full_names = {}
    for node in graph.nodes:
      for attribute in node.attributes:
        full_names[attribute.checkpoint_key] = attribute.full_name
    self.variables = {}
    for key, shape in shapes.items():
      if not key.endswith(_ATTRIBUTE_SUFFIX):
        continue  # The object graph itself, or a non-variable attribute.
      var_path = key[:-len(_ATTRIBUTE_SUFFIX)]
      self.variables[var_path] = SourceVariable(
          key, var_path, full_names.get(key, "").split(":")[0],
          tuple(int(d) for d in shape))

  def under(self, prefix):
    """Variables whose object path starts with prefix + "/"."""
    start = prefix + "/"
    return {p: v for p, v in self.variables.items() if p.startswith(start)}

  def find_model(self):
    """The object path of the model: the node holding the backbone.

    Model Garden's trainer saves the model as "model" (RetinaNetModel keeps
    `_backbone`, `_decoder`, `_head`); its `checkpoint_items` save writes
    `backbone`, `decoder`, `head` at the root instead.

    Returns:
      (model prefix, {"backbone": path, "decoder": path or None,
      "head": path or None}).

    Raises:
      ImportMismatchError: no backbone in the checkpoint.
    """
    prefixes = sorted({p.rsplit("/", 1)[0] for p in self.variables})
    for model in ("model", ""):
      parts = {}
      for part in ("backbone", "decoder", "head"):
        for name in (f"_{part}", part):
          candidate = f"{model}/{name}".lstrip("/")
          if any(p == candidate or p.startswith(candidate + "/")
                 for p in prefixes):
            parts[part] = candidate
            break
      if "backbone" in parts:
        return model, {k: parts.get(k) for k in ("backbone", "decoder", "head")}
    roots = sorted({p.split("/")[0] for p in self.variables})
    raise ImportMismatchError(
        f"Checkpoint {self.path} holds no Model Garden model: no variables "
        f"under model/_backbone or backbone (its top-level objects: "
        f"{roots}).")

  def value(self, variable):
    """The numpy value of a SourceVariable."""
    return self.reader.get_tensor(variable.key)


@dataclasses.dataclass
class FunctionalLayer:
  """One weighted layer of a Keras 2 functional model in the checkpoint.

  Attributes:
    path: object path ("model/_backbone/layer_with_weights-104").
    kind: a _KINDS value, or the raw Keras 2 class name when unknown.
    name: the Keras 2 layer name ("bottleneck_block_6").
    ordinal: creation rank within its class (the name's number; 0 without).
    variables: {path relative to the layer: SourceVariable}.
  """
  path: str
  kind: str
  name: str
  ordinal: int
  variables: dict


def functional_layers(checkpoint, prefix):
  """The weighted layers of the functional model saved under prefix.

  Args:
    checkpoint: a ModelGardenCheckpoint.
    prefix: the model's object path ("model/_backbone").

  Returns:
    list of FunctionalLayer, by kind then creation rank.

  Raises:
    ImportMismatchError: a variable outside `layer_with_weights-N`, or a
      variable without the saved name the creation order is read from.
  """
  layers = {}
  for var_path, variable in checkpoint.under(prefix).items():
    rest = var_path[len(prefix) + 1:].split("/")
    if not _FUNCTIONAL_LAYER.match(rest[0]):
      raise ImportMismatchError(
          f"{variable.describe()}: expected the variables of the functional "
          f"model {prefix} under layer_with_weights-N/.")
    layer_path = f"{prefix}/{rest[0]}"
    relative = rest[1:]
    name_parts = variable.full_name.split("/")
    if not variable.full_name or len(name_parts) < len(relative) + 1:
      raise ImportMismatchError(
          f"{variable.describe()}: the checkpoint does not keep the Keras "
          "layer name this variable was created under, which gives Model "
          "Garden's creation order; this importer needs checkpoints written "
          "by Model Garden's TF2 trainer.")
    layer_name = name_parts[-len(relative) - 1]
    match = _KERAS_NAME.match(layer_name)
    kind = _KINDS.get(match.group("base"), match.group("base"))
    ordinal = int(match.group("ordinal") or 0)
    layer = layers.setdefault(layer_path, FunctionalLayer(
        layer_path, kind, layer_name, ordinal, {}))
    if (layer.kind, layer.ordinal) != (kind, ordinal):
      raise ImportMismatchError(
          f"{layer_path}: its variables were created under two layer names "
          f"({layer.name} and {layer_name}).")
    layer.variables["/".join(relative)] = variable
  return sorted(layers.values(), key=lambda l: (l.kind, l.ordinal))


@dataclasses.dataclass
class Mapping:
  """Pairs of (our variable, checkpoint variable) and what did not pair.

  Attributes:
    pairs: list of (keras.Variable, SourceVariable), shapes equal.
    mismatched: list of (our path, our shape, SourceVariable).
    missing: list of (our path, shape, why): variables of ours without a
      counterpart.
    unused: list of (SourceVariable, why): checkpoint variables of the model
      that nothing of ours takes.
    notes: lines for the log: what the two networks do differently without
      changing the function (e.g. Model Garden's unused 16th block).
    counts: lines "kind: ours N, the checkpoint's M" for the layer kinds
      whose numbers differ (another model id, another block repeat count).
    differences: list of (where, why): layers whose variables pair up but
      which Model Garden's network computes with another function than ours
      (where names both sides); the import is refused.
    ignored: number of checkpoint variables outside the model (optimizer
      slots, the step counter), not imported.
  """
  pairs: list = dataclasses.field(default_factory=list)
  mismatched: list = dataclasses.field(default_factory=list)
  missing: list = dataclasses.field(default_factory=list)
  unused: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)
  counts: list = dataclasses.field(default_factory=list)
  differences: list = dataclasses.field(default_factory=list)
  ignored: int = 0

  @property
  def ok(self):
    return not (self.mismatched or self.missing or self.unused or
                self.differences)

  def check(self, checkpoint_path, what):
    """Raises ImportMismatchError listing every problem; returns self."""
    if self.ok:
      return self
    lines = [f"Checkpoint {checkpoint_path} is not the {what} the config "
             f"builds: {len(self.pairs)} variables pair up, "
             f"{len(self.mismatched)} differ in shape, {len(self.missing)} "
             f"of ours are missing, {len(self.unused)} of the checkpoint's "
             f"model are unused, {len(self.differences)} layers compute "
             "another function. Nothing was written."]
    if self.counts:
      lines.append("Layers of the backbone, by kind: " +
                   "; ".join(self.counts) + ".")
    if self.mismatched:
      lines.append("Shapes differ (ours <- Model Garden's):")
      for path, shape, source in self.mismatched[:_MAX_LISTED]:
        lines.append(f"  {path} {list(shape)} <- {source.describe()}")
      _more(lines, self.mismatched)
    if self.missing:
      lines.append("Ours, with nothing in the checkpoint to take:")
      for path, shape, why in self.missing[:_MAX_LISTED]:
        lines.append(f"  {path} {list(shape)}: {why}")
      _more(lines, self.missing)
    if self.unused:
      lines.append("The checkpoint's, computed by Model Garden's network but "
                   "by nothing of ours:")
      for source, why in self.unused[:_MAX_LISTED]:
        lines.append(f"  {source.describe()}: {why}")
      _more(lines, self.unused)
    if self.differences:
      lines.append("Paired, but Model Garden's layer computes another "
                   "function than ours as configured:")
      for where, why in self.differences[:_MAX_LISTED]:
        lines.append(f"  {where}: {why}")
      _more(lines, self.differences)
    if self.mismatched or self.missing or self.unused:
      lines.append("Configure the model as the checkpoint's (model id, filter "
                   "scale, endpoint width, block repeats, head convs and "
                   "filters, number of classes) with --gin_file/--gin_param.")
    raise ImportMismatchError("\n".join(lines))


def _more(lines, items):
  if len(items) > _MAX_LISTED:
    lines.append(f"  ... and {len(items) - _MAX_LISTED} more.")


class _Pairer:
  """Accumulates a Mapping from layer-to-layer correspondences."""

  def __init__(self, ours):
    self.ours = ours  # path -> keras.Variable
    self.taken = set()
    self.mapping = Mapping()

  def layer(self, sources, our_prefix, why_unused):
    """Pairs {leaf name: SourceVariable} with our variables under a prefix.

    Args:
      sources: {variable name inside the layer ("kernel", "gamma"):
        SourceVariable}.
      our_prefix: our layer's variable path prefix ("stem_conv/conv").
      why_unused: the reason recorded for a checkpoint variable of the layer
        that ours lacks.
    """
    for leaf, source in sorted(sources.items()):
      our_path = f"{our_prefix}/{leaf}"
      variable = self.ours.get(our_path)
      if variable is None or our_path in self.taken:
        self.mapping.unused.append((source, why_unused.format(path=our_path)))
        continue
      self.taken.add(our_path)
      if tuple(variable.shape) != source.shape:
        self.mapping.mismatched.append((our_path, tuple(variable.shape),
                                        source))
      else:
        self.mapping.pairs.append((variable, source))

  def unused(self, sources, why):
    for source in sources:
      self.mapping.unused.append((source, why))

  def finish(self, our_paths, why_missing):
    """Records our variables under our_paths that nothing took."""
    for path in our_paths:
      if path not in self.taken:
        self.mapping.missing.append((path, tuple(self.ours[path].shape),
                                     why_missing))
    return self.mapping


def our_variables(model):
  """{variable path: variable} of a Keras 3 model's weights.

  Random-generator states (keras.random.SeedGenerator, held by stochastic
  depth and DropBlock) are not weights and are left out.

  Raises:
    ValueError: two variables share a path (the mapping would be
      ambiguous).
  """
  found = {}
  for variable in model.variables:
    path = variable.path
    if "seed_generator" in path:
      continue
    if path in found:
      raise ValueError(f"Two variables of {model.name!r} have the path "
                       f"{path!r}; cannot map them unambiguously.")
    found[path] = variable
  return found


# --- SpineNet backbone.


def spinenet_layer_sequence(backbone):
  """Model Garden's creation order of SpineNet's weighted layers, as ours.

  Args:
    backbone: a modeling.backbones.spinenet.SpineNet.

  Returns:
    list of (kind, our layer path prefix): kind is "conv2d", "batch_norm",
    "bottleneck_block" or "residual_block"; the prefix names our layer
    (for blocks, the block; its sublayers follow _BLOCK_SUBLAYERS).

  Raises:
    ImportMismatchError: a structure Model Garden's SpineNet cannot build
      (ResNeXt blocks, a block with other than two parents).
  """
  network = backbone.network
  config = backbone.get_config()
  if config.get("fusion_mode", "sum") != "sum":
    raise ImportMismatchError(
        f"Our backbone fuses with fusion_mode={config['fusion_mode']!r}; "
        "Model Garden's SpineNet sums its parents (weighted fusion is off in "
        "every Model Garden SpineNet config), so no checkpoint of it holds "
        "fusion weights.")
  sequence = [("conv2d", "stem_conv/conv"), ("batch_norm", "stem_conv/bn")]
  for node in network.nodes:
    if not node.is_used:
      continue
    if node.block_fn not in _BLOCK_KINDS:
      raise ImportMismatchError(
          f"Our block {node.label} ({node.layer_prefix}) is a {node.block_fn} "
          "block; Model Garden's SpineNet has only bottleneck and residual "
          "blocks.")
    if not node.is_stem:
      edges = network.inputs(node.index, scale_permuted.PARENT)
      if len(edges) != 2:
        raise ImportMismatchError(
            f"Our block {node.label} has {len(edges)} parents; Model "
            "Garden's SpineNet resamples exactly two (input_offsets[0] and "
            "[1]).")
      for j, edge in enumerate(edges, start=1):
        prefix = f"{node.layer_prefix}_resample_{j}"
        parts = ["reduce"]
        if node.level > network.nodes[edge.parent].level:
          parts.append("downsample")
        parts.append("project")
        for part in parts:
          sequence += [("conv2d", f"{prefix}/{part}/conv"),
                       ("batch_norm", f"{prefix}/{part}/bn")]
    for r in range(node.repeats):
      sequence.append((_BLOCK_KINDS[node.block_fn],
                       f"{node.layer_prefix}_repeat_{r + 1}"))
  for level in range(network.min_level, network.max_level + 1):
    sequence += [("conv2d", f"endpoint_{level}/conv"),
                 ("batch_norm", f"endpoint_{level}/bn")]
  return sequence


def map_spinenet(pairer, checkpoint, prefix, backbone):
  """Pairs a Model Garden SpineNet saved under prefix with our backbone.

  The k-th layer of each kind that Model Garden created pairs with the k-th
  of that kind in spinenet_layer_sequence (see the module docstring).
  Surplus layers on either side are listed as unused or missing.
  """
  _map_functional(pairer, checkpoint, prefix,
                  spinenet_layer_sequence(backbone))


def spinenet_mbconv_layer_sequence(backbone):
  """Model Garden's creation order of SpineNet-Mobile's layers, as ours.

  Model Garden's SpineNetMobile
  (`tensorflow/models/official/vision/modeling/backbones/spinenet_mobile.py`)
  creates: the stem conv and batch norm, the two stem blocks
  (InvertedBottleneckBlock), then for every block the resampling of its
  first and its second parent (per level down a 3x3 stride-2 depthwise conv
  + batch norm, then a 1x1 conv + batch norm) and the block, last the
  endpoint convs and batch norms. Ours (modeling/backbones/spinenet_mbconv.py)
  walks the same nodes and edges with MBConvResample and MBConvBlock.

  Args:
    backbone: a modeling.backbones.spinenet_mbconv.SpineNetMBConv.

  Returns:
    list of (kind, our layer path prefix), as spinenet_layer_sequence.

  Raises:
    ImportMismatchError: a configuration Model Garden's SpineNetMobile does
      not compute (weighted fusion, space-to-depth resampling, more than one
      block per node, a block with other than two parents).
  """
  network = backbone.network
  config = backbone.get_config()
  if config["fusion_mode"] != "sum":
    raise ImportMismatchError(
        f"Our backbone fuses with fusion_mode={config['fusion_mode']!r}; "
        "Model Garden's SpineNetMobile sums its parents (its weighted_fusion "
        "argument is never set), so no checkpoint of it holds fusion "
        "weights.")
  if config["downsample_mode"] != "strided_conv":
    raise ImportMismatchError(
        f"Our backbone downsamples with downsample_mode="
        f"{config['downsample_mode']!r}; Model Garden's SpineNetMobile uses "
        "stride-2 depthwise convs (downsample_mode='strided_conv').")
  sequence = [("conv2d", "stem_conv/conv"), ("batch_norm", "stem_conv/bn")]
  for node in network.nodes:
    if not node.is_used:
      continue
    if node.repeats != 1:
      # Model Garden's _block_group applies every repeat to the group's
      # input and keeps the last, so its blocks do not chain as ours do.
      raise ImportMismatchError(
          f"Our block {node.label} ({node.layer_prefix}) repeats "
          f"{node.repeats} MBConv blocks in a chain; Model Garden's "
          "SpineNetMobile applies each repeat to the group's input and keeps "
          "the last one only (spinenet_mobile.py, _block_group), another "
          "function. Only block_repeats = 1 can be imported.")
    if not node.is_stem:
      edges = network.inputs(node.index, scale_permuted.PARENT)
      if len(edges) != 2:
        raise ImportMismatchError(
            f"Our block {node.label} has {len(edges)} parents; Model "
            "Garden's SpineNetMobile resamples exactly two.")
      for j, edge in enumerate(edges, start=1):
        prefix = f"{node.layer_prefix}_resample_{j}"
        for i in range(max(0, node.level - network.nodes[edge.parent].level)):
          sequence += [("depthwise_conv2d", f"{prefix}/downsample_{i}/depthwise"),
                       ("batch_norm", f"{prefix}/downsample_{i}/bn")]
        sequence += [("conv2d", f"{prefix}/project/conv"),
                     ("batch_norm", f"{prefix}/project/bn")]
    sequence.append(("inverted_bottleneck_block",
                     f"{node.layer_prefix}_repeat_1"))
  for level in range(network.min_level, network.max_level + 1):
    sequence += [("conv2d", f"endpoint_{level}/conv"),
                 ("batch_norm", f"endpoint_{level}/bn")]
  return sequence


# Model Garden's SpineNetMobile builds InvertedBottleneckBlock(
# se_gating_activation='hard_sigmoid') and leaves se_inner_activation at its
# default 'relu' (`tensorflow/models/official/vision/modeling/backbones/
# spinenet_mobile.py`, `.../layers/nn_blocks.py`, `.../layers/nn_layers.py`;
# its hard_sigmoid is relu6(x + 3) * 0.16667). modeling/layers/mbconv.py's
# SqueezeExcitation computes the same with these (activation, gating); the
# MBConv default (the block activation, a sigmoid) is another function.
MODEL_GARDEN_SE = ("relu", "hard_sigmoid")
SE_BINDINGS = ("spinenet_mbconv.se_inner_activation = 'relu' and "
               "spinenet_mbconv.se_gating = 'hard_sigmoid'")
SE_DIFFERENCE = (
    "Model Garden's squeeze-excitation applies ReLU after _se_reduce and "
    "gates with hard_sigmoid (relu6(x + 3) * 0.16667); ours (SqueezeExcitation"
    ", modeling/layers/mbconv.py) applies {inner} after se/reduce and gates "
    "with {gating}. Bind " + SE_BINDINGS + " to build Model Garden's "
    "function")


def map_spinenet_mbconv(pairer, checkpoint, prefix, backbone):
  """Pairs a Model Garden SpineNetMobile saved under prefix with ours.

  Every variable pairs by creation order, as map_spinenet. Each block whose
  squeeze-excitation is not Model Garden's (MODEL_GARDEN_SE: ReLU, hard
  sigmoid) is then recorded in `differences` (SE_DIFFERENCE, which names
  the gin bindings that make it so), and the import is refused even though
  every variable has its counterpart. Our default MBConv squeeze-excitation
  (block activation, sigmoid) is such a block.
  """
  sequence = spinenet_mbconv_layer_sequence(backbone)
  _map_functional(pairer, checkpoint, prefix, sequence)
  activation = backbone.get_config()["activation"]
  ours = [p for kind, p in sequence if kind == "inverted_bottleneck_block"]
  theirs = [l for l in functional_layers(checkpoint, prefix)
            if l.kind == "inverted_bottleneck_block"]
  for our_block, layer in zip(ours, theirs):
    if not any(r.startswith("_squeeze_excitation/") for r in layer.variables):
      continue
    # Read from the built layer: it is what the block computes.
    block = backbone.get_layer(our_block)
    if block.se is None:
      continue  # Its SE variables are already listed as unused.
    se = block.se
    if (se.activation, se.gating) == MODEL_GARDEN_SE:
      continue
    inner = se.activation
    if block.se_inner_activation is None:
      inner = f"the block activation ({activation})"
    pairer.mapping.differences.append((
        f"{our_block}/se <- {layer.path}/_squeeze_excitation "
        f"({layer.name})", SE_DIFFERENCE.format(inner=inner,
                                                gating=se.gating)))


def _map_functional(pairer, checkpoint, prefix, sequence):
  """Pairs the k-th layer of each kind saved under prefix with sequence's."""
  expected = {}
  for kind, our_prefix in sequence:
    expected.setdefault(kind, []).append(our_prefix)
  found = {}
  for layer in functional_layers(checkpoint, prefix):
    found.setdefault(layer.kind, []).append(layer)
  for kind in sorted(set(found) | set(expected)):
    theirs, ours = found.get(kind, []), expected.get(kind, [])
    for index, layer in enumerate(theirs):
      if index >= len(ours):
        pairer.unused(layer.variables.values(),
                      f"Model Garden's {kind} number {index + 1} "
                      f"({layer.name}); our backbone has {len(ours)}")
        continue
      if kind in _BLOCK_SUBLAYERS:
        by_sublayer = {}
        for relative, variable in layer.variables.items():
          head, _, leaf = relative.rpartition("/")
          by_sublayer.setdefault(head, {})[leaf] = variable
        names = dict(_BLOCK_SUBLAYERS[kind])
        for attribute, sources in sorted(by_sublayer.items()):
          if attribute not in names:
            pairer.unused(sources.values(),
                          f"{layer.name}.{attribute}: a part of Model "
                          f"Garden's {kind} that our {ours[index]} lacks")
            continue
          pairer.layer(_keras3_leaves(sources),
                       f"{ours[index]}/{names[attribute]}",
                       f"{layer.name}.{attribute}: our {{path}} does not "
                       "exist")
      else:
        pairer.layer(_keras3_leaves(layer.variables), ours[index],
                     f"{layer.name}: our {{path}} does not exist")
    if len(ours) != len(theirs):
      pairer.mapping.counts.append(
          f"{kind}: ours {len(ours)}, the checkpoint's {len(theirs)}")


def _keras3_leaves(sources):
  return {_DEPTHWISE_LEAVES.get(leaf, leaf): v for leaf, v in sources.items()}


# --- RetinaNet head.


def map_retinanet_head(pairer, checkpoint, prefix, head):
  """Pairs Model Garden's RetinaNetHead (saved under prefix) with ours.

  Model Garden (`tensorflow/models/official/vision/modeling/heads/
  dense_prediction_heads.py`): `_cls_convs/i` and `_box_convs/i` shared by
  the levels, `_cls_norms/<level - min_level>/i` and `_box_norms/...` per
  level, `_classifier` and `_box_regressor`; ours
  (modeling/heads/retinanet.py): cls_conv_i, cls_norm_<level>_i,
  cls_predict and the box_ equivalents. Attribute heads (`_att_*`) have no
  counterpart here and are listed as unused.
  """
  name = head.name
  layers = {}
  for subnet in ("cls", "box"):
    for i in range(head.num_convs):
      layers[f"_{subnet}_convs/{i}"] = f"{name}/{subnet}_conv_{i}"
      for index, level in enumerate(head.levels):
        layers[f"_{subnet}_norms/{index}/{i}"] = (
            f"{name}/{subnet}_norm_{level}_{i}")
  layers["_classifier"] = f"{name}/cls_predict"
  layers["_box_regressor"] = f"{name}/box_predict"
  grouped = {}
  for var_path, variable in checkpoint.under(prefix).items():
    layer, _, leaf = var_path[len(prefix) + 1:].rpartition("/")
    grouped.setdefault(layer, {})[leaf] = variable
  for layer, sources in sorted(grouped.items()):
    if layer in layers:
      pairer.layer(sources, layers[layer],
                   f"Model Garden's head.{layer}: our {{path}} does not exist")
    elif layer.startswith("_att_"):
      pairer.unused(sources.values(),
                    "an attribute head of Model Garden's RetinaNetHead; ours "
                    "predicts classes and boxes only")
    else:
      pairer.unused(sources.values(),
                    f"Model Garden's head.{layer} (beyond our head's "
                    f"{head.num_convs} convs x levels {head.levels})")


# --- Whole models.


def _find_layer(model, cls):
  for layer in model.layers:
    if isinstance(layer, cls):
      return layer
  return None


def map_retinanet(checkpoint, model):
  """The Mapping of a Model Garden SpineNet(-Mobile) RetinaNet onto ours.

  Args:
    checkpoint: a ModelGardenCheckpoint.
    model: our RetinaNet (modeling.models.retinanet.build_retinanet) with a
      SpineNet or SpineNet-MBConv backbone and the identity decoder.

  Returns:
    Mapping (call .check to raise on problems).

  Raises:
    ImportMismatchError: a backbone or decoder that has no Model Garden
      counterpart here, or a checkpoint without a model.
  """
  modules = checkpointing.model_modules(model)
  backbone = modules["backbone"]
  decoder = modules.get("decoder")
  if decoder is not None and decoder.variables:
    raise ImportMismatchError(
        f"The config builds a decoder with variables ({decoder.name}); Model "
        "Garden's SpineNet RetinaNets use the identity decoder.")
  head = _find_layer(model, RetinaNetHead)
  model_prefix, parts = checkpoint.find_model()
  ours = our_variables(model)
  pairer = _Pairer(ours)
  notes = _map_backbone(pairer, checkpoint, parts["backbone"], backbone,
                        "RetinaNet")
  if parts["decoder"] is not None:
    pairer.unused(checkpoint.under(parts["decoder"]).values(),
                  "Model Garden's decoder; ours is the identity")
  if parts["head"] is None:
    raise ImportMismatchError(
        f"Checkpoint {checkpoint.path} has a backbone but no head "
        f"({model_prefix}/_head); it cannot initialise a whole RetinaNet.")
  map_retinanet_head(pairer, checkpoint, parts["head"], head)
  used = set()
  for part in parts.values():
    if part is not None:
      used.update(checkpoint.under(part))
  model_vars = checkpoint.under(model_prefix) if model_prefix else {
      p: v for p, v in checkpoint.variables.items()
      if p.split("/")[0] in {x for x in parts.values() if x}}
  return _finish_mapping(pairer, checkpoint, model_vars, used, ours, notes,
                         "backbone, decoder and head")


def _map_backbone(pairer, checkpoint, prefix, backbone, what):
  """Dispatches on our backbone's class; returns the notes to log."""
  if isinstance(backbone, SpineNet):
    map_spinenet(pairer, checkpoint, prefix, backbone)
    return [
        "Model Garden's SpineNet lists a 16th block (level 2, parents 2 "
        "and 13) that feeds no endpoint at levels 3..7: the same function "
        "at inference; under stochastic depth its rates are 15/16 of ours "
        "(modeling/backbones/spinenet.py)."]
  if isinstance(backbone, SpineNetMBConv):
    map_spinenet_mbconv(pairer, checkpoint, prefix, backbone)
    return []
  raise ImportMismatchError(
      f"The config builds a {type(backbone).__name__} backbone; importing "
      f"Model Garden {what} checkpoints is implemented for SpineNet "
      "(modeling/backbones/spinenet.py) and SpineNet-MBConv "
      "(modeling/backbones/spinenet_mbconv.py, Model Garden's "
      "SpineNet-Mobile).")


def map_classifier(checkpoint, model):
  """The Mapping of a Model Garden SpineNet classifier onto ours.

  Model Garden's ClassificationModel
  (`tensorflow/models/official/vision/modeling/classification_model.py`)
  is a Keras 2 functional model: backbone, then the endpoint of the largest
  key alone (`endpoints[max(endpoints.keys())]`, level max_level), global
  average pooling, dropout and one dense layer (`dense`), optionally a batch
  norm before the pooling (add_head_batch_norm). Ours
  (modeling/heads/classification.py) averages the pooled features of the
  levels in `head_levels`, all levels by default (SpineNet paper Sec. 4.2):
  the same function only with ClassificationTask.head_levels = [max_level].
  Otherwise the head is recorded in `differences` and the import refused.

  Args:
    checkpoint: a ModelGardenCheckpoint.
    model: our classifier (modeling.models.classifier.build_classifier).

  Returns:
    Mapping (call .check to raise on problems).

  Raises:
    ImportMismatchError: a backbone without Model Garden counterpart here,
      or a checkpoint without a model.
  """
  backbone = checkpointing.model_modules(model)["backbone"]
  head = _find_layer(model, ClassificationHead)
  model_prefix, backbone_prefix = _classifier_parts(checkpoint)
  ours = our_variables(model)
  pairer = _Pairer(ours)
  notes = _map_backbone(pairer, checkpoint, backbone_prefix, backbone,
                        "classifier")
  top = str(backbone.max_level)
  backbone_vars = checkpoint.under(backbone_prefix)
  rest = {p: v for p, v in checkpoint.under(model_prefix).items()
          if p not in backbone_vars} if model_prefix else {}
  dense = {}
  for var_path, variable in sorted(rest.items()):
    name = variable.full_name.split("/")
    if len(name) == 2 and _KERAS_NAME.match(name[0]).group("base") == "dense":
      dense.setdefault(name[0], {})[name[1]] = variable
    elif len(name) == 2 and _KINDS.get(_KERAS_NAME.match(name[0]).group(
        "base")) == "batch_norm":
      pairer.unused([variable], "Model Garden's head batch norm "
                    "(add_head_batch_norm) before the pooling; our "
                    "classification head has none")
    else:
      pairer.unused([variable], "a part of Model Garden's classifier outside "
                    "its backbone and dense layer")
  for index, (name, sources) in enumerate(sorted(dense.items())):
    if index:
      pairer.unused(sources.values(), f"Model Garden's {name}: a second "
                    "dense layer; our head has one")
      continue
    pairer.layer(sources, f"{head.name}/classifier",
                 f"Model Garden's {name}: our {{path}} does not exist")
  levels = head.levels or [str(l) for l in range(backbone.min_level,
                                                 backbone.max_level + 1)]
  if levels != [top]:
    pairer.mapping.differences.append((
        f"{head.name} <- Model Garden's ClassificationModel head "
        f"({', '.join(sorted(dense)) or 'dense'})",
        f"Model Garden pools the level-{top} endpoint alone "
        "(endpoints[max(endpoints.keys())]); ours averages the pooled "
        f"features of levels {', '.join(levels)}. Bind "
        f"ClassificationTask.head_levels = [{top}] to build Model Garden's "
        "function"))
  mapping = pairer.finish(sorted(ours), "no variable of the checkpoint "
                          "corresponds to it")
  mapping.ignored = len(checkpoint.variables) - len(
      checkpoint.under(model_prefix) if model_prefix else checkpoint.variables)
  mapping.notes.extend(notes)
  return mapping


def _classifier_parts(checkpoint):
  """(model prefix, backbone prefix) of a Model Garden classifier.

  ClassificationModel is a functional model: its backbone is its first
  weighted layer, saved as `model/layer_with_weights-0` (the trainer's
  checkpoint; a nested functional model, so its own variables sit under
  layer_with_weights-N again), or `backbone` at the root (checkpoint_items).
  """
  for model in ("model", ""):
    for name in ("_backbone", "backbone", "layer_with_weights-0"):
      candidate = f"{model}/{name}".lstrip("/")
      inside = checkpoint.under(candidate)
      if inside and all(_FUNCTIONAL_LAYER.match(
          p[len(candidate) + 1:].split("/")[0]) for p in inside):
        return model, candidate
  raise ImportMismatchError(
      f"Checkpoint {checkpoint.path} holds no Model Garden classifier: no "
      "functional backbone under model/layer_with_weights-0, model/_backbone "
      "or backbone (its top-level objects: "
      f"{sorted({p.split('/')[0] for p in checkpoint.variables})}).")


# --- Mask R-CNN.


# Model Garden's MaskRCNNModel keeps its parts as attributes without an
# underscore, and also in `_config_dict`; the checkpoint's object graph
# saves each variable under the first path it meets, which for the
# detection head (a list of one, more for Cascade R-CNN) is
# `model/_config_dict/detection_head` in Model Garden 2.20 and
# `model/detection_head/0` in a graph that meets the attribute first.
_MASKRCNN_PARTS = ("backbone", "decoder", "rpn_head", "detection_head",
                   "mask_head")


def maskrcnn_parts(checkpoint):
  """Where each part of a Model Garden Mask R-CNN is saved.

  Args:
    checkpoint: a ModelGardenCheckpoint.

  Returns:
    (model prefix, {part: [object path, ...]}) for the parts of
    _MASKRCNN_PARTS; a part absent from the checkpoint maps to []; the
    detection heads are listed in cascade order (one for Mask R-CNN).

  Raises:
    ImportMismatchError: no backbone in the checkpoint.
  """
  for model in ("model", ""):
    parts = {}
    for part in _MASKRCNN_PARTS:
      found = []
      for name in (part, f"_{part}", f"_config_dict/{part}"):
        candidate = f"{model}/{name}".lstrip("/")
        inside = checkpoint.under(candidate)
        if not inside:
          continue
        if part == "detection_head":
          heads = sorted({p[len(candidate) + 1:].split("/")[0]
                          for p in inside})
          if all(h.isdigit() for h in heads):  # A list of heads.
            found += [f"{candidate}/{h}" for h in sorted(heads, key=int)]
            continue
        found.append(candidate)
      parts[part] = found
    if parts["backbone"]:
      return model, parts
  roots = sorted({p.split("/")[0] for p in checkpoint.variables})
  raise ImportMismatchError(
      f"Checkpoint {checkpoint.path} holds no Model Garden Mask R-CNN: no "
      f"variables under model/backbone (its top-level objects: {roots}).")


def _map_layers(pairer, checkpoint, prefix, layers, what):
  """Pairs the sublayers saved under prefix by attribute path.

  Args:
    pairer: the _Pairer.
    checkpoint: a ModelGardenCheckpoint.
    prefix: the Model Garden layer's object path.
    layers: {attribute path inside it ("_convs/0"): our layer prefix}.
    what: names the layer in the reasons ("Model Garden's rpn_head").
  """
  grouped = {}
  for var_path, variable in checkpoint.under(prefix).items():
    layer, _, leaf = var_path[len(prefix) + 1:].rpartition("/")
    grouped.setdefault(layer, {})[leaf] = variable
  for layer, sources in sorted(grouped.items()):
    if layer in layers:
      pairer.layer(sources, layers[layer],
                   f"{what}.{layer}: our {{path}} does not exist")
    else:
      pairer.unused(sources.values(), f"{what}.{layer}: a layer ours lacks")


def map_rpn_head(pairer, checkpoint, prefix, head):
  """Pairs Model Garden's RPNHead (saved under prefix) with ours.

  Model Garden (`tensorflow/models/official/vision/modeling/heads/
  dense_prediction_heads.py`, RPNHead): `_convs/i` shared by the levels,
  `_norms/<level - min_level>/i`, `_classifier` (objectness) and
  `_box_regressor`; ours (modeling/heads/rpn.py): conv_i, norm_<level>_i,
  score_predict, box_predict.
  """
  name = head.name
  layers = {"_classifier": f"{name}/score_predict",
            "_box_regressor": f"{name}/box_predict"}
  for i in range(head.num_convs):
    layers[f"_convs/{i}"] = f"{name}/conv_{i}"
    for index, level in enumerate(head.levels):
      layers[f"_norms/{index}/{i}"] = f"{name}/norm_{level}_{i}"
  _map_layers(pairer, checkpoint, prefix, layers, "Model Garden's rpn_head")


def map_detection_head(pairer, checkpoint, prefix, head):
  """Pairs Model Garden's DetectionHead (the Fast R-CNN head) with ours.

  Model Garden (`tensorflow/models/official/vision/modeling/heads/
  instance_heads.py`, DetectionHead): `_convs/i`, `_conv_norms/i`,
  `_fcs/i`, `_fc_norms/i`, `_classifier`, `_box_regressor`; ours
  (modeling/heads/fast_rcnn.py, FastRCNNHead): conv_i, conv_norm_i, fc_i,
  fc_norm_i, class_predict, box_predict. Both flatten each ROI's
  [h, w, C] features row, column, channel before the first FC, so the FC
  kernels need no permutation.
  """
  name = head.name
  layers = {"_classifier": f"{name}/class_predict",
            "_box_regressor": f"{name}/box_predict"}
  for i in range(head.num_convs):
    layers[f"_convs/{i}"] = f"{name}/conv_{i}"
    layers[f"_conv_norms/{i}"] = f"{name}/conv_norm_{i}"
  for i in range(head.num_fcs):
    layers[f"_fcs/{i}"] = f"{name}/fc_{i}"
    layers[f"_fc_norms/{i}"] = f"{name}/fc_norm_{i}"
  _map_layers(pairer, checkpoint, prefix, layers,
              "Model Garden's detection_head")


def map_mask_head(pairer, checkpoint, prefix, head):
  """Pairs Model Garden's MaskHead (saved under prefix) with ours.

  Model Garden (`tensorflow/models/official/vision/modeling/heads/
  instance_heads.py`, MaskHead): `_convs/i`, `_conv_norms/i`, `_deconv`
  (the transposed conv), `_deconv_bn`, `_mask_regressor`; ours
  (modeling/heads/mask_head.py): conv_i, conv_norm_i, upsample,
  upsample_norm, mask_predict. Keras 2 and 3 both keep a transposed conv's
  kernel as [k, k, out, in].
  """
  name = head.name
  layers = {"_deconv": f"{name}/upsample", "_deconv_bn": f"{name}/upsample_norm",
            "_mask_regressor": f"{name}/mask_predict"}
  for i in range(head.num_convs):
    layers[f"_convs/{i}"] = f"{name}/conv_{i}"
    layers[f"_conv_norms/{i}"] = f"{name}/conv_norm_{i}"
  _map_layers(pairer, checkpoint, prefix, layers, "Model Garden's mask_head")


# Model Garden builds the RPN's two 1x1 prediction layers and the mask
# head's 1x1 mask layer as SeparableConv2D when its heads are separable
# (dense_prediction_heads.py RPNHead.build, instance_heads.py
# MaskHead.build); ours keep plain 1x1 convs there (modeling/heads/rpn.py,
# mask_head.py: a 1x1 depthwise conv only rescales channels, but it is one
# more scale per channel, another function for the checkpoint's values).
SEPARABLE_PREDICTOR_DIFFERENCE = (
    "Model Garden predicts with a separable 1x1 conv (a 1x1 depthwise "
    "scale per input channel, then the pointwise conv) when the head is "
    "separable; ours with a plain 1x1 conv")


# What Model Garden's ROI Align computes (`tensorflow/models/official/
# vision/ops/spatial_transform_ops.py`, multilevel_crop_and_resize, with
# the MultilevelROIAligner's sample_offset 0.5 of maskrcnn_spinenet_coco,
# for the 7x7 box features and the 14x14 mask features alike): one bilinear
# sample per bin, at the bin's centre, with index = box coordinate / stride
# (no half-pixel shift) and boxes of any size. modeling/ops/roi_align.py
# computes exactly that with aligned=False and sampling_ratio=1; our default
# (aligned, 2 x 2 samples per bin) is another function. Measured on the
# committed scaled-down SpineNet-49 Mask R-CNN (tests/fixtures/model_garden/
# spinenet49_maskrcnn_tiny, 128 px): with our default, class logits 0.090,
# box deltas 0.026 and mask logits 0.11 apart and detection boxes 56 px;
# with ROI_BINDINGS every raw output within 1e-6. SpineNet-49 at 640 px,
# 91 classes, with ROI_BINDINGS: class logits 6.2e-6, box deltas 1.8e-6,
# mask logits 1.9e-6, the same 100 detections and classes, boxes within
# 1.2e-4 px, masks within 4.8e-7.
ROI_ALIGN_BINDINGS = ("MaskRCNNTask.roi_aligned = False and "
                      "MaskRCNNTask.roi_sampling_ratio = 1")
ROI_ALIGN_DIFFERENCE = (
    "Model Garden's ROI Align (multilevel_crop_and_resize, sample_offset "
    "0.5) takes one bilinear sample at each bin's centre, at index = "
    "coordinate / stride; ours (modeling/ops/roi_align.py) as configured "
    "averages roi_sampling_ratio^2 = {samples} samples per bin{aligned}, so "
    "the Fast R-CNN and mask heads would see other features. Bind "
    + ROI_ALIGN_BINDINGS + " to build Model Garden's function")


def map_maskrcnn(checkpoint, model):
  """The Mapping of a Model Garden SpineNet Mask R-CNN onto ours.

  Model Garden's MaskRCNNModel (module official.vision.modeling.
  maskrcnn_model of tf-models-official, experiment
  `maskrcnn_spinenet_coco`): the
  SpineNet backbone (map_spinenet), the identity decoder (no variables),
  RPNHead, DetectionHead and MaskHead; ours (modeling/models/maskrcnn.py):
  the backbone, the identity decoder, rpn_head, fast_rcnn_head (a
  FastRCNNHead) and mask_head. Without a mask head (our Faster R-CNN), a
  checkpoint's mask head is listed as unused. A second detection head
  (Cascade R-CNN) and a decoder with variables (FPN) are listed as unused:
  ours compute neither. Unless our ROI Align is Model Garden's
  (roi_aligned=False and roi_sampling_ratio=1, ROI_ALIGN_BINDINGS), it is
  recorded in `differences` (ROI_ALIGN_DIFFERENCE, naming those bindings)
  and the import is refused even when every variable pairs.

  Args:
    checkpoint: a ModelGardenCheckpoint.
    model: our MaskRCNNModel (official/tasks/maskrcnn.py builds it).

  Returns:
    Mapping (call .check to raise on problems).

  Raises:
    ImportMismatchError: our box head is not a FastRCNNHead (Auto-FPN's
      Auto-head has no Model Garden counterpart), our decoder has
      variables, our backbone has no Model Garden counterpart here, or the
      checkpoint holds no Mask R-CNN backbone.
  """
  modules = checkpointing.model_modules(model)
  backbone = modules["backbone"]
  decoder = modules.get("decoder")
  if decoder is not None and decoder.variables:
    raise ImportMismatchError(
        f"The config builds a decoder with variables ({decoder.name}); Model "
        "Garden's SpineNet Mask R-CNN (maskrcnn_spinenet_coco) uses the "
        "identity decoder.")
  if not isinstance(model.fast_rcnn_head, FastRCNNHead):
    raise ImportMismatchError(
        f"The config builds a {type(model.fast_rcnn_head).__name__} box head;"
        " Model Garden's Mask R-CNN has the Fast R-CNN head (DetectionHead),"
        " which is our FastRCNNHead (MaskRCNNTask without box_head).")
  model_prefix, parts = maskrcnn_parts(checkpoint)
  ours = our_variables(model)
  pairer = _Pairer(ours)
  notes = _map_backbone(pairer, checkpoint, parts["backbone"][0], backbone,
                        "Mask R-CNN")
  for extra in parts["backbone"][1:]:
    pairer.unused(checkpoint.under(extra).values(),
                  f"a second copy of the backbone at {extra}")
  for prefix in parts["decoder"]:
    pairer.unused(checkpoint.under(prefix).values(),
                  "Model Garden's decoder; ours is the identity")
  heads = ((model.rpn_head, "rpn_head", map_rpn_head),
           (model.fast_rcnn_head, "detection_head", map_detection_head),
           (model.mask_head, "mask_head", map_mask_head))
  for head, part, map_head in heads:
    found = parts[part]
    if head is not None and found:
      map_head(pairer, checkpoint, found[0], head)
    elif found:
      pairer.unused(checkpoint.under(found[0]).values(),
                    f"Model Garden's {part}; our {model.name} has none "
                    "(a Faster R-CNN without mask branch)")
    for prefix in found[1:]:
      pairer.unused(checkpoint.under(prefix).values(),
                    f"Model Garden's {part} number "
                    f"{found.index(prefix) + 1} (Cascade R-CNN); ours "
                    "has one Fast R-CNN head")
    if head is not None and getattr(head, "use_separable_conv", False) and (
        part != "detection_head"):
      pairer.mapping.differences.append((
          f"{head.name} <- {found[0] if found else part}",
          SEPARABLE_PREDICTOR_DIFFERENCE))
  config = model.get_config()
  if config["roi_aligned"] or config["roi_sampling_ratio"] != 1:
    pairer.mapping.differences.append((
        f"{model.name} ROI Align (roi_sampling_ratio="
        f"{config['roi_sampling_ratio']}, roi_aligned={config['roi_aligned']})"
        " <- Model Garden's roi_aligner and mask_roi_aligner",
        ROI_ALIGN_DIFFERENCE.format(
            samples=config["roi_sampling_ratio"] ** 2,
            aligned=(", shifted by half a cell (roi_aligned=True)"
                     if config["roi_aligned"] else ""))))
  used = set()
  for found in parts.values():
    for prefix in found:
      used.update(checkpoint.under(prefix))
  model_vars = (checkpoint.under(model_prefix) if model_prefix else {
      p: v for p, v in checkpoint.variables.items()
      if p.split("/")[0] in _MASKRCNN_PARTS})
  return _finish_mapping(pairer, checkpoint, model_vars, used, ours, notes,
                         "backbone, decoder, RPN, detection and mask heads")


def _finish_mapping(pairer, checkpoint, model_vars, used, ours, notes,
                    parts):
  """The Mapping once every part is paired: the model's checkpoint variables
  no part used are unused (outside `parts`), ours left unpaired are missing,
  and the checkpoint's other variables (optimizer slots, step) are ignored."""
  for var_path, variable in sorted(model_vars.items()):
    if var_path not in used:
      pairer.unused([variable], "a part of Model Garden's model outside its "
                    f"{parts}")
  mapping = pairer.finish(sorted(ours), "no variable of the checkpoint "
                          "corresponds to it")
  mapping.ignored = len(checkpoint.variables) - len(model_vars)
  mapping.notes.extend(notes)
  return mapping


def assign(mapping, checkpoint, progress=True):
  """Copies every paired checkpoint value into our variable.

  Args:
    mapping: a Mapping that passed check().
    checkpoint: the ModelGardenCheckpoint it was made from.
    progress: show a progress bar (tqdm, on stderr) for large checkpoints.

  Returns:
    Number of scalars copied.
  """
  pairs = mapping.pairs
  iterator = pairs
  if progress and len(pairs) > 200:
    iterator = tqdm.tqdm(pairs, desc="Importing variables", unit="var")
  scalars = 0
  for variable, source in iterator:
    value = checkpoint.value(source)
    variable.assign(np.asarray(value).astype(keras.backend.standardize_dtype(
        variable.dtype)))
    scalars += int(np.prod(source.shape))
  return scalars
