"""Auto-FPN search operations, their relaxation, decoding and resource cost.

Auto-FPN (Xu et al., ICCV 2019) searches the neck (Sec. 3.2 "Auto-fusion")
and the RCNN head (Sec. 3.3 "Auto-head") with the continuous relaxation of
DARTS (Liu et al., ICLR 2019): every edge of a search graph computes
sum_o softmax(alpha)_o * o(x) over a set of candidate operations (Sec. 3.2,
the equation for O-hat; Sec. 3.4), and the decoded network keeps the arg-max
operation of each edge (Sec. 3.2 "Decoding architectures from alpha").

Operation sets (names are the genotype's vocabulary):
- NECK_OPS, Sec. 3.2 O_N: none, skip, 3x3 and 5x5 dilated convs at rates 2
  and 3, 3x3 and 5x5 depthwise-separable convs.
- HEAD_OPS, Sec. 3.3 O_H: O_N without the two rate-3 dilated convs ("dilated
  conv is not useful here in small spatial resolution"), with 3x3 and 5x5
  convs added. Sec. 4.1 and the space size of the paper (1.9e25 = 8^28) give
  eight operations.

The paper names the operations, not their layers. Choices written down here
as the project rule, following DARTS, whose relaxation the paper reuses
(DARTS Sec. 3.1 and the operation list of its Sec. 4.1):
- none: zeros; the edge is absent from the decoded network.
- skip: the identity.
- dil_conv_KxK_rR: activation -> KxK depthwise conv of dilation R -> 1x1
  conv (a keras SeparableConv2D) [-> batch norm].
- sep_conv_KxK: (activation -> KxK depthwise conv -> 1x1 conv [-> batch
  norm]) applied twice, as DARTS applies its separable convs.
- conv_KxK: activation -> KxK conv [-> batch norm].
Every operation keeps the width and the spatial size (stride 1, 'same'
padding). The activation comes first, DARTS' ReLU-conv-BN order, so that a
sum of operations stays linear in its inputs for `skip`. A conv followed by
batch norm has no bias; without batch norm the last conv of an operation has
one (a depthwise-separable conv has a single bias, after its 1x1 part).

Batch norm: none in a super-network (Sec. 4.1 "Batch normalization is not
used in both modules during searching"; Table 7: searching with it costs 1.7
mAP on VOC). The decoded networks take `use_batch_norm`; see the modules that
build them (modeling/decoders/auto_fpn.py, modeling/heads/auto_head.py).

Resource cost (Sec. 3.5): C(alpha) = sum over edges e and operations o of
softmax(alpha_e)_o * cost(e, o), linear in the softmax weights and so
differentiable in alpha, with cost(e, o) "a sum of normalized parameter
size, FLOPs and MAC". The counts of one edge and operation are given by the
module (it knows the widths and map sizes of each edge); the units are:
- parameters: every weight Keras creates (count_params), batch norm moving
  statistics included;
- FLOPs: multiply-adds of the convolutions (kernel products); biases, batch
  norm, activations, pooling, resizing and sums are not counted;
- MAC, the memory access cost of ShuffleNet V2 (Ma et al., ECCV 2018,
  Sec. 2, guideline G1): for every convolution, the elements it reads plus
  those it writes plus its parameters (a depthwise-separable conv counts as
  two convolutions, as its intermediate map is written and read back); a
  skip is one copy (read and write the map), which is what lets MAC tell
  `skip` from `none` (Sec. 3.5); resampling reads and writes its maps.
Normalisation (the paper does not say how): each of the three counts is
divided by its value for the heaviest network of the space, the sum over
edges of the largest count among the operations of that edge. Each
normalised count of a decoded network then lies in [0, 1] and C in [0, 3],
whatever the widths and image size, so the same lambda (Sec. 4.1: 0.2, 0.02,
0.002) means the same trade-off for the neck and the head.
"""

import re

import keras
import numpy as np
import tensorflow as tf

from modeling.layers import activations
from modeling.layers.conv_bn import batch_norm, kernel_initializer
from modeling.layers.tracking import tracked_list

NECK_OPS = ("none", "skip", "dil_conv_3x3_r2", "dil_conv_3x3_r3",
            "dil_conv_5x5_r2", "dil_conv_5x5_r3", "sep_conv_3x3",
            "sep_conv_5x5")
HEAD_OPS = ("none", "skip", "dil_conv_3x3_r2", "dil_conv_5x5_r2",
            "sep_conv_3x3", "sep_conv_5x5", "conv_3x3", "conv_5x5")

COUNTS = ("params", "flops", "mac")

_KERNEL_OP = re.compile(r"^(conv|sep_conv)_([1-9])x\2$")
_DILATED_OP = re.compile(r"^dil_conv_([1-9])x\1_r([1-9])$")


def parse_op(op):
  """(kind, kernel, rate) of an operation name.

  Args:
    op: "none", "skip", "conv_KxK", "sep_conv_KxK" or "dil_conv_KxK_rR".
  Returns:
    kind in ("none", "skip", "conv", "sep_conv", "dil_conv"), kernel side
    (0 for none and skip), dilation rate (1 unless dil_conv).
  Raises:
    ValueError: naming the malformed operation.
  """
  if op in ("none", "skip"):
    return op, 0, 1
  match = _KERNEL_OP.match(str(op))
  if match:
    return match.group(1), int(match.group(2)), 1
  match = _DILATED_OP.match(str(op))
  if match:
    return "dil_conv", int(match.group(1)), int(match.group(2))
  raise ValueError(
      f"Unknown operation {op!r}: expected none, skip, conv_KxK, sep_conv_KxK "
      "or dil_conv_KxK_rR.")


def check_op_set(ops, where):
  """Returns ops as a tuple after checking each name; raises ValueError."""
  ops = tuple(ops)
  if not ops:
    raise ValueError(f"{where}: the operation set is empty.")
  for op in ops:
    parse_op(op)
  if len(set(ops)) != len(ops):
    raise ValueError(f"{where}: the operation set {ops} repeats a name.")
  return ops


def op_counts(op, channels, height, width, use_batch_norm):
  """Parameters, FLOPs and MAC of an operation on a [height, width, C] map.

  Units as in the module docstring. The parameter count equals the Keras
  count_params of CandidateOp(op, channels, use_batch_norm=...).

  Args:
    op: an operation name (parse_op).
    channels: width in and out.
    height, width: map size (ints).
    use_batch_norm: whether the operation ends its convs with batch norm.
  Returns:
    dict "params", "flops", "mac" -> int.
  """
  kind, kernel, _ = parse_op(op)
  c, hw = int(channels), int(height) * int(width)
  if kind == "none":
    return dict(params=0, flops=0, mac=0)
  if kind == "skip":
    return dict(params=0, flops=0, mac=2 * hw * c)
  bias = 0 if use_batch_norm else c
  norm = 4 * c if use_batch_norm else 0
  if kind == "conv":
    weights = kernel * kernel * c * c
    return dict(params=weights + bias + norm, flops=hw * weights,
                mac=2 * hw * c + weights + bias)
  # One depthwise-separable conv: a depthwise and a 1x1 conv, each reading
  # and writing a map.
  depthwise, pointwise = kernel * kernel * c, c * c
  repeats = 2 if kind == "sep_conv" else 1
  return dict(
      params=repeats * (depthwise + pointwise + bias + norm),
      flops=repeats * hw * (depthwise + pointwise),
      mac=repeats * (4 * hw * c + depthwise + pointwise + bias))


def conv_counts(in_channels, out_channels, kernel, height, width,
                use_batch_norm):
  """Parameters, FLOPs and MAC of a stride-1 KxK conv [-> batch norm].

  Args:
    in_channels, out_channels, kernel: the conv.
    height, width: map size (ints).
    use_batch_norm: batch norm after the conv (and no bias).
  Returns:
    dict "params", "flops", "mac" -> int.
  """
  hw = int(height) * int(width)
  weights = kernel * kernel * in_channels * out_channels
  bias = 0 if use_batch_norm else out_channels
  norm = 4 * out_channels if use_batch_norm else 0
  return dict(params=weights + bias + norm, flops=hw * weights,
              mac=hw * (in_channels + out_channels) + weights + bias)


def add_counts(*counts):
  """Sums dicts of COUNTS."""
  return {k: sum(c[k] for c in counts) for k in COUNTS}


@keras.saving.register_keras_serializable(package="spinenet")
class CandidateOp(keras.layers.Layer):
  """One candidate operation of an Auto-FPN search (not `none`).

  Input and output: [batch, height, width, filters] (any float dtype).

  Args:
    op: operation name other than "none" (module docstring).
    filters: width in and out; the input must have it.
    activation: "relu", "swish" or "hard_swish", before each conv.
    use_batch_norm: batch norm after each conv (whose bias is then dropped).
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  Raises:
    ValueError: for "none" (an absent edge has no layer), an unknown name or
      an input of another width.
  """

  def __init__(self, op, filters, activation="relu", use_batch_norm=False,
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               **kwargs):
    super().__init__(**kwargs)
    kind, kernel, rate = parse_op(op)
    if kind == "none":
      raise ValueError(f"{self.name}: 'none' is an absent edge, not a layer.")
    self.op = op
    self.filters = int(filters)
    self.activation = activations.check_activation(activation)
    self.use_batch_norm = bool(use_batch_norm)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    bias = not self.use_batch_norm
    if kind == "conv":
      convs = [keras.layers.Conv2D(
          self.filters, kernel, padding="same", use_bias=bias,
          kernel_initializer=kernel_initializer(), name="conv")]
    elif kind in ("sep_conv", "dil_conv"):
      repeats = 2 if kind == "sep_conv" else 1
      convs = [keras.layers.SeparableConv2D(
          self.filters, kernel, padding="same", dilation_rate=rate,
          use_bias=bias, depthwise_initializer=kernel_initializer(),
          pointwise_initializer=kernel_initializer(), name=f"conv_{i}")
               for i in range(repeats)]
    else:
      convs = []
    self.convs = tracked_list(self, "conv", convs)
    self.norms = tracked_list(self, "norm", [
        batch_norm(norm_momentum, norm_epsilon, use_sync_bn, name=f"norm_{i}")
        for i in range(len(convs))] if self.use_batch_norm else [])

  def build(self, input_shape):
    if input_shape[-1] != self.filters:
      raise ValueError(f"{self.name} ({self.op}): input width "
                       f"{input_shape[-1]} but the operation has "
                       f"{self.filters} channels.")
    for i, conv in enumerate(self.convs):
      conv.build(input_shape)
      if self.norms:
        self.norms[i].build(input_shape)

  def call(self, inputs, training=None):
    act = activations.get_activation(self.activation)
    x = inputs
    for i, conv in enumerate(self.convs):
      x = conv(act(x))
      if self.norms:
        x = self.norms[i](x, training=training)
    return x

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(op=self.op, filters=self.filters,
                  activation=self.activation,
                  use_batch_norm=self.use_batch_norm,
                  use_sync_bn=self.use_sync_bn,
                  norm_momentum=self.norm_momentum,
                  norm_epsilon=self.norm_epsilon)
    return config


@keras.saving.register_keras_serializable(package="spinenet")
class MixedOp(keras.layers.Layer):
  """sum_o w_o * o(x) over a set of candidate operations (Sec. 3.2, 3.4).

  Call: (x [batch, height, width, filters], mixing [len(ops)] float weights,
  softmax(alpha) of this edge) -> [batch, height, width, filters]. `none`
  contributes zeros and has no layer; each other operation is a CandidateOp
  held as the attribute `op_<name>`.

  Args:
    ops: the operation set (NECK_OPS or HEAD_OPS).
    filters, activation, use_batch_norm, use_sync_bn, norm_momentum,
      norm_epsilon: as CandidateOp.
  """

  def __init__(self, ops, filters, activation="relu", use_batch_norm=False,
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               **kwargs):
    super().__init__(**kwargs)
    self.ops = check_op_set(ops, self.name)
    self.filters = int(filters)
    self.activation = activations.check_activation(activation)
    self.use_batch_norm = bool(use_batch_norm)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon
    self.candidates = {}
    for op in self.ops:
      if op != "none":
        layer = CandidateOp(op, filters, activation, use_batch_norm,
                            use_sync_bn, norm_momentum, norm_epsilon, name=op)
        setattr(self, f"op_{op}", layer)
        self.candidates[op] = layer

  def build(self, input_shape):
    for layer in self.candidates.values():
      layer.build(input_shape)

  def call(self, inputs, mixing, training=None):
    mixing = tf.cast(mixing, inputs.dtype)
    total = tf.zeros_like(inputs)
    for index, op in enumerate(self.ops):
      if op != "none":
        total += mixing[index] * self.candidates[op](inputs, training=training)
    return total

  def compute_output_shape(self, input_shape, mixing_shape=None):
    del mixing_shape
    return tuple(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(ops=list(self.ops), filters=self.filters,
                  activation=self.activation,
                  use_batch_norm=self.use_batch_norm,
                  use_sync_bn=self.use_sync_bn,
                  norm_momentum=self.norm_momentum,
                  norm_epsilon=self.norm_epsilon)
    return config


def edge_layer(ops, filters, activation, use_batch_norm, use_sync_bn,
               norm_momentum, norm_epsilon, name):
  """MixedOp over `ops` (several), CandidateOp (one), None (only "none")."""
  norm = dict(activation=activation, use_batch_norm=use_batch_norm,
              use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)
  if len(ops) > 1:
    return MixedOp(ops, filters, name=name, **norm)
  if ops[0] == "none":
    return None
  return CandidateOp(ops[0], filters, name=name, **norm)


def architecture_variable(layer, num_edges, ops, name="architecture_weights"):
  """Creates the [num_edges, len(ops)] architecture weights of `layer`.

  Non-trainable in Keras' sense: an optimizer built on the model's
  trainable_variables (the network weights, trained on trainA) never
  updates them. The search updates them with an optimizer of its own
  (Sec. 3.4, 4.1: Adam on trainB) and watches them on its tape
  (watch_architecture), as the tape watches only trainable variables by
  itself. Initialised N(0, 1e-3), as DARTS does, so that no operation is
  favoured and ties do not decide the first decoding. Kept float32 under
  mixed precision (autocast off): the softmax is taken in float32.
  """
  return layer.add_weight(
      name=name, shape=(int(num_edges), len(ops)),
      initializer=keras.initializers.RandomNormal(stddev=1e-3),
      trainable=False, autocast=False)


def watch_architecture(tape, variables):
  """Makes `tape` record the gradient of the architecture weights.

  tf.GradientTape.watch refuses a Keras variable; its TensorFlow variable
  (`.value`, not cast: the weights are created with autocast off) is
  watched instead, after which tape.gradient(loss, variables) works on the
  Keras variables themselves.

  Args:
    tape: a tf.GradientTape, before the forward pass.
    variables: Keras variables (a model's `architecture_weights`).
  """
  tape.watch([v.value for v in variables])


def decode_edges(mixing, ops, node_edges, where):
  """Arg-max decoding with every node keeping an input (Sec. 3.2).

  Each edge takes its arg-max operation (ties: the first in `ops`). A node
  whose edges all decode to `none` would be empty: it keeps the one edge and
  operation with the largest softmax weight among the operations other than
  `none` of its edges, and its other edges stay `none`. Softmax weights, not
  raw alpha, are compared across edges, since only they are comparable from
  one edge to another.

  Args:
    mixing: [num_edges, len(ops)] softmax weights (numpy or tensor).
    ops: the operation set; must contain an operation other than "none".
    node_edges: for each node, the indices of its incoming edges.
    where: names the module in errors.
  Returns:
    list of num_edges operation names.
  Raises:
    ValueError: mixing is not [num_edges, len(ops)] or holds non-finite
      values, or an edge index is out of range.
  """
  mixing = np.asarray(mixing, dtype=np.float64)
  ops = tuple(ops)
  if mixing.ndim != 2 or mixing.shape[1] != len(ops):
    raise ValueError(f"{where}: architecture weights of shape {mixing.shape}, "
                     f"expected [num_edges, {len(ops)}] for the operations "
                     f"{ops}.")
  if not np.all(np.isfinite(mixing)):
    raise ValueError(f"{where}: the architecture weights are not all finite.")
  others = [k for k, op in enumerate(ops) if op != "none"]
  if not others:
    raise ValueError(f"{where}: the operation set {ops} has only 'none'.")
  chosen = [ops[k] for k in np.argmax(mixing, axis=1)]
  for node, edges in enumerate(node_edges):
    edges = list(edges)
    if any(not 0 <= e < mixing.shape[0] for e in edges):
      raise ValueError(f"{where}: node {node} has edge indices {edges} out of "
                       f"range for {mixing.shape[0]} edges.")
    if all(chosen[e] == "none" for e in edges):
      sub = mixing[np.ix_(edges, others)]
      row, col = np.unravel_index(np.argmax(sub), sub.shape)
      chosen[edges[row]] = ops[others[col]]
  return chosen


def flatten_genotype(genotype):
  """The operation names of a nested list genotype, in order."""
  if isinstance(genotype, str):
    return [genotype]
  names = []
  for item in genotype:
    names.extend(flatten_genotype(item))
  return names


def op_shares(genotype, ops):
  """Share of each operation among the edges of a genotype.

  DARTS-style searches are reported to collapse towards parameter-free
  operations (skip connections); `op_shares(g, ops)["skip"]` and ["none"]
  measure it.

  Args:
    genotype: nested lists of operation names (a neck or head genotype).
    ops: the operation set.
  Returns:
    dict operation -> fraction of the edges (floats summing to 1).
  Raises:
    ValueError: the genotype is empty or names an operation not in ops.
  """
  names = flatten_genotype(genotype)
  if not names:
    raise ValueError("op_shares: the genotype has no edge.")
  unknown = sorted(set(names) - set(ops))
  if unknown:
    raise ValueError(
        f"op_shares: operations {unknown} are not in {tuple(ops)}.")
  return {op: names.count(op) / len(names) for op in ops}


def normalised_cost_table(counts):
  """cost(e, o) = sum over COUNTS of count(e, o) / sum_e max_o count(e, o).

  Args:
    counts: dict "params"/"flops"/"mac" -> [num_edges, num_ops] arrays.
  Returns:
    float32 numpy array [num_edges, num_ops].
  Raises:
    ValueError: a count is negative or all zero (nothing to normalise by).
  """
  total = None
  for key in COUNTS:
    table = np.asarray(counts[key], dtype=np.float64)
    if np.any(table < 0):
      raise ValueError(f"normalised_cost_table: negative {key}.")
    scale = table.max(axis=1).sum()
    if scale <= 0:
      raise ValueError(f"normalised_cost_table: every {key} count is zero.")
    total = table / scale if total is None else total + table / scale
  return total.astype(np.float32)


def expected_cost(alpha, table):
  """C(alpha) = sum_e sum_o softmax(alpha_e)_o * table[e, o] (Sec. 3.5).

  Args:
    alpha: [num_edges, num_ops] architecture weights (variable or tensor).
    table: [num_edges, num_ops] normalised costs (normalised_cost_table).
  Returns:
    float32 scalar tensor, differentiable in alpha.
  """
  alpha = tf.convert_to_tensor(alpha, tf.float32)
  return tf.reduce_sum(tf.nn.softmax(alpha, axis=-1) *
                       tf.constant(table, tf.float32))
