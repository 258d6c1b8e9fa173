"""Batch norms folded into the convolutions before them, for inference exports.

At inference a batch norm normalises with its moving statistics (Ioffe &
Szegedy, "Batch Normalization", ICML 2015, Sec. 3.1), so after a
convolution it is an affine map per output channel:

  bn(conv(x, W) + b) = conv(x, W * s) + (b - mean) * s + beta,
  s = gamma / sqrt(moving_variance + epsilon),

and the convolution with scaled kernel W * s and a bias computes both. The
exported graph then has no batch-norm op left, which saves a pass over every
feature map at serving time.

`fold_function` traces a serving tf.function, freezes its variables into
constants (TensorFlow's convert_variables_to_constants_v2) and folds every
Conv2D or DepthwiseConv2dNative followed by a FusedBatchNorm /
FusedBatchNormV3 in inference mode (our batch norm runs FusedBatchNormV3:
modeling/layers/fused_batch_norm.py), with an optional bias add in between
(`fold_batch_norms`). That is the pattern and the arithmetic of TensorFlow's
optimize_for_inference_lib.fold_batch_norms, which is not called here:

- it scales the kernel one element at a time in Python, 121 s of a 144 s
  export of a SpineNet-49 RetinaNet (28M weights); here one numpy product
  per kernel. tests/official/test_bn_folding.py checks that both give the
  same kernels and biases.
- it wants Const nodes at the op's inputs; after freezing, a variable
  reaches its op through Identity nodes (the frozen ReadVariableOp), and a
  Keras conv bias through a Squeeze or Reshape, followed here.
- it deletes the kernel node it folds, and rewrites the convolution whatever
  else reads it. Here a kernel shared by several convolutions (the
  RetinaNet head's, shared across levels, each level with its own batch
  norm: modeling/heads/tower.py) is not folded: every level would need its
  own scaled copy, 2.3x the SavedModel of a SpineNet-49 RetinaNet at
  640 px; TensorFlow's graph optimizer fuses those conv + batch norm pairs
  into one CPU kernel at run time anyway. A convolution (or bias add) whose output
  also goes elsewhere, a batch norm in training mode, one whose batch
  statistics outputs are read, one not in float32 or not NHWC, and one not
  right after a convolution are left as they are, and reported with the
  reason.

Only the top-level graph is folded; a batch norm inside a function of the
graph's library (a loop body) is reported as not folded, and so is a batch
norm that Keras computed as separate ops (tf.nn.batch_normalization, which
Keras' own call uses for inputs the fused kernel does not take), by its
name scope.
"""

import collections
import copy
import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import attr_value_pb2
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.tools import optimize_for_inference_lib


BATCH_NORM_OPS = ("FusedBatchNorm", "FusedBatchNormV3")
CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")
_BIAS_OPS = ("BiasAdd", "Add", "AddV2")
# Ops between a frozen variable's Const and its reader that keep its values
# (Squeeze / Reshape / ExpandDims only change the shape).
_VALUE_PRESERVING = ("Identity", "Squeeze", "Reshape", "ExpandDims")
# tf.nn.batch_normalization's reciprocal square root, named
# "<scope>/batchnorm/Rsqrt": a batch norm Keras computed as separate ops.
_DECOMPOSED_MARK = "batchnorm/Rsqrt"


@dataclasses.dataclass
class FoldReport:
  """What fold_batch_norms did.

  Attributes:
    folded: names of the batch-norm nodes folded into their convolution.
    not_folded: (node name, reason) of the batch norms left in the graph.
  """
  folded: list = dataclasses.field(default_factory=list)
  not_folded: list = dataclasses.field(default_factory=list)

  def summary(self):
    """One line for the export log: how many folded, which did not, why."""
    total = len(self.folded) + len(self.not_folded)
    line = (f"Folded {len(self.folded)} of {total} batch norms into their "
            f"convolutions")
    if not self.not_folded:
      return line + "."
    listed = "; ".join(f"{name} ({why})" for name, why in self.not_folded)
    return f"{line}; not folded: {listed}."


def _node_name(tensor_name):
  """'name:1' or '^name' -> 'name'."""
  return tensor_name.lstrip("^").split(":")[0]


def _port(tensor_name):
  return int(tensor_name.split(":")[1]) if ":" in tensor_name else 0


def _constant(nodes, tensor_name):
  """The value reaching tensor_name from a Const through shape-only ops.

  Returns:
    A numpy array, or None when the value is not a constant of the graph
    (a Placeholder, a computed tensor) or passes through another op.
  """
  node = nodes.get(_node_name(tensor_name))
  if node is None or _port(tensor_name) != 0:
    return None
  if node.op == "Const":
    return tf.make_ndarray(node.attr["value"].tensor)
  if node.op not in _VALUE_PRESERVING or not node.input:
    return None
  value = _constant(nodes, node.input[0])
  if value is None or node.op == "Identity":
    return value
  if node.op == "Squeeze":
    axes = tuple(node.attr["squeeze_dims"].list.i)
    return np.squeeze(value, axis=axes or None)
  second = _constant(nodes, node.input[1])
  if second is None:
    return None
  if node.op == "Reshape":
    return np.reshape(value, second)
  return np.expand_dims(value, int(second))


def _root_constant(nodes, tensor_name):
  """The Const node name a tensor comes from through shape-only ops, or None."""
  node = nodes.get(_node_name(tensor_name))
  while node is not None and node.op in _VALUE_PRESERVING and node.input:
    node = nodes.get(_node_name(node.input[0]))
  return node.name if node is not None and node.op == "Const" else None


def _const_node(name, value, dtype):
  node = node_def_pb2.NodeDef(name=name, op="Const")
  node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(
      type=dtype.as_datatype_enum))
  node.attr["value"].CopyFrom(attr_value_pb2.AttrValue(
      tensor=tf.make_tensor_proto(value, dtype=dtype)))
  return node


class _Plan:
  """A foldable batch norm: its conv, the bias add between, the constants."""

  def __init__(self, batch_norm, conv, add, kernel, bias, gamma, beta, mean,
               variance):
    self.batch_norm, self.conv, self.add = batch_norm, conv, add
    self.kernel, self.bias = kernel, bias
    self.gamma, self.beta, self.mean, self.variance = (gamma, beta, mean,
                                                       variance)


def _plan(node, nodes, consumers, kernel_uses):
  """A _Plan for the batch norm `node`, or the reason it cannot fold.

  kernel_uses: {kernel Const name: how many convolutions read it}.
  """
  if node.attr["is_training"].b:
    return "in training mode"
  if any(node.attr[key].type != tf.float32.as_datatype_enum
         for key in ("T", "U") if key in node.attr):
    return "not float32"
  if node.attr["data_format"].s not in (b"", b"NHWC"):
    return f"data format {node.attr['data_format'].s.decode()}"
  if any(port > 0 for port, _ in consumers[node.name]):
    return "its batch statistics outputs are read"
  source = nodes[_node_name(node.input[0])]
  add = None
  if source.op in _BIAS_OPS:
    add = source
    sides = [nodes[_node_name(name)] for name in add.input[:2]]
    if sides[0].op not in CONV_OPS:
      sides.reverse()
    source = sides[0]
  if source.op not in CONV_OPS or _port(node.input[0]) != 0:
    return f"its input is a {source.op}, not a convolution"
  if source.attr["T"].type != tf.float32.as_datatype_enum:
    return "its convolution is not float32"
  if source.attr["data_format"].s not in (b"", b"NHWC"):
    return f"its convolution's data format is {source.attr['data_format'].s}"
  # The library rewrites the conv (and drops the add) in place: anything
  # else reading them would see the folded values.
  # (Control inputs stay valid: the conv keeps its name, and the library
  # drops control inputs on the add it removes.)
  for reader, expected in ((source, add or node), (add, node)):
    if reader is None:
      continue
    data = [(port, name) for port, name in consumers[reader.name] if port >= 0]
    if data != [(0, expected.name)]:
      return (f"the output of {reader.name} is also read by "
              f"{', '.join(sorted({n for _, n in data} - {expected.name}))}")
  uses = kernel_uses.get(_root_constant(nodes, source.input[1]), 0)
  if uses > 1:
    # Folding gives every use its own scaled copy of the kernel: the
    # RetinaNet head's shared convs (modeling/heads/tower.py) would be
    # stored once per level, 2.3x the SavedModel of a SpineNet-49 RetinaNet
    # at 640 px. Left as conv + batch norm, which TensorFlow's graph
    # optimizer fuses into one kernel on the CPU anyway.
    return (f"the kernel of {source.name} is shared by {uses} convolutions "
            f"(folding would store a copy per use)")
  kernel = _constant(nodes, source.input[1])
  if kernel is None:
    return f"the kernel of {source.name} is not a constant"
  channels = (kernel.shape[3] if source.op == "Conv2D" else
              kernel.shape[2] * kernel.shape[3])
  bias = np.zeros([channels], np.float32)
  if add is not None:
    index = 1 if _node_name(add.input[0]) == source.name else 0
    value = _constant(nodes, add.input[index])
    # An add broadcasting a [1, .., 1, C] bias over NHWC is a per-channel
    # bias.
    if value is None or value.size != channels or value.shape[-1:] != (
        channels,):
      return f"{add.name} does not add a constant per-channel bias"
    bias = value.reshape([channels])
  params = []
  for index, what in enumerate(("gamma", "beta", "moving mean",
                                "moving variance"), start=1):
    value = _constant(nodes, node.input[index])
    if value is None or value.shape != (channels,):
      return (f"its {what} is not a constant of shape [{channels}]"
              f"{'' if value is None else f' (found {list(value.shape)})'}")
    params.append(value)
  return _Plan(node, source, add, kernel, bias, *params)


def _fold(plan):
  """Rewrites plan's nodes in place; returns the two new Const nodes.

  The arithmetic of optimize_for_inference_lib.fold_batch_norms (scale in
  float64, kernel scaled per output channel, the batch norm replaced by a
  BiasAdd of its name), vectorized: the library scales the kernel one
  element at a time in Python, 121 s of a 144 s SpineNet-49 RetinaNet
  export (28M weights); tests/official/test_bn_folding.py checks that both
  give the same graph values.
  """
  bn, conv = plan.batch_norm, plan.conv
  scale = plan.gamma.astype(np.float64) / np.sqrt(
      plan.variance.astype(np.float64) + bn.attr["epsilon"].f)
  offset = plan.beta + (plan.bias.astype(np.float64) - plan.mean) * scale
  kernel = plan.kernel.astype(np.float64)
  # Output channel c of a depthwise conv is input c // m, multiplier c % m.
  kernel *= (scale if conv.op == "Conv2D" else
             scale.reshape(kernel.shape[2], kernel.shape[3]))
  kernel_node = _const_node(f"{conv.name}/folded_kernel",
                            kernel.astype(np.float32), tf.float32)
  offset_node = _const_node(f"{bn.name}/folded_offset",
                            offset.astype(np.float32), tf.float32)
  conv.input[1] = kernel_node.name
  controls = [name for name in bn.input if name.startswith("^")]
  bn.op = "BiasAdd"
  bn.ClearField("attr")
  bn.attr["T"].CopyFrom(attr_value_pb2.AttrValue(
      type=tf.float32.as_datatype_enum))
  bn.attr["data_format"].CopyFrom(attr_value_pb2.AttrValue(s=b"NHWC"))
  del bn.input[:]
  bn.input.extend([conv.name, offset_node.name] + controls)
  return [kernel_node, offset_node]


def fold_batch_norms(graph_def):
  """Folds every foldable inference batch norm of graph_def (module docstring).

  Args:
    graph_def: a frozen GraphDef (variables as constants); not modified.
  Returns:
    (folded GraphDef, FoldReport).
  Raises:
    ValueError: the graph has duplicate node names, or the folded graph is
      inconsistent (an input naming a missing node).
  """
  graph_def = copy.deepcopy(graph_def)
  nodes = {}
  for node in graph_def.node:
    if node.name in nodes:
      raise ValueError(f"Duplicate node name {node.name!r} in the graph.")
    nodes[node.name] = node
  # node name -> [(output port read, reader)]; port -1 for a control input.
  consumers = collections.defaultdict(list)
  for node in graph_def.node:
    for name in node.input:
      consumers[_node_name(name)].append(
          (-1 if name.startswith("^") else _port(name), node.name))

  kernel_uses = collections.Counter(
      _root_constant(nodes, node.input[1]) for node in graph_def.node
      if node.op in CONV_OPS and len(node.input) > 1)
  report = FoldReport()
  plans = []
  for node in graph_def.node:
    if node.op not in BATCH_NORM_OPS:
      continue
    plan = _plan(node, nodes, consumers, kernel_uses)
    if isinstance(plan, str):
      report.not_folded.append((node.name, plan))
    else:
      plans.append(plan)

  new_nodes = []
  removed = {}  # A removed bias add -> the node that replaces it.
  for plan in plans:
    new_nodes.extend(_fold(plan))
    if plan.add is not None:
      removed[plan.add.name] = plan.batch_norm.name
  kept = [node for node in graph_def.node if node.name not in removed]
  for node in kept:  # Control inputs on a removed add (data ones: _plan).
    for i, name in enumerate(node.input):
      if name.startswith("^") and name[1:] in removed:
        node.input[i] = "^" + removed[name[1:]]
  folded = graph_pb2.GraphDef()
  folded.node.extend(kept + new_nodes)
  folded.library.CopyFrom(graph_def.library)
  folded.versions.CopyFrom(graph_def.versions)
  optimize_for_inference_lib.ensure_graph_is_valid(folded)
  report.folded = sorted(plan.batch_norm.name for plan in plans)

  for function in graph_def.library.function:
    for node in function.node_def:
      if node.op in BATCH_NORM_OPS:
        report.not_folded.append(
            (f"{function.signature.name}/{node.name}",
             "inside a function of the graph library (a loop or branch "
             "body)"))
  for node in folded.node:
    if node.op == "Rsqrt" and node.name.endswith(_DECOMPOSED_MARK):
      report.not_folded.append(
          (node.name[:-len("/Rsqrt")],
           "computed by Keras as separate ops, not a fused batch norm"))
  return folded, report


def batch_norm_ops(graph_def):
  """Names of the batch-norm ops of graph_def, its function library included.

  Counts FusedBatchNorm* nodes and the separate-op batch norms of
  tf.nn.batch_normalization (by their "batchnorm/Rsqrt" node).
  """
  found = []
  bodies = [("", graph_def.node)] + [
      (f"{f.signature.name}/", f.node_def) for f in graph_def.library.function]
  for prefix, body in bodies:
    for node in body:
      if (node.op.startswith("FusedBatchNorm") or node.op ==
          "BatchNormWithGlobalNormalization" or (
              node.op == "Rsqrt" and node.name.endswith(_DECOMPOSED_MARK))):
        found.append(prefix + node.name)
  return found


def freeze(function):
  """A traced tf.function's graph with its variables turned into constants.

  Args:
    function: a tf.function with an input signature.
  Returns:
    (frozen GraphDef, input tensor names, output tensor names, the concrete
    function's structured outputs).
  """
  concrete = function.get_concrete_function()
  # Loops stay functional While ops: lowering them into v1 control flow
  # would not load back into a TF2 function.
  frozen = convert_to_constants.convert_variables_to_constants_v2(
      concrete, lower_control_flow=False)
  return (frozen.graph.as_graph_def(), [t.name for t in frozen.inputs],
          [t.name for t in frozen.outputs], concrete.structured_outputs)


def graph_function(graph_def, input_signature, input_names, output_names,
                   structured_outputs):
  """A tf.function running graph_def: the given inputs -> structured outputs.

  Args:
    graph_def: a frozen GraphDef (no variables).
    input_signature: the tf.TensorSpecs of the inputs, in order; their
      names become the argument names of a SavedModel signature.
    input_names, output_names: the graph's tensor names of the inputs and
      of the flattened outputs.
    structured_outputs: the nest the flat outputs are packed into.
  Returns:
    A tf.function with input_signature, traced.
  """
  wrapped = tf.compat.v1.wrap_function(
      lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
  graph = wrapped.graph
  pruned = wrapped.prune(
      feeds=[graph.as_graph_element(name) for name in input_names],
      fetches=[graph.as_graph_element(name) for name in output_names])

  @tf.function(input_signature=input_signature)
  def run(*inputs):
    return tf.nest.pack_sequence_as(structured_outputs,
                                    pruned(*inputs), expand_composites=True)

  run.get_concrete_function()
  return run


def fold_function(function):
  """The serving function with its batch norms folded (module docstring).

  Args:
    function: a tf.function with an input signature; its inputs keep their
      spec names.
  Returns:
    (a traced tf.function with the same input signature and outputs, and no
    variables; the FoldReport).
  """
  graph_def, inputs, outputs, structure = freeze(function)
  folded, report = fold_batch_norms(graph_def)
  # The kernels and biases that were folded are read by nothing now but
  # the function's control dependencies on its (frozen) variable reads;
  # those order nothing once the reads are constants. Left in, the old
  # values would be saved beside their folded copies.
  ops = {node.name: node.op for node in folded.node}
  for node in folded.node:
    keep = [name for name in node.input if not (
        name.startswith("^") and ops.get(name[1:]) in ("Const", "Identity"))]
    if len(keep) != len(node.input):
      del node.input[:]
      node.input.extend(keep)
  folded = tf.compat.v1.graph_util.extract_sub_graph(
      folded, [_node_name(name) for name in outputs])
  (logging.warning if report.not_folded else logging.info)(
      "%s", report.summary())
  return graph_function(folded, function.input_signature, inputs, outputs,
                        structure), report
