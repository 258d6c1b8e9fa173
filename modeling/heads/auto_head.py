"""Auto-head, the searched RCNN head of Auto-FPN (Xu et al. 2019, Sec. 3.3).

The head takes each ROI's pooled features (7x7 in the paper's FPN) through
M cells (Sec. 4.1: M = 2), global average pooling and two linear layers, the
class logits and the box deltas (Sec. 4.1: "The output of the last cell goes
through a global average pooling to become a vector and then fed into the
classification and bbox regression"). It takes and returns what the Fast
R-CNN head does (modeling/heads/fast_rcnn.py), so either can be the box head
of the Mask R-CNN assembly.

A cell (Sec. 3.3, Fig. 3b; DARTS' cell, Liu et al., ICLR 2019, Sec. 2.1) has
7 nodes: two inputs, the outputs of cells m - 2 and m - 1 (both the ROI
features for the first cell, which has no predecessor; the second cell's
m - 2 input is the ROI features), four intermediate nodes and the output,
the depth-wise concatenation of the four intermediate nodes. Intermediate
node k sums one operation of HEAD_OPS (modeling/layers/auto_fpn_ops.py) on
each earlier node: the two inputs and intermediate nodes 0..k-1, so 2 + 3 +
4 + 5 = 14 edges per cell, 28 for two cells, and the space has 8^28 = 1.9e25
architectures (Sec. 4.1). Each cell has its own architecture (Sec. 3.3: "a
different architecture parameter beta_m for each cell") and there is no
reduction cell (the ROI maps are already small).

Two networks share this code, as in the neck (modeling/decoders/auto_fpn.py):
the super-network (search=True, every edge a softmax mixture over the
operations, beta [num_cells * 14, 8] held apart from the network weights)
and the discrete network of a genotype, whose `none` edges do not exist.

Genotype: a JSON-serialisable nested list genotype[m][k] = the 2 + k
operation names of intermediate node k of cell m, for its edges from input
m - 2, input m - 1, then intermediate nodes 0..k-1. Edges are numbered in
that order (cell, node, input), the row order of beta.

Choices where the paper is silent, written down here as the project rule:
- Widths: the cell output has num_filters channels (Sec. 4.1: 512), so each
  intermediate node and operation has num_filters / 4.
- Each cell input is brought to that width by a 1x1 conv of its own (DARTS'
  input preprocessing, without its ReLU: every conv operation starts with
  the activation).
- In the discrete network, an input that no edge of its cell reads has no
  1x1 conv, and a cell whose output no later cell reads (its successors'
  edges from it are all `none`) is not built: its weights would take no
  gradient. The resource cost counts every edge alone (Sec. 3.5).
- Batch norm as in the neck: none in the super-network (Sec. 4.1, Table 7),
  after every conv of the discrete network by default (use_batch_norm=None
  means False for search=True, True for a genotype).
- Prediction layers: those of the Fast R-CNN head, from their one source
  (modeling/heads/fast_rcnn.py, BoxHead): class logits N(0, 0.01), box
  deltas N(0, 0.001), zero biases, outputs cast to float32, class-major
  deltas. A BoxHead is what the two-stage detector
  (modeling/models/maskrcnn.py) takes as its box head.
"""

import keras
import numpy as np
import tensorflow as tf

from modeling.heads import arguments
from modeling.heads.fast_rcnn import BoxHead, roi_feature_dims
from modeling.heads.registry import register_head
from modeling.layers import activations
from modeling.layers import auto_fpn_ops
from modeling.layers.auto_fpn_ops import HEAD_OPS
from modeling.layers.conv_bn import batch_norm, kernel_initializer
from modeling.layers.tracking import tracked_list

NUM_NODES = 4  # Intermediate nodes per cell (Sec. 3.3, Fig. 3b).
EDGES_PER_CELL = sum(2 + k for k in range(NUM_NODES))  # 14


def head_space_size(num_cells=2, ops=HEAD_OPS):
  """Number of Auto-head architectures: |ops|^(14 * num_cells).

  Sec. 4.1: 2 cells, 8 operations -> 8^28 = 1.9e25.
  """
  return len(ops) ** (EDGES_PER_CELL * int(num_cells))


def edge_names(num_cells):
  """"c{m}_n{k}_from_{source}" per edge, in genotype/beta order.

  Sources: "in0" (cell m - 2), "in1" (cell m - 1), "n{k'}" (intermediate).
  """
  sources = lambda k: ["in0", "in1"] + [f"n{p}" for p in range(k)]
  return [f"c{m}_n{k}_from_{s}" for m in range(num_cells)
          for k in range(NUM_NODES) for s in sources(k)]


def check_head_genotype(genotype, num_cells):
  """Validates a head genotype and returns it as nested lists of str.

  Args:
    genotype: genotype[m][k], num_cells lists of NUM_NODES lists of 2 + k
      operation names of HEAD_OPS.
    num_cells: the head's cells.
  Raises:
    ValueError: naming the cell and node that are malformed, hold an
      unknown operation, or have only `none` edges (a node without input;
      decode_head never makes one).
  """
  where = "AutoHead genotype"
  if not isinstance(genotype, (list, tuple)) or len(genotype) != num_cells:
    raise ValueError(f"{where}: expected a list of {num_cells} cells, got "
                     f"{genotype!r}.")
  checked = []
  for m, cell in enumerate(genotype):
    if not isinstance(cell, (list, tuple)) or len(cell) != NUM_NODES:
      raise ValueError(f"{where}: cell {m} must list {NUM_NODES} "
                       f"intermediate nodes, got {cell!r}.")
    nodes = []
    for k, node in enumerate(cell):
      if (not isinstance(node, (list, tuple)) or len(node) != 2 + k or
          not all(isinstance(op, str) for op in node)):
        raise ValueError(f"{where}: cell {m}, node {k} must list {2 + k} "
                         f"operation names (inputs m-2, m-1, then nodes "
                         f"0..{k - 1}), got {node!r}.")
      unknown = [op for op in node if op not in HEAD_OPS]
      if unknown:
        raise ValueError(f"{where}: cell {m}, node {k}: unknown operations "
                         f"{unknown}; expected names of {HEAD_OPS}.")
      if all(op == "none" for op in node):
        raise ValueError(f"{where}: cell {m}, node {k} has only 'none' "
                         "edges, so it has no input.")
      nodes.append(list(node))
    checked.append(nodes)
  return checked


def decode_head(mixing, num_cells=2):
  """The genotype of a super-network's softmax weights (arg-max per edge).

  Every intermediate node keeps an input (auto_fpn_ops.decode_edges).

  Args:
    mixing: [num_cells * 14, len(HEAD_OPS)] softmax weights, genotype order.
  Returns:
    genotype[m][k] (nested lists of operation names).
  """
  starts = [sum(2 + p for p in range(k)) for k in range(NUM_NODES)]
  nodes = [[m * EDGES_PER_CELL + starts[k] + s for s in range(2 + k)]
           for m in range(num_cells) for k in range(NUM_NODES)]
  flat = auto_fpn_ops.decode_edges(mixing, HEAD_OPS, nodes, "decode_head")
  return [[flat[m * EDGES_PER_CELL + starts[k]:
                m * EDGES_PER_CELL + starts[k] + 2 + k]
           for k in range(NUM_NODES)] for m in range(num_cells)]


def cell_usage(genotype):
  """(live cells, inputs read) of a discrete head.

  Returns:
    live: list of bool per cell (the last is always live);
    reads: list of (reads input m-2, reads input m-1) per cell.
  """
  reads = [tuple(any(node[s] != "none" for node in cell) for s in (0, 1))
           for cell in genotype]
  num_cells = len(genotype)
  live = [False] * num_cells
  live[-1] = True
  for m in range(num_cells - 2, -1, -1):
    live[m] = ((live[m + 1] and reads[m + 1][1]) or
               (m + 2 < num_cells and live[m + 2] and reads[m + 2][0]))
  return live, reads


def head_parameter_count(genotype, input_channels, num_classes,
                         num_filters=512, class_agnostic_boxes=False,
                         use_batch_norm=True):
  """Weights of the discrete head of `genotype`, counted analytically.

  Equals the count_params() of AutoHead(num_classes, genotype=...,
  num_filters=..., ...) built on ROI features of `input_channels` channels:
  the 1x1 input convs read by each live cell, every operation of a live cell,
  and the two prediction layers (batch norm moving statistics included).

  Returns:
    int.
  """
  num_cells = len(genotype)
  genotype = check_head_genotype(genotype, num_cells)
  node_filters = _node_filters(num_filters)
  live, reads = cell_usage(genotype)
  widths = [input_channels, input_channels] + [num_filters] * num_cells
  total = 0
  for m, cell in enumerate(genotype):
    if not live[m]:
      continue
    for s in (0, 1):
      if reads[m][s]:
        total += auto_fpn_ops.conv_counts(widths[m + s], node_filters, 1, 1, 1,
                                          use_batch_norm)["params"]
    for node in cell:
      for op in node:
        total += auto_fpn_ops.op_counts(op, node_filters, 1, 1,
                                        use_batch_norm)["params"]
  boxes = 4 if class_agnostic_boxes else 4 * num_classes
  return total + (num_filters + 1) * (num_classes + boxes)


def _node_filters(num_filters):
  if int(num_filters) != num_filters or num_filters < NUM_NODES or (
      num_filters % NUM_NODES):
    raise ValueError(f"AutoHead: num_filters must be a positive multiple of "
                     f"{NUM_NODES} (the cell output concatenates "
                     f"{NUM_NODES} nodes), got {num_filters!r}.")
  return int(num_filters) // NUM_NODES


@keras.saving.register_keras_serializable(package="spinenet")
class AutoHeadCell(keras.layers.Layer):
  """One Auto-head cell.

  Call: (s0 [n, S, S, C0], s1 [n, S, S, C1], mixing [14, len(HEAD_OPS)]
  softmax weights for a super-network cell, else None) -> [n, S, S,
  NUM_NODES * node_filters].

  Args:
    edge_ops: 14 tuples of operation names in genotype order: HEAD_OPS on
      every edge (super-network) or one name per edge (discrete).
    node_filters: width of each intermediate node.
    reads: (build the m-2 input conv, build the m-1 input conv).
    activation, use_batch_norm, use_sync_bn, norm_momentum, norm_epsilon: as
      auto_fpn_ops.CandidateOp; batch norm also follows the input convs.
  """

  def __init__(self, edge_ops, node_filters, reads=(True, True),
               activation="relu", use_batch_norm=False, use_sync_bn=False,
               norm_momentum=0.99, norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    self.edge_ops = [tuple(ops) for ops in edge_ops]
    if len(self.edge_ops) != EDGES_PER_CELL:
      raise ValueError(f"{self.name}: {len(self.edge_ops)} edges, expected "
                       f"{EDGES_PER_CELL}.")
    self.node_filters = int(node_filters)
    self.reads = tuple(bool(r) for r in reads)
    self.activation = activations.check_activation(activation)
    self.use_batch_norm = bool(use_batch_norm)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.mixed = any(len(ops) > 1 for ops in self.edge_ops)
    self.preprocess = tracked_list(self, "preprocess", [
        keras.layers.Conv2D(self.node_filters, 1,
                            use_bias=not self.use_batch_norm,
                            kernel_initializer=kernel_initializer(),
                            name=f"preprocess_{s}")
        if self.reads[s] else None for s in (0, 1)])
    self.preprocess_norms = tracked_list(self, "preprocess_norm", [
        batch_norm(norm_momentum, norm_epsilon, use_sync_bn,
                   name=f"preprocess_norm_{s}")
        if self.reads[s] and self.use_batch_norm else None for s in (0, 1)])
    names = edge_names(1)
    self.edges = tracked_list(self, "edge", [
        auto_fpn_ops.edge_layer(
            ops, self.node_filters, self.activation, self.use_batch_norm,
            use_sync_bn, norm_momentum, norm_epsilon,
            name=names[e][len("c0_"):])
        for e, ops in enumerate(self.edge_ops)])

  def build(self, s0_shape, s1_shape, mixing_shape=None):
    del mixing_shape
    for s, shape in enumerate((s0_shape, s1_shape)):
      if self.preprocess[s] is not None:
        self.preprocess[s].build(shape)
        if self.preprocess_norms[s] is not None:
          self.preprocess_norms[s].build(
              tuple(shape[:-1]) + (self.node_filters,))
    shape = tuple(s0_shape[:-1]) + (self.node_filters,)
    for edge in self.edges:
      if edge is not None:
        edge.build(shape)

  def call(self, s0, s1, mixing=None, training=None):
    states = []
    for s, x in enumerate((s0, s1)):
      if self.preprocess[s] is None:
        states.append(None)
        continue
      x = self.preprocess[s](x)
      if self.preprocess_norms[s] is not None:
        x = self.preprocess_norms[s](x, training=training)
      states.append(x)
    e = 0
    for k in range(NUM_NODES):
      total = None
      for source in range(2 + k):
        edge = self.edges[e]
        if edge is not None:
          if self.mixed:
            y = edge(states[source], mixing=mixing[e], training=training)
          else:
            y = edge(states[source], training=training)
          total = y if total is None else total + y
        e += 1
      states.append(total)
    return tf.concat(states[2:], axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(edge_ops=[list(ops) for ops in self.edge_ops],
                  node_filters=self.node_filters, reads=list(self.reads),
                  activation=self.activation,
                  use_batch_norm=self.use_batch_norm,
                  use_sync_bn=self.use_sync_bn,
                  norm_momentum=self.norm_momentum,
                  norm_epsilon=self.norm_epsilon)
    return config


@register_head("auto_head")
@keras.saving.register_keras_serializable(package="spinenet")
class AutoHead(BoxHead):
  """Class logits and box deltas for each ROI, from searched cells.

  Input: ROI features [batch, num_rois, S, S, C] (S, C static; 7x7 ROI Align
  features). Output: a tuple (class_logits, box_deltas): float32 [batch,
  num_rois, num_classes] and [batch, num_rois, 4 * num_classes] (class
  major), or [batch, num_rois, 4] with class_agnostic_boxes; the Fast R-CNN
  head's outputs.

  Args:
    num_classes: classes, background column 0 included (COCO: 91).
    genotype: the decoded architecture (module docstring), or None with
      search=True.
    search: build the super-network (architecture weights, every operation
      on every edge).
    num_cells: cells M (Sec. 4.1: 2).
    num_filters: channels of each cell output (Sec. 4.1: 512), a multiple
      of 4.
    class_agnostic_boxes: one box per ROI instead of one per class.
    activation: "relu", "swish" or "hard_swish", first in each conv
      operation.
    use_batch_norm: batch norm after every conv; None: not for the search,
      yes for a genotype (module docstring).
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  Raises:
    ValueError: naming the argument: both or neither of genotype and search,
      a malformed genotype (check_head_genotype), bad sizes, or ROI features
      that are not [batch, num_rois, S, S, C] with S and C static.
  """

  def __init__(self, num_classes, genotype=None, search=False, num_cells=2,
               num_filters=512, class_agnostic_boxes=False, activation="relu",
               use_batch_norm=None, use_sync_bn=False, norm_momentum=0.99,
               norm_epsilon=1e-3, **kwargs):
    super().__init__(num_classes, class_agnostic_boxes, **kwargs)
    arguments.check_integers("AutoHead", (("num_cells", num_cells, 1),))
    self.node_filters = _node_filters(num_filters)
    if bool(search) == (genotype is not None):
      raise ValueError(
          "AutoHead: give a genotype (the decoded head) or search=True (the "
          f"super-network), not both nor neither; got search={search!r}, "
          f"genotype={genotype!r}.")
    self.search = bool(search)
    self.num_cells = int(num_cells)
    self.num_filters = int(num_filters)
    self.activation = activations.check_activation(activation)
    self._use_batch_norm_arg = use_batch_norm
    self.use_batch_norm = (not self.search if use_batch_norm is None
                           else bool(use_batch_norm))
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.genotype = (None if self.search else
                     check_head_genotype(genotype, self.num_cells))
    self.edge_names = edge_names(self.num_cells)
    if self.search:
      live, reads = [True] * self.num_cells, [(True, True)] * self.num_cells
    else:
      live, reads = cell_usage(self.genotype)
    self.live_cells = live
    norm = dict(activation=self.activation,
                use_batch_norm=self.use_batch_norm, use_sync_bn=use_sync_bn,
                norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    cells = []
    for m in range(self.num_cells):
      if not live[m]:
        cells.append(None)
        continue
      if self.search:
        edge_ops = [HEAD_OPS] * EDGES_PER_CELL
      else:
        edge_ops = [(op,) for node in self.genotype[m] for op in node]
      cells.append(AutoHeadCell(edge_ops, self.node_filters, reads[m],
                                name=f"cell_{m}", **norm))
    self.cells = tracked_list(self, "cell", cells)
    self.make_predictors()
    self.alpha = None
    self._roi_size = None

  def build(self, input_shape):
    height, width, channels = roi_feature_dims(self.name, input_shape)
    self._roi_size = (height, width)
    if self.search:
      self.alpha = auto_fpn_ops.architecture_variable(
          self, len(self.edge_names), HEAD_OPS)
    widths = [channels, channels] + [self.num_filters] * self.num_cells
    for m, cell in enumerate(self.cells):
      if cell is not None:
        cell.build((None, height, width, widths[m]),
                   (None, height, width, widths[m + 1]))
    self.build_predictors(self.num_filters)

  @property
  def architecture_weights(self):
    """[beta], the [num_cells * 14, len(HEAD_OPS)] variable; [] if discrete."""
    return [self.alpha] if self.alpha is not None else []

  @property
  def network_weights(self):
    """The weights trained by SGD: every trainable weight (beta is not one)."""
    return list(self.trainable_weights)

  def _require_search(self, what):
    if not self.search:
      raise ValueError(f"{self.name}.{what}: this is a discrete head (built "
                       "from a genotype); it has no architecture weights.")
    if self.alpha is None:
      raise ValueError(f"{self.name}.{what}: the head is not built yet; call "
                       "it (or build it) on ROI features first.")

  def mixing_weights(self):
    """softmax(beta) per edge, float32 [num_cells * 14, len(HEAD_OPS)]."""
    self._require_search("mixing_weights")
    return tf.nn.softmax(self.alpha, axis=-1)

  def decode(self):
    """The genotype of the current architecture weights (decode_head)."""
    self._require_search("decode")
    return decode_head(self.mixing_weights().numpy(), self.num_cells)

  def cost_counts(self):
    """Parameters, FLOPs and MAC per ROI of every (edge, operation) (Sec. 3.5).

    Returns:
      dict "params"/"flops"/"mac" -> int64 [num_cells * 14, len(HEAD_OPS)],
      on the ROI size the head was built for, for its batch-norm setting.
    """
    self._require_search("cost_counts")
    height, width = self._roi_size
    counts = {k: np.zeros((len(self.edge_names), len(HEAD_OPS)), np.int64)
              for k in auto_fpn_ops.COUNTS}
    for k, op in enumerate(HEAD_OPS):
      op_count = auto_fpn_ops.op_counts(op, self.node_filters, height, width,
                                        self.use_batch_norm)
      for key in auto_fpn_ops.COUNTS:
        counts[key][:, k] = op_count[key]
    return counts

  def cost_table(self):
    """Normalised cost(edge, op), float32 [num_cells * 14, len(HEAD_OPS)]."""
    return auto_fpn_ops.normalised_cost_table(self.cost_counts())

  def resource_cost(self):
    """C(beta), a float32 scalar tensor differentiable in beta (Sec. 3.5).

    Between 0 and 3 (auto_fpn_ops module docstring); the search adds lambda
    times it, with the neck's C(alpha), to its loss.
    """
    self._require_search("resource_cost")
    return auto_fpn_ops.expected_cost(self.alpha, self.cost_table())

  def call(self, roi_features, training=None):
    height, width, channels = roi_feature_dims(self.name, roi_features.shape)
    dynamic = tf.shape(roi_features)
    batch = roi_features.shape[0] or dynamic[0]
    num_rois = roi_features.shape[1] or dynamic[1]
    x = tf.reshape(roi_features, [-1, height, width, channels])
    mixing = self.mixing_weights() if self.search else None
    states = [x, x]
    for m, cell in enumerate(self.cells):
      if cell is None:
        states.append(None)
        continue
      cell_mixing = (None if mixing is None else
                     mixing[m * EDGES_PER_CELL:(m + 1) * EDGES_PER_CELL])
      # A pruned cell's output is read by no edge of this cell (cell_usage):
      # the ROI features stand in for it, and no layer reads them.
      inputs = [x if s is None else s for s in states[m:m + 2]]
      states.append(cell(inputs[0], inputs[1], mixing=cell_mixing,
                         training=training))
    pooled = tf.reduce_mean(states[-1], axis=[1, 2])
    return self.predict_outputs(pooled, batch, num_rois)

  def get_config(self):
    config = super().get_config()
    config.update(
        genotype=self.genotype,
        search=self.search, num_cells=self.num_cells,
        num_filters=self.num_filters,
        activation=self.activation, use_batch_norm=self._use_batch_norm_arg,
        use_sync_bn=self.use_sync_bn, norm_momentum=self.norm_momentum,
        norm_epsilon=self.norm_epsilon)
    return config
