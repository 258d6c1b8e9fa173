"""The layer tower of the heads: (conv or dense -> batch norm -> activation) x n.

Every head of this repository starts with such a stack: the RetinaNet class
and box subnets (Lin et al., "Focal Loss for Dense Object Detection", 2017,
Sec. 4, Fig. 3), the RPN (Ren et al., "Faster R-CNN", 2015, Sec. 3.1), the
Fast R-CNN "4conv1fc" box head and the Mask R-CNN mask head (He et al.,
"Mask R-CNN", 2017, Sec. 3 and Fig. 4), and the segmentation head
(Eff-SpineNet paper, Sec. 4.3). `ConvTower` is that stack, written once;
the heads differ only in its parameters:

  head          layers            init         bias  batch norm
  retinanet     3x3 (separable)   N(0, 0.01)   yes   one per level and conv
  rpn           3x3 (separable)   N(0, 0.01)   yes   one per level and conv
  fast_rcnn     3x3 (separable)   He fan-in    yes   one per conv
                + dense (the FCs) He fan-in    yes   one per FC
  mask_head     3x3 (separable)   He fan-in    yes   one per conv
  segmentation  3x3 (separable)   He fan-in    no    one per conv

Per-level batch norm (SpineNet / Model Garden detection heads): the conv
weights are shared by every level, but each level has batch norms of its
own, because feature statistics differ from level to level.

A ConvTower is not a Keras layer: its convs and batch norms belong to the
head that creates it, which tracks them under the attribute names it has
always used (modeling/layers/tracking.py), so the checkpoint keys and
variable paths of every head are those of the heads written before the
tower existed (tests/modeling/test_head_tower.py checks them).
"""

import keras

from modeling.layers import activations
from modeling.layers.conv_bn import batch_norm, kernel_initializer

LAYER_KINDS = ("conv3x3", "dense")


def _initializer(stddev):
  """He fan-in (stddev None) or N(0, stddev); a fresh object each call."""
  if stddev is None:
    return kernel_initializer()
  return keras.initializers.RandomNormal(stddev=stddev)


def conv3x3(filters, name, use_separable_conv=False, stddev=None,
            depthwise_stddev=0.01, use_bias=True, bias=0.0):
  """One 3x3 'same' conv, plain or separable, as the heads initialise it.

  Args:
    filters: output channels.
    name: layer name (part of the checkpoint key; keep it stable).
    use_separable_conv: SeparableConv2D (depthwise 3x3 + pointwise 1x1)
      instead of Conv2D.
    stddev: None: He fan-in initialisation of every kernel
      (modeling.layers.conv_bn.kernel_initializer); a float: the kernel (the
      pointwise kernel when separable) is N(0, stddev) and the depthwise
      kernel N(0, depthwise_stddev), as in the RetinaNet and RPN heads.
    depthwise_stddev: see stddev.
    use_bias: whether the conv has a bias (the detection heads keep it
      before batch norm, as Model Garden does; the segmentation head not).
    bias: initial bias value.
  Returns:
    keras.layers.Conv2D or keras.layers.SeparableConv2D.
  """
  bias_args = {}
  if use_bias:
    bias_args["bias_initializer"] = keras.initializers.Constant(bias)
  if use_separable_conv:
    depthwise = (kernel_initializer() if stddev is None else
                 keras.initializers.RandomNormal(stddev=depthwise_stddev))
    return keras.layers.SeparableConv2D(
        filters, 3, padding="same", use_bias=use_bias,
        depthwise_initializer=depthwise,
        pointwise_initializer=_initializer(stddev), name=name, **bias_args)
  return keras.layers.Conv2D(
      filters, 3, padding="same", use_bias=use_bias,
      kernel_initializer=_initializer(stddev), name=name, **bias_args)


class ConvTower:
  """num_layers x (3x3 conv or dense layer -> batch norm -> activation).

  Input of __call__: [batch, height, width, C] for "conv3x3" layers (any
  C; the output has num_filters channels and the same spatial size), or
  [batch, features] for "dense" layers (output [batch, num_filters]). With
  num_layers = 0 the input is returned unchanged.

  Args:
    num_layers: layers in the tower, >= 0.
    num_filters: channels (or features) of every layer.
    layer_name: layer i is named f"{layer_name}_{i}".
    norm_name: batch norm names: f"{norm_name}_{i}" without levels,
      f"{norm_name}_{level}_{i}" with them.
    kind: "conv3x3" or "dense".
    use_separable_conv: separable 3x3 convs ("conv3x3" only).
    stddev, depthwise_stddev, use_bias: initialisation and bias of the
      layers, see conv3x3 (dense layers: He fan-in or N(0, stddev)).
    levels: None: one batch norm per layer. A sequence of str levels: one
      batch norm per (level, layer), level major, and __call__ takes the
      level; the layers' weights are shared by all levels.
    activation: "relu", "swish" or "hard_swish", after each batch norm.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  Attributes:
    layers: the convs (or dense layers), in order.
    norms: the batch norms, level major.
  Raises:
    ValueError: for an unknown kind, separable dense layers, negative
      num_layers or an unknown activation.
  """

  def __init__(self, num_layers, num_filters, layer_name, norm_name,
               kind="conv3x3", use_separable_conv=False, stddev=None,
               depthwise_stddev=0.01, use_bias=True, levels=None,
               activation="relu", use_sync_bn=False, norm_momentum=0.99,
               norm_epsilon=1e-3):
    if kind not in LAYER_KINDS:
      raise ValueError(f"ConvTower {layer_name!r}: kind must be one of "
                       f"{LAYER_KINDS}, got {kind!r}.")
    if kind == "dense" and use_separable_conv:
      raise ValueError(f"ConvTower {layer_name!r}: dense layers cannot be "
                       "separable convs; use_separable_conv must be False.")
    if int(num_layers) != num_layers or num_layers < 0:
      raise ValueError(f"ConvTower {layer_name!r}: num_layers must be an "
                       f"integer >= 0, got {num_layers!r}.")
    self.num_layers = int(num_layers)
    self.num_filters = int(num_filters)
    self.kind = kind
    self.levels = None if levels is None else [str(l) for l in levels]
    self.activation = activations.check_activation(activation)
    if kind == "dense":
      self.layers = [
          keras.layers.Dense(self.num_filters,
                             kernel_initializer=_initializer(stddev),
                             use_bias=use_bias, bias_initializer="zeros",
                             name=f"{layer_name}_{i}")
          for i in range(self.num_layers)]
    else:
      self.layers = [
          conv3x3(self.num_filters, f"{layer_name}_{i}", use_separable_conv,
                  stddev, depthwise_stddev, use_bias)
          for i in range(self.num_layers)]
    if self.levels is None:
      names = [f"{norm_name}_{i}" for i in range(self.num_layers)]
    else:
      names = [f"{norm_name}_{level}_{i}" for level in self.levels
               for i in range(self.num_layers)]
    self.norms = [batch_norm(norm_momentum, norm_epsilon, use_sync_bn,
                             name=name) for name in names]

  def _norm(self, level, i):
    if self.levels is None:
      return self.norms[i]
    if level is None or str(level) not in self.levels:
      raise ValueError(f"ConvTower: a tower with per-level batch norm needs "
                       f"one of the levels {self.levels}, got {level!r}.")
    return self.norms[self.levels.index(str(level)) * self.num_layers + i]

  def build(self, input_shape):
    """Builds the layers and batch norms; returns the output shape.

    Args:
      input_shape: tuple ending in the channels (features) of the input.
    Returns:
      input_shape with its last entry num_filters (unchanged without
      layers).
    """
    shape = tuple(input_shape)
    for i, layer in enumerate(self.layers):
      layer.build(shape)
      shape = shape[:-1] + (self.num_filters,)
      for level in self.levels or (None,):
        self._norm(level, i).build(shape)
    return shape

  def __call__(self, x, training=None, level=None):
    """Applies the tower; `level` picks the batch norms when per level."""
    act = activations.get_activation(self.activation)
    for i, layer in enumerate(self.layers):
      x = act(self._norm(level, i)(layer(x), training=training))
    return x
