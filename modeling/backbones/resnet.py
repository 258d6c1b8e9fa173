"""ResNet: the scale-decreased baseline SpineNet is compared against.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), with
the stride of each downsampling bottleneck on its 3x3 conv (the "v1.5" layout
used by torchvision and Model Garden). The stem is SpineNet's: a 7x7 stride-2
conv of 64 filters, BN, activation, 3x3 stride-2 max pooling. Stages C2..C5
stack bottleneck blocks of 64, 128, 256, 512 inner filters (output 4x); the
first block of every stage projects its shortcut, and the first block of
C3..C5 has stride 2.

Choices where the papers leave a detail open (written down here as the
project rule):
- Stochastic depth: block k of the N blocks of the whole network (N = 16 for
  ResNet-50) drops its residual branch at init_rate * k / N, one linear ramp
  over all stages rather than one rate per stage.
- DropBlock, when enabled, follows every batch norm inside the blocks of
  stages C4 and C5 only (the DropBlock paper finds groups 3 and 4 of ResNet-50
  the ones that benefit); the stem, C2 and C3 never drop.
"""

import keras

from modeling.backbones.registry import register_backbone
from modeling.layers.blocks import BottleneckBlock
from modeling.layers.conv_bn import ConvBNAct
from modeling.layers.regularization import stochastic_depth_rate

# Bottleneck blocks per stage C2, C3, C4, C5.
RESNET_SPECS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

# Inner width of the bottleneck blocks of each stage (level); output is 4x.
STAGE_FILTERS = {2: 64, 3: 128, 4: 256, 5: 512}

STEM_FILTERS = 64

# Stages with DropBlock when dropblock_keep_prob is set.
DROPBLOCK_LEVELS = (4, 5)

MIN_LEVEL, MAX_LEVEL = 2, 5


def _check_model_id(model_id):
  """Returns model_id as an int depth, or raises ValueError naming the choices."""
  try:
    depth = int(model_id)
  except (TypeError, ValueError):
    depth = None
  if depth not in RESNET_SPECS:
    raise ValueError(f"Unknown ResNet model_id {model_id!r}; expected one of "
                     f"{sorted(RESNET_SPECS)}.")
  return depth


@keras.saving.register_keras_serializable(package="spinenet")
class ResNet(keras.Model):
  """Scale-decreased ResNet backbone (no classifier).

  Call: images [batch, H, W, 3] float -> dict str(level) -> [batch,
  ceil(H / 2^level), ceil(W / 2^level), 256 * 2^(level - 2)] for levels
  min_level..max_level (C2: 256, C3: 512, C4: 1024, C5: 2048 channels).

  Args:
    input_shape: (H, W, 3); H and W may be None for a size-agnostic model.
    model_id: depth, 50, 101 or 152.
    min_level, max_level: returned endpoints, within 2..5.
    init_stochastic_depth_rate: drop rate of the last block (0 = off); see
      the module docstring for the ramp.
    activation: "relu", "swish" or "hard_swish".
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
    dropblock_keep_prob, dropblock_size: DropBlock in stages C4 and C5
      (keep_prob None = off).
  Raises:
    ValueError: for an unknown model_id or a level range outside 2..5.
  """

  def __init__(self, input_shape=(640, 640, 3), model_id=50, min_level=2,
               max_level=5, init_stochastic_depth_rate=0.0, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               dropblock_keep_prob=None, dropblock_size=3, name="resnet"):
    depth = _check_model_id(model_id)
    if not MIN_LEVEL <= min_level <= max_level <= MAX_LEVEL:
      raise ValueError(
          f"Impossible ResNet level range min_level={min_level}, max_level="
          f"{max_level}: ResNet provides levels {MIN_LEVEL}..{MAX_LEVEL}, so "
          f"need {MIN_LEVEL} <= min_level <= max_level <= {MAX_LEVEL}.")
    input_shape = tuple(input_shape)
    bn = dict(use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
              norm_epsilon=norm_epsilon)
    block_counts = RESNET_SPECS[depth]
    num_blocks = sum(block_counts)

    inputs = keras.Input(shape=input_shape, name="images")
    x = ConvBNAct(STEM_FILTERS, 7, 2, activation, name="stem_conv", **bn)(inputs)
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)

    endpoints = {}
    block_index = 0
    for level, count in zip(range(MIN_LEVEL, MAX_LEVEL + 1), block_counts):
      dropblock = {}
      if dropblock_keep_prob is not None and level in DROPBLOCK_LEVELS:
        dropblock = dict(dropblock_keep_prob=dropblock_keep_prob,
                         dropblock_size=dropblock_size)
      for i in range(count):
        block_index += 1
        x = BottleneckBlock(
            STAGE_FILTERS[level],
            strides=2 if (i == 0 and level > MIN_LEVEL) else 1,
            use_projection=(i == 0),
            stochastic_depth_rate=stochastic_depth_rate(
                init_stochastic_depth_rate, block_index, num_blocks),
            activation=activation, name=f"c{level}_block_{i + 1}",
            **bn, **dropblock)(x)
      endpoints[str(level)] = x

    outputs = {str(level): endpoints[str(level)]
               for level in range(min_level, max_level + 1)}
    super().__init__(inputs=inputs, outputs=outputs, name=name)
    self._resnet_config = dict(
        input_shape=input_shape, model_id=depth, min_level=min_level,
        max_level=max_level,
        init_stochastic_depth_rate=init_stochastic_depth_rate,
        activation=activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size)
    self.model_id = depth
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
    return dict(self._resnet_config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@register_backbone("resnet")
def resnet(input_shape=(640, 640, 3), model_id=50, min_level=2, max_level=5,
           activation="relu", use_sync_bn=False, norm_momentum=0.99,
           norm_epsilon=1e-3, init_stochastic_depth_rate=0.0,
           dropblock_keep_prob=None, dropblock_size=3, name=None):
  """Builds ResNet-`model_id` (50, 101, 152), endpoints C2..C5 by default.

  Arguments as ResNet's; name None gives "resnet<depth>".
  Raises:
    ValueError: for an unknown model_id or level range (see ResNet).
  """
  depth = _check_model_id(model_id)
  return ResNet(input_shape=input_shape, model_id=depth, min_level=min_level,
                max_level=max_level, activation=activation,
                use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
                norm_epsilon=norm_epsilon,
                init_stochastic_depth_rate=init_stochastic_depth_rate,
                dropblock_keep_prob=dropblock_keep_prob,
                dropblock_size=dropblock_size, name=name or f"resnet{depth}")
