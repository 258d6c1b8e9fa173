"""SP-NAS backbones: SerialNet and SPNet (Jiang et al. 2020) as Keras models.

The architecture is data (modeling/backbones/spnet_spec.py): a serial code
such as "BNB(111,d111,d11111,d11)" with stable block ids, and optionally one
subnet count per stage.

Serial network (SP-NAS Sec. 3.1):
- Stem: two 3x3 stride-2 convs of `base_channels` filters, each with batch
  norm and activation ("following [16, 42]"), to 1/4 of the input.
- Stage s (1-based) is at level s + 1. Its first block has stride 2, except
  in stage 1. Blocks are Table 2's: BB two 3x3 convs of n; BNB 1x1 n, 3x3 n
  (strided), 1x1 4n; XB 1x1 2n, 3x3 2n in 32 groups (strided), 1x1 4n; n the
  current base, doubled by a "d" block.
- Shortcut rule (what lets swap keep every weight): a block has a projection
  shortcut (1x1 conv + batch norm, with the block's stride) exactly when its
  input and output channels differ; a strided block whose channels do not
  change subsamples its input (modeling/layers/blocks.py) and has no
  shortcut weights. So a block's variables never depend on its stride.
- The last batch norm of every residual branch starts at scale 0 (Goyal et
  al. 2017): a block inserted by spnet_spec.expand is then the identity
  until trained (IdMorph, Sec. 3.1). This holds for "relu", which is the
  identity on the previous block's (rectified) output; with "swish" an
  inserted block applies one more swish.

Parallel network (Sec. 3.2): stage l gets k_l copies p_l^1..p_l^k of its
blocks (same ids, weights inherited from the serial stage through
spnet_spec.INHERITANCE_ALIASES) and
  x_l^k = p_l^k(x_{l-1}^k + up(x_l^{k-1})),  x_l^0 = s_l(x_{l-1}^0),
with up = a 1x1 conv to x_{l-1}'s channels (kernel and bias initialised to
zero, so the network equals its SerialNet at initialisation) and nearest
upsampling to x_{l-1}'s resolution (x2, or x1 for stage 1, whose input is
the stem output at the same level). The paper's prose reverses the
direction ("the output features of the subnet p_l^k becomes the input of
p_l^{k-1}"); this follows its equation. Choices where the paper is silent:
- x_{l-1}^k of a stage l - 1 with fewer than k copies is its last copy's
  output (the serial x_{l-1}^0 when it has none); x_0^k is the stem output.
- The serial chain is untouched: s_l reads x_{l-1}^0.
- Level l + 1 gives the decoder x_l^{k_l}, the output of stage l's last copy.

Regularization choices (as modeling/backbones/resnet.py):
- Stochastic depth: serial block k of N (network order) drops its branch at
  init_rate * k / N; a parallel copy of a block uses that block's rate.
- DropBlock, when enabled, follows every batch norm of the blocks at levels
  4 and above (the DropBlock paper finds ResNet-50's groups 3 and 4, levels
  4 and 5, the ones that benefit; SP-NAS's extra stages are coarser still).

Layer names are the weight-inheritance interface: block id b is "block<b>",
copy k of block b is "sub<k>_block<b>", the up conv into copy k of stage l is
"sub<k>_stage<l>_up" (with "sub<k>_stage<l>_upsample" and
"sub<k>_stage<l>_add", which hold no weights). Every layer is named: an
automatic name ("conv2d_3") depends on what the process built before.
"""

import keras
from keras import ops

from modeling.backbones import spnet_spec
from modeling.backbones.registry import register_backbone
from modeling.layers.blocks import (BottleneckBlock, ResidualBlock,
                                    ResNeXtBlock)
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.regularization import stochastic_depth_rate

DEFAULT_SERIAL = spnet_spec.KNOWN_SERIAL["resnet50"]

BLOCK_CLASSES = {"BB": ResidualBlock, "BNB": BottleneckBlock,
                 "XB": ResNeXtBlock}

# ResNeXtBlock's inner width is cardinality * base_width * n / 64: with
# base_width 4 that is Table 2's 2n at 32 groups.
XB_BASE_WIDTH = 4

DROPBLOCK_MIN_LEVEL = 4

MIN_LEVEL = 2


@keras.saving.register_keras_serializable(package="spinenet")
class SPNetUpsample(keras.layers.Layer):
  """Nearest upsampling of x by an integer factor, cropped to a reference.

  Call: [x [batch, h, w, c], reference [batch, H, W, c']] -> [batch, H, W,
  c], with H <= factor * h (the crop removes the extra row or column when
  the reference's side is odd: with 'same' padding h = ceil(H / factor)).
  Works for unknown spatial sizes.

  Args:
    factor: the integer upsampling factor (2, or 1 for no resampling).
  """

  def __init__(self, factor=2, **kwargs):
    super().__init__(**kwargs)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
      raise ValueError(f"{self.name}: factor={factor!r}; expected a positive "
                       f"int.")
    self.factor = factor

  def call(self, inputs):
    x, reference = inputs
    if self.factor > 1:
      x = ops.repeat(ops.repeat(x, self.factor, axis=1), self.factor, axis=2)
    height, width = ops.shape(reference)[1], ops.shape(reference)[2]
    return x[:, :height, :width, :]

  def compute_output_shape(self, input_shape):
    x_shape, reference_shape = input_shape
    return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])

  def get_config(self):
    config = super().get_config()
    config.update(factor=self.factor)
    return config


def _check_base_channels(spec, base_channels):
  """Raises ValueError unless base_channels fits the spec's block type."""
  if (isinstance(base_channels, bool) or not isinstance(base_channels, int) or
      base_channels < 1):
    raise ValueError(f"base_channels={base_channels!r}; expected a positive "
                     f"int (the stem width, SP-NAS Sec. 3.1).")
  if spec.block_type == "XB" and (2 * base_channels) % spnet_spec.XB_GROUPS:
    raise ValueError(
        f"base_channels={base_channels} with XB blocks: the grouped 3x3 conv "
        f"has 2n = {2 * base_channels} channels in {spnet_spec.XB_GROUPS} "
        f"groups (SP-NAS Table 2); expected base_channels a multiple of "
        f"{spnet_spec.XB_GROUPS // 2}.")


def _level_range(spec, min_level, max_level):
  """(min_level, max_level) resolved and checked against the spec's levels."""
  top = spec.num_stages + 1
  if max_level is None:
    max_level = top
  for name, value in (("min_level", min_level), ("max_level", max_level)):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{name}={value!r}; expected an int in "
                       f"{MIN_LEVEL}..{top}.")
  if not MIN_LEVEL <= min_level <= max_level <= top:
    raise ValueError(
        f"Impossible SPNet level range min_level={min_level}, max_level="
        f"{max_level}: {spec.code} has {spec.num_stages} stages at levels "
        f"{MIN_LEVEL}..{top}, so need {MIN_LEVEL} <= min_level <= max_level "
        f"<= {top}.")
  return min_level, max_level


@keras.saving.register_keras_serializable(package="spinenet")
class SPNet(keras.Model):
  """SerialNet / SPNet backbone (SP-NAS, Jiang et al. 2020), no classifier.

  Call: images [batch, H, W, 3] float, ImageNet-normalised -> dict
  str(level) -> [batch, ceil(H / 2^level), ceil(W / 2^level), C_level] for
  levels min_level..max_level; C_level is the output width of the stage at
  that level (spnet_spec.SerialSpec.level_channels).

  Args:
    input_shape: (H, W, 3); H and W may be None.
    serial: a serial code ("BNB(111,d111,d11111,d11)") or a SerialSpec.
    block_ids: one stable id per block (default 0..n-1); only with a code.
    parallel: None, or subnet counts per stage in 0..3 (a sequence or a code
      "(0,2,1,1,0)").
    base_channels: stem width, the first base n (a multiple of 16 for XB).
    min_level, max_level: returned levels, within 2..num_stages + 1
      (max_level None: the top).
    zero_init_residual: start every residual branch's last batch-norm scale
      at 0 (needed for expand to be an identity). Off, every weight of a
      freshly built network gets gradient on the first step, which is what
      tests/modeling/test_all_models.py checks.
    init_stochastic_depth_rate, activation, use_sync_bn, norm_momentum,
      norm_epsilon, dropblock_keep_prob, dropblock_size: see the module
      docstring and modeling/backbones/registry.py.
  Raises:
    ValueError: a bad serial code or block_ids, parallel of the wrong length
      or with counts outside 0..3, XB with base_channels not a multiple of
      16, or a level range outside the network's levels.
  """

  def __init__(self, input_shape=(640, 640, 3), serial=DEFAULT_SERIAL,
               block_ids=None, parallel=None, base_channels=64, min_level=2,
               max_level=None, zero_init_residual=True,
               init_stochastic_depth_rate=0.0, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               dropblock_keep_prob=None, dropblock_size=3, name="spnet"):
    spec = spnet_spec.as_serial_spec(serial, block_ids)
    counts = (spnet_spec.check_parallel(parallel, spec.num_stages)
              if parallel is not None else None)
    _check_base_channels(spec, base_channels)
    min_level, max_level = _level_range(spec, min_level, max_level)
    input_shape = tuple(input_shape)
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)
    infos = spec.blocks(base_channels)
    block_class = BLOCK_CLASSES[spec.block_type]
    extra = (dict(cardinality=spnet_spec.XB_GROUPS, base_width=XB_BASE_WIDTH)
             if spec.block_type == "XB" else {})

    def block(info, name):
      dropblock = {}
      if dropblock_keep_prob is not None and info.level >= DROPBLOCK_MIN_LEVEL:
        dropblock = dict(dropblock_keep_prob=dropblock_keep_prob,
                         dropblock_size=dropblock_size)
      return block_class(
          info.filters, strides=info.strides,
          use_projection=info.use_projection,
          stochastic_depth_rate=stochastic_depth_rate(
              init_stochastic_depth_rate, info.index + 1, len(infos)),
          activation=activation, zero_init_residual=zero_init_residual,
          name=name, **bn, **dropblock, **extra)

    inputs = keras.Input(shape=input_shape, name="images")
    x = ConvBNAct(base_channels, 3, 2, activation, name="stem_conv1",
                  **bn)(inputs)
    stem = ConvBNAct(base_channels, 3, 2, activation, name="stem_conv2",
                     **bn)(x)

    # copies[l][k] = x_l^k; copies[0] holds the stem output only.
    copies = [[stem]]
    for s in range(1, spec.num_stages + 1):
      stage_infos = infos[spec.stage_slice(s)]
      x = copies[s - 1][0]
      for info in stage_infos:
        x = block(info, f"block{info.block_id}")(x)
      stage = [x]
      for k in range(1, (counts[s - 1] if counts else 0) + 1):
        below = copies[s - 1][spnet_spec.feeding_copy(counts, s, k)]
        up = keras.layers.Conv2D(
            below.shape[-1], 1, use_bias=True, kernel_initializer="zeros",
            bias_initializer="zeros", name=f"sub{k}_stage{s}_up")(stage[-1])
        up = SPNetUpsample(2 if s > 1 else 1,
                           name=f"sub{k}_stage{s}_upsample")([up, below])
        x = keras.layers.Add(name=f"sub{k}_stage{s}_add")([below, up])
        for info in stage_infos:
          x = block(info, f"sub{k}_block{info.block_id}")(x)
        stage.append(x)
      copies.append(stage)

    outputs = {str(level): copies[level - 1][-1]
               for level in range(min_level, max_level + 1)}
    super().__init__(inputs=inputs, outputs=outputs, name=name)
    self._spnet_config = dict(
        input_shape=input_shape, serial=spec.code,
        block_ids=list(spec.block_ids),
        parallel=list(counts) if counts is not None else None,
        base_channels=base_channels, min_level=min_level, max_level=max_level,
        zero_init_residual=zero_init_residual,
        init_stochastic_depth_rate=init_stochastic_depth_rate,
        activation=activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size)
    self.serial_spec = spec
    self.parallel = counts
    self.base_channels = base_channels
    self.min_level = min_level
    self.max_level = max_level

  @property
  def output_specs(self):
    """dict str(level) -> output shape, batch dimension None.

    Use this (not `output_shape`, which Keras 3 returns as a list for a dict
    output) as the `input_specs` of a decoder.
    """
    return {k: tuple(v.shape) for k, v in self.output.items()}

  def get_config(self):
    return dict(self._spnet_config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@register_backbone("spnet")
def spnet(input_shape=(640, 640, 3), serial=DEFAULT_SERIAL, block_ids=None,
          parallel=None, base_channels=64, min_level=2, max_level=None,
          zero_init_residual=True, activation="relu", use_sync_bn=False,
          norm_momentum=0.99, norm_epsilon=1e-3,
          init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
          dropblock_size=3, name="spnet"):
  """Builds a SerialNet (parallel None) or SPNet; arguments as SPNet's.

  `serial` may also name a KNOWN_SERIAL entry ("resnet50", "serialnet_voc").

  Raises:
    ValueError: see SPNet.
  """
  if isinstance(serial, str) and serial in spnet_spec.KNOWN_SERIAL:
    serial = spnet_spec.KNOWN_SERIAL[serial]
  return SPNet(input_shape=input_shape, serial=serial, block_ids=block_ids,
               parallel=parallel, base_channels=base_channels,
               min_level=min_level, max_level=max_level,
               zero_init_residual=zero_init_residual,
               init_stochastic_depth_rate=init_stochastic_depth_rate,
               activation=activation, use_sync_bn=use_sync_bn,
               norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
               dropblock_keep_prob=dropblock_keep_prob,
               dropblock_size=dropblock_size, name=name)
