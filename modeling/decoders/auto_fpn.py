"""Auto-fusion, the searched neck of Auto-FPN (Xu et al., ICCV 2019, Sec. 3.2).

The neck fuses the backbone levels min_level..T, T = min(max_level, the
backbone's highest level) (ResNet C2..C5 in the paper: P_1^0..P_4^0), in L
layers (Sec. 4.1: L = 2). Layer l reads the n = T - min_level + 1 maps of
layer l - 1 (the backbone's for l = 1; Sec. 3.2: "{P_1^{l-1}, ...} as input
features of the l-th layer") and makes n new ones at the same levels. Every
(input level j, output level i) pair of a layer is a link (Fig. 3a): a 1x1
conv to num_filters channels, an operation of NECK_OPS
(modeling/layers/auto_fpn_ops.py), then max pooling (to a coarser level) or
bilinear resizing (to a finer level) to level i (Sec. 4.1); output node i is
the sum of its links. n^2 links per layer: with 4 levels, 16 per layer, 32 in
all, and the space has 8^32 = 7.9e28 architectures (Sec. 4.1).

Two networks share this code:
- the super-network (search=True): every link computes the mixture
  sum_o softmax(alpha_link)_o * o(x) (Sec. 3.2, 3.4), alpha being
  [num_links, 8] weights held apart from the network weights
  (`architecture_weights` / `network_weights`);
- the discrete network (a genotype): each link computes its one operation,
  and `none` links do not exist.

Genotype: a JSON-serialisable nested list genotype[l][i][j] = the operation
name of the link from level min_level + j to level min_level + i in layer
l + 1 (num_layers lists of n lists of n names). Links are numbered in that
order (layer, then output level, then input level), which is also the row
order of alpha.

Choices where the paper is silent, written down here as the project rule:
- Each link has a 1x1 conv of its own (Fig. 3a: "Each link is composed of a
  conv1x1 followed by a group of parallel operators"); in the discrete
  network a `none` link drops its 1x1 conv too.
- The operation runs at the input level's resolution, before the
  resampling; resampling by 2^d uses a 2^d x 2^d max pool of stride 2^d, or
  tf.image.resize (bilinear, half-pixel centres) to the size of level i.
- A node of layer l < L whose links into layer l + 1 are all `none` is read
  by nothing: the discrete network does not build it, nor its links (the
  parameter count leaves them out too). The resource cost C(alpha) counts
  every link alone (Sec. 3.5), so it does not see this pruning.
- Levels above the backbone's (a detector reading P6 from a C2..C5 backbone)
  are a stride-2 max pool of the level below, as Faster R-CNN's FPN makes P6
  from P5 (Lin et al., "Feature Pyramid Networks", 2017, Sec. 4.1). They are
  outside the searched space and have no weights.
- Batch norm: the super-network has none (Sec. 4.1; Table 7). The discrete
  network, trained from scratch on the decoded architecture (Sec. 4.2),
  puts batch norm after every conv by default (use_batch_norm=None means
  False for search=True and True for a genotype): the paper says batch norm
  is left out "during searching", which implies it is used in the final
  training, and every other neck and head of this repository normalises
  its convs. use_batch_norm=False gives the network whose weights are those
  of the super-network, one for one.
- No activation after a node's sum: each conv operation starts with the
  activation (DARTS' ReLU-conv-BN order), so the fused maps are linear sums,
  as an FPN's outputs are.
"""

import keras
import numpy as np
import tensorflow as tf

from modeling.decoders.identity import check_levels, parse_input_specs
from modeling.decoders.registry import register_decoder
from modeling.layers import activations
from modeling.layers import auto_fpn_ops
from modeling.layers.auto_fpn_ops import NECK_OPS
from modeling.layers.conv_bn import batch_norm, kernel_initializer
from modeling.layers.resampling import level_size


def neck_space_size(num_levels, num_layers=2, ops=NECK_OPS):
  """Number of architectures of the Auto-fusion space: |ops|^(L * n^2).

  Sec. 4.1: 4 levels, 2 layers, 8 operations -> 8^32 = 7.9e28.
  """
  return len(ops) ** (int(num_layers) * int(num_levels) ** 2)


def link_names(levels, num_layers):
  """"l{layer}_{j}to{i}" for every link, in genotype/alpha order."""
  return [f"l{l + 1}_{j}to{i}" for l in range(num_layers) for i in levels
          for j in levels]


def check_neck_genotype(genotype, num_levels, num_layers):
  """Validates a neck genotype and returns it as nested lists of str.

  Args:
    genotype: genotype[l][i][j], num_layers x num_levels x num_levels
      operation names of NECK_OPS (lists or tuples).
    num_levels, num_layers: the neck's size.
  Raises:
    ValueError: naming the layer and output node that are malformed, hold
      an unknown operation, or whose links are all `none` (a node with no
      input; decode_neck never makes one).
  """
  where = "AutoFusionNeck genotype"
  if (not isinstance(genotype, (list, tuple)) or
      len(genotype) != num_layers):
    raise ValueError(f"{where}: expected a list of {num_layers} layers, got "
                     f"{genotype!r}.")
  checked = []
  for l, layer in enumerate(genotype):
    if not isinstance(layer, (list, tuple)) or len(layer) != num_levels:
      raise ValueError(f"{where}: layer {l + 1} must list {num_levels} output "
                       f"nodes, got {layer!r}.")
    rows = []
    for i, node in enumerate(layer):
      if (not isinstance(node, (list, tuple)) or len(node) != num_levels or
          not all(isinstance(op, str) for op in node)):
        raise ValueError(f"{where}: layer {l + 1}, output node {i} must list "
                         f"{num_levels} operation names (one per input "
                         f"level), got {node!r}.")
      unknown = [op for op in node if op not in NECK_OPS]
      if unknown:
        raise ValueError(f"{where}: layer {l + 1}, output node {i}: unknown "
                         f"operations {unknown}; expected names of "
                         f"{NECK_OPS}.")
      if all(op == "none" for op in node):
        raise ValueError(f"{where}: layer {l + 1}, output node {i} has only "
                         "'none' links, so it has no input.")
      rows.append(list(node))
    checked.append(rows)
  return checked


def live_links(genotype):
  """Which links the discrete network builds: not `none`, and read.

  Returns:
    nested lists of bool like the genotype.
  """
  num_layers, n = len(genotype), len(genotype[0])
  live_nodes = [True] * n  # The last layer's nodes are the outputs.
  built = [None] * num_layers
  for l in range(num_layers - 1, -1, -1):
    built[l] = [[live_nodes[i] and genotype[l][i][j] != "none"
                 for j in range(n)] for i in range(n)]
    live_nodes = [any(built[l][i][j] for i in range(n)) for j in range(n)]
  return built


def decode_neck(mixing, num_levels, num_layers=2):
  """The genotype of a super-network's softmax weights (Sec. 3.2).

  Arg-max per link; an output node whose links all decode to `none` keeps
  its best other operation (auto_fpn_ops.decode_edges).

  Args:
    mixing: [num_layers * num_levels^2, len(NECK_OPS)] softmax weights, rows
      in genotype order.
  Returns:
    genotype[l][i][j] (nested lists of operation names).
  """
  n = int(num_levels)
  nodes = [[l * n * n + i * n + j for j in range(n)]
           for l in range(num_layers) for i in range(n)]
  flat = auto_fpn_ops.decode_edges(mixing, NECK_OPS, nodes, "decode_neck")
  return [[flat[(l * n + i) * n:(l * n + i + 1) * n] for i in range(n)]
          for l in range(num_layers)]


def _fused_levels(specs, min_level, max_level, where):
  top = max(specs)
  fused_max = max(min(max_level, top), min_level)
  levels = list(range(min_level, fused_max + 1))
  check_levels(where, levels, specs, min_level, max_level)
  return levels


def _level_sizes(specs, levels, max_level, image_size):
  """dict level -> (height, width) of every output level, ints or None."""
  sizes = {}
  for level in range(levels[0], max_level + 1):
    if image_size is not None:
      sizes[level] = (level_size(image_size[0], level),
                      level_size(image_size[1], level))
    elif level in specs:
      sizes[level] = tuple(specs[level][1:3])
    else:
      height, width = sizes[level - 1]
      sizes[level] = (None if height is None else -(-height // 2),
                      None if width is None else -(-width // 2))
  return sizes


def _link_counts(op, in_channels, filters, source_size, target_size,
                 use_batch_norm):
  """Parameters, FLOPs, MAC of one link (1x1 conv, op, resample); 0 for none."""
  if op == "none":
    return dict(params=0, flops=0, mac=0)
  (h, w), (th, tw) = source_size, target_size
  project = auto_fpn_ops.conv_counts(in_channels, filters, 1, h, w,
                                     use_batch_norm)
  operation = auto_fpn_ops.op_counts(op, filters, h, w, use_batch_norm)
  resample = 0 if (h, w) == (th, tw) else (h * w + th * tw) * filters
  return auto_fpn_ops.add_counts(project, operation,
                                 dict(params=0, flops=0, mac=resample))


def neck_parameter_count(genotype, input_specs, min_level=2, max_level=5,
                         num_filters=256, use_batch_norm=True):
  """Weights of the discrete neck of `genotype`, counted analytically.

  Equals AutoFusionNeck(input_specs, min_level, max_level, genotype,
  num_filters=..., use_batch_norm=...).count_params(): the 1x1 conv and the
  operation of every built link (live_links), batch norm moving statistics
  included.

  Args:
    genotype, input_specs, min_level, max_level, num_filters,
      use_batch_norm: as AutoFusionNeck.
  Returns:
    int.
  """
  specs = parse_input_specs(input_specs, "neck_parameter_count")
  levels = _fused_levels(specs, min_level, max_level, "neck_parameter_count")
  genotype = check_neck_genotype(genotype, len(levels), len(genotype))
  built = live_links(genotype)
  total = 0
  for l, layer in enumerate(genotype):
    for i, node in enumerate(layer):
      for j, op in enumerate(node):
        if built[l][i][j]:
          in_channels = specs[levels[j]][-1] if l == 0 else num_filters
          total += _link_counts(op, in_channels, num_filters, (1, 1), (1, 1),
                                use_batch_norm)["params"]
  return total


@keras.saving.register_keras_serializable(package="spinenet")
class FusionLink(keras.layers.Layer):
  """One link of an Auto-fusion layer: 1x1 conv, operation(s), resampling.

  Call: (x [batch, H_j, W_j, C_in], target_size (H_i, W_i) ints or an int32
  [2] tensor, mixing [len(ops)] softmax weights for a mixed link, else None)
  -> [batch, H_i, W_i, filters].

  Args:
    ops: the link's operations: NECK_OPS for the super-network (a mixed op),
      one name for the discrete network (not "none").
    source_level, target_level: the levels j and i.
    filters: output width.
    activation, use_batch_norm, use_sync_bn, norm_momentum, norm_epsilon: as
      auto_fpn_ops.CandidateOp; batch norm also follows the 1x1 conv.
  """

  def __init__(self, ops, source_level, target_level, filters,
               activation="relu", use_batch_norm=False, use_sync_bn=False,
               norm_momentum=0.99, norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    self.ops = auto_fpn_ops.check_op_set(ops, self.name)
    if self.ops == ("none",):
      raise ValueError(f"{self.name}: a 'none' link is not built.")
    self.source_level = int(source_level)
    self.target_level = int(target_level)
    self.filters = int(filters)
    self.activation = activations.check_activation(activation)
    self.use_batch_norm = bool(use_batch_norm)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.project = keras.layers.Conv2D(
        self.filters, 1, use_bias=not self.use_batch_norm,
        kernel_initializer=kernel_initializer(), name="project")
    self.project_norm = (batch_norm(norm_momentum, norm_epsilon, use_sync_bn,
                                    name="project_norm")
                         if self.use_batch_norm else None)
    self.operation = auto_fpn_ops.edge_layer(
        self.ops, self.filters, self.activation, self.use_batch_norm,
        use_sync_bn, norm_momentum, norm_epsilon, name="operation")

  @property
  def mixed(self):
    return len(self.ops) > 1

  def build(self, input_shape):
    self.project.build(input_shape)
    shape = tuple(input_shape[:-1]) + (self.filters,)
    if self.project_norm is not None:
      self.project_norm.build(shape)
    self.operation.build(shape)

  def call(self, inputs, target_size, mixing=None, training=None):
    x = self.project(inputs)
    if self.project_norm is not None:
      x = self.project_norm(x, training=training)
    if self.mixed:
      x = self.operation(x, mixing=mixing, training=training)
    else:
      x = self.operation(x, training=training)
    steps = self.target_level - self.source_level
    if steps > 0:
      factor = 2 ** steps
      x = tf.nn.max_pool2d(x, factor, factor, "SAME")
    elif steps < 0:
      x = tf.cast(tf.image.resize(x, target_size, method="bilinear"), x.dtype)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(ops=list(self.ops), source_level=self.source_level,
                  target_level=self.target_level, filters=self.filters,
                  activation=self.activation,
                  use_batch_norm=self.use_batch_norm,
                  use_sync_bn=self.use_sync_bn,
                  norm_momentum=self.norm_momentum,
                  norm_epsilon=self.norm_epsilon)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class AutoFusionNeck(keras.Model):
  """The Auto-fusion neck: super-network (search=True) or a decoded genotype.

  Call: the backbone's output dict str(level) -> [batch, H / 2^level,
  W / 2^level, C_level] (all of its levels) -> dict str(level) -> [batch,
  H / 2^level, W / 2^level, num_filters] for levels min_level..max_level.

  Args:
    input_specs: dict str(level) -> (batch, height, width, channels) of the
      backbone outputs; batch (and height, width) may be None.
    min_level, max_level: output levels. Levels min_level..T, T = min(
      max_level, the backbone's highest level), are fused; the backbone
      must provide them. Levels above T are max pooled from the level below.
    genotype: the decoded architecture (module docstring), or None with
      search=True.
    search: build the super-network (architecture weights, every operation
      on every link).
    num_filters: width of every link and output (Sec. 4.1: 256).
    num_layers: fusion layers L (Sec. 4.1: 2).
    activation: "relu", "swish" or "hard_swish", first in each conv
      operation.
    use_batch_norm: batch norm after every conv; None: not for the search,
      yes for a genotype (module docstring).
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  Raises:
    ValueError: naming the argument: both or neither of genotype and search,
      a malformed genotype (check_neck_genotype), levels the backbone cannot
      feed, num_layers < 1 or num_filters < 1.
  """

  def __init__(self, input_specs, min_level=2, max_level=5, genotype=None,
               search=False, num_filters=256, num_layers=2, activation="relu",
               use_batch_norm=None, use_sync_bn=False, norm_momentum=0.99,
               norm_epsilon=1e-3, name="auto_fpn"):
    super().__init__(name=name)
    specs = parse_input_specs(input_specs, "AutoFusionNeck")
    for arg, value in (("num_filters", num_filters),
                       ("num_layers", num_layers)):
      if int(value) != value or value < 1:
        raise ValueError(f"AutoFusionNeck: {arg} must be an integer >= 1, "
                         f"got {value!r}.")
    if bool(search) == (genotype is not None):
      raise ValueError(
          "AutoFusionNeck: give a genotype (the decoded neck) or "
          f"search=True (the super-network), not both nor neither; got "
          f"search={search!r}, genotype={genotype!r}.")
    self.levels = _fused_levels(specs, min_level, max_level, "AutoFusionNeck")
    self.search = bool(search)
    self.num_layers = int(num_layers)
    self.num_filters = int(num_filters)
    self.min_level, self.max_level = min_level, max_level
    self.activation = activations.check_activation(activation)
    self.use_batch_norm = (not self.search if use_batch_norm is None
                           else bool(use_batch_norm))
    n = len(self.levels)
    self.genotype = (None if self.search else
                     check_neck_genotype(genotype, n, self.num_layers))
    self._specs = specs
    self._config = dict(
        input_specs={str(l): s for l, s in specs.items()},
        min_level=min_level, max_level=max_level, genotype=self.genotype,
        search=self.search, num_filters=self.num_filters,
        num_layers=self.num_layers, activation=self.activation,
        use_batch_norm=use_batch_norm, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    self.link_names = link_names(self.levels, self.num_layers)
    norm = dict(activation=self.activation,
                use_batch_norm=self.use_batch_norm, use_sync_bn=use_sync_bn,
                norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    built = None if self.search else live_links(self.genotype)
    # links[e] for e in link order; None for a link the network lacks.
    self.links = []
    for e, link_name in enumerate(self.link_names):
      l, rest = divmod(e, n * n)
      i, j = divmod(rest, n)
      if self.search:
        ops = NECK_OPS
      elif built[l][i][j]:
        ops = (self.genotype[l][i][j],)
      else:
        self.links.append(None)
        continue
      link = FusionLink(ops, self.levels[j], self.levels[i], self.num_filters,
                        name=link_name, **norm)
      setattr(self, link_name, link)
      self.links.append(link)
    self.alpha = None
    self.build({str(l): s for l, s in specs.items()})

  def build(self, input_shape):
    n = len(self.levels)
    if self.search:
      self.alpha = auto_fpn_ops.architecture_variable(
          self, len(self.link_names), NECK_OPS)
    for e, link in enumerate(self.links):
      if link is None:
        continue
      l, j = e // (n * n), e % n
      shape = tuple(input_shape[str(self.levels[j])])
      channels = shape[-1] if l == 0 else self.num_filters
      link.build(tuple(shape[:-1]) + (channels,))
    self.built = True

  @property
  def architecture_weights(self):
    """[alpha], the [num_links, len(NECK_OPS)] variable; [] when discrete."""
    return [self.alpha] if self.alpha is not None else []

  @property
  def network_weights(self):
    """The weights trained by SGD: every trainable weight (alpha is not one)."""
    return list(self.trainable_weights)

  def mixing_weights(self):
    """softmax(alpha) per link, float32 [num_links, len(NECK_OPS)]."""
    self._require_search("mixing_weights")
    return tf.nn.softmax(self.alpha, axis=-1)

  def decode(self):
    """The genotype of the current architecture weights (decode_neck)."""
    self._require_search("decode")
    return decode_neck(self.mixing_weights().numpy(), len(self.levels),
                       self.num_layers)

  def _require_search(self, what):
    if not self.search:
      raise ValueError(f"{self.name}.{what}: this is a discrete neck (built "
                       "from a genotype); it has no architecture weights.")

  def _input_sizes(self, image_size):
    if image_size is not None:
      image_size = tuple(int(s) for s in image_size)
      if len(image_size) != 2:
        raise ValueError(f"{self.name}: image_size must be (height, width), "
                         f"got {image_size}.")
    sizes = _level_sizes(self._specs, self.levels, self.levels[-1],
                         image_size)
    unknown = [l for l, s in sizes.items() if None in s]
    if unknown:
      raise ValueError(
          f"{self.name}: the map sizes of levels {unknown} are not static in "
          "input_specs; pass image_size=(height, width) to count FLOPs and "
          "memory access.")
    return sizes

  def cost_counts(self, image_size=None):
    """Parameters, FLOPs and MAC of every (link, operation) (Sec. 3.5).

    Args:
      image_size: (height, width) of the input image; None to use the map
        sizes of input_specs (they must then be static).
    Returns:
      dict "params"/"flops"/"mac" -> int64 [num_links, len(NECK_OPS)],
      counted for this network's batch-norm setting.
    Raises:
      ValueError: map sizes unknown and no image_size.
    """
    sizes = self._input_sizes(image_size)
    n = len(self.levels)
    counts = {k: np.zeros((len(self.link_names), len(NECK_OPS)), np.int64)
              for k in auto_fpn_ops.COUNTS}
    for e in range(len(self.link_names)):
      l, rest = divmod(e, n * n)
      i, j = divmod(rest, n)
      in_channels = (self._specs[self.levels[j]][-1] if l == 0
                     else self.num_filters)
      for k, op in enumerate(NECK_OPS):
        link = _link_counts(op, in_channels, self.num_filters,
                            sizes[self.levels[j]], sizes[self.levels[i]],
                            self.use_batch_norm)
        for key in auto_fpn_ops.COUNTS:
          counts[key][e, k] = link[key]
    return counts

  def cost_table(self, image_size=None):
    """Normalised cost(link, op), float32 [num_links, len(NECK_OPS)].

    auto_fpn_ops.normalised_cost_table of cost_counts(image_size).
    """
    return auto_fpn_ops.normalised_cost_table(self.cost_counts(image_size))

  def resource_cost(self, image_size=None):
    """C(alpha), a float32 scalar tensor differentiable in alpha (Sec. 3.5).

    The search adds lambda * C(alpha) (Sec. 4.1: lambda 0.2, 0.02 or 0.002)
    to its loss. Between 0 and 3 (auto_fpn_ops module docstring).
    """
    self._require_search("resource_cost")
    return auto_fpn_ops.expected_cost(self.alpha, self.cost_table(image_size))

  @property
  def output_specs(self):
    """dict str(level) -> (None, height, width, num_filters)."""
    sizes = _level_sizes(self._specs, self.levels, self.max_level, None)
    return {str(l): (None,) + tuple(sizes[l]) + (self.num_filters,)
            for l in range(self.min_level, self.max_level + 1)}

  def call(self, inputs, training=None):
    n = len(self.levels)
    check_levels(self.name, [str(l) for l in self.levels], inputs,
                 self.min_level, self.max_level)
    feats = [inputs[str(l)] for l in self.levels]
    sizes = []
    for x, level in zip(feats, self.levels):
      static = tuple(x.shape[1:3])
      sizes.append(static if None not in static else tf.shape(x)[1:3])
    mixing = self.mixing_weights() if self.search else None
    for l in range(self.num_layers):
      outputs = []
      for i in range(n):
        total = None
        for j in range(n):
          e = (l * n + i) * n + j
          link = self.links[e]
          if link is None:
            continue
          y = link(feats[j], target_size=sizes[i],
                   mixing=None if mixing is None else mixing[e],
                   training=training)
          total = y if total is None else total + y
        outputs.append(total)
      feats = outputs
    result = {str(l): x for l, x in zip(self.levels, feats)}
    x = feats[-1]
    for level in range(self.levels[-1] + 1, self.max_level + 1):
      x = tf.nn.max_pool2d(x, 2, 2, "SAME")
      result[str(level)] = x
    return result

  def compute_output_spec(self, inputs, training=None):
    dtype = keras.mixed_precision.global_policy().compute_dtype
    batch = inputs[str(self.levels[0])].shape[0]
    return {k: keras.KerasTensor((batch,) + s[1:], dtype=dtype)
            for k, s in self.output_specs.items()}

  def get_config(self):
    return dict(self._config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@register_decoder("auto_fpn")
def auto_fpn(input_specs, min_level=2, max_level=5, genotype=None,
             search=False, num_filters=256, num_layers=2, activation="relu",
             use_batch_norm=None, use_sync_bn=False, norm_momentum=0.99,
             norm_epsilon=1e-3):
  """Builds the Auto-fusion neck on a backbone whose outputs are `input_specs`.

  A gin file of a decoded architecture binds `auto_fpn.genotype`; the search
  binds `auto_fpn.search = True`. See AutoFusionNeck for the arguments.
  Returns a keras.Model mapping the backbone's output dict to dict
  str(level) -> [batch, H / 2^level, W / 2^level, num_filters] for levels
  min_level..max_level.
  """
  return AutoFusionNeck(
      input_specs, min_level=min_level, max_level=max_level,
      genotype=genotype, search=search, num_filters=num_filters,
      num_layers=num_layers, activation=activation,
      use_batch_norm=use_batch_norm, use_sync_bn=use_sync_bn,
      norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)

