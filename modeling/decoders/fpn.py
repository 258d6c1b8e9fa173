"""Feature Pyramid Network (Lin et al. 2017), in its RetinaNet form.

Built on the backbone levels min_level..L, L = min(max_level, the backbone's
highest level):
- lateral 1x1 convs (with bias) bring each backbone level to num_filters;
- top-down pathway: from level L down, the coarser merged map is upsampled 2x
  (nearest) and added to the lateral;
- a 3x3 output conv (with bias) on each merged level;
- levels above L (RetinaNet's P6, P7): a 3x3 stride-2 conv on the level below
  it, with the activation in between from P7 on (P6 from P5, P7 from
  activation(P6));
- batch norm, without activation, on every output level.

Choices where the papers leave a detail open (written down here as the
project rule, following the public Model Garden RetinaNet FPN):
- P6 is computed from the P5 output, not from C5 (Lin et al. 2017 RetinaNet
  uses C5), and the stride-2 convs read the conv outputs before their batch
  norm: every output level has its batch norm applied last.
- use_separable_conv makes the 3x3 convs (output and stride-2) keras
  SeparableConv2D; the lateral convs stay plain 1x1 convs.
"""

import keras

from modeling.decoders.identity import (check_levels, make_inputs,
                                        parse_input_specs)
from modeling.decoders.registry import register_decoder
from modeling.layers import activations
from modeling.layers.conv_bn import batch_norm, kernel_initializer
from modeling.layers.resampling import NearestUpsampling


@keras.saving.register_keras_serializable(package="spinenet")
class FPN(keras.Model):
  """RetinaNet-style feature pyramid.

  Call: the backbone's output dict str(level) -> [batch, H / 2^level,
  W / 2^level, C_level] (all of its levels) -> dict str(level) -> [batch,
  H / 2^level, W / 2^level, num_filters] for levels min_level..max_level.

  Args:
    input_specs: dict str(level) -> (batch, height, width, channels) of the
      backbone outputs (e.g. backbone.output_specs); batch may be None.
    min_level, max_level: output levels. The backbone must provide levels
      min_level..min(max_level, its highest level).
    num_filters: width of every output level.
    use_separable_conv: SeparableConv2D for the 3x3 convs.
    activation: "relu", "swish" or "hard_swish"; used between the stride-2
      convs of the levels above the backbone.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  Raises:
    ValueError: naming the FPN's and the backbone's level ranges when a level
      the FPN needs is missing, or for malformed input_specs.
  """

  def __init__(self, input_specs, min_level=3, max_level=7, num_filters=256,
               use_separable_conv=False, activation="relu", use_sync_bn=False,
               norm_momentum=0.99, norm_epsilon=1e-3, name="fpn"):
    specs = parse_input_specs(input_specs, "FPN")
    activation = activations.check_activation(activation)
    top = max(specs)
    # The lateral levels; when min_level is above every backbone level, the
    # FPN still needs min_level itself.
    backbone_max = max(min(max_level, top), min_level)
    lateral_levels = list(range(min_level, backbone_max + 1))
    check_levels("FPN", lateral_levels, specs, min_level, max_level)

    def conv3x3(strides, layer_name):
      if use_separable_conv:
        return keras.layers.SeparableConv2D(
            num_filters, 3, strides=strides, padding="same",
            depthwise_initializer=kernel_initializer(),
            pointwise_initializer=kernel_initializer(), name=layer_name)
      return keras.layers.Conv2D(
          num_filters, 3, strides=strides, padding="same",
          kernel_initializer=kernel_initializer(), name=layer_name)

    inputs = make_inputs(specs)
    laterals = {
        level: keras.layers.Conv2D(
            num_filters, 1, padding="same",
            kernel_initializer=kernel_initializer(),
            name=f"lateral_{level}")(inputs[str(level)])
        for level in lateral_levels}

    feats = {backbone_max: laterals[backbone_max]}
    for level in range(backbone_max - 1, min_level - 1, -1):
      height, width = laterals[level].shape[1:3]
      if height is not None and width is not None:
        # A fixed target size also covers odd sizes (ceil arithmetic).
        upsample = NearestUpsampling((height, width), name=f"upsample_{level}")
      else:
        upsample = keras.layers.UpSampling2D(
            2, interpolation="nearest", name=f"upsample_{level}")
      feats[level] = keras.layers.Add(name=f"merge_{level}")(
          [upsample(feats[level + 1]), laterals[level]])

    for level in lateral_levels:
      feats[level] = conv3x3(1, f"output_conv_{level}")(feats[level])

    act = activations.get_activation(activation)
    for level in range(backbone_max + 1, max_level + 1):
      x = feats[level - 1]
      if level > backbone_max + 1:
        x = keras.layers.Activation(act, name=f"activation_{level}")(x)
      feats[level] = conv3x3(2, f"coarser_conv_{level}")(x)

    outputs = {
        str(level): batch_norm(norm_momentum, norm_epsilon, use_sync_bn,
                               name=f"norm_{level}")(feats[level])
        for level in range(min_level, max_level + 1)}
    super().__init__(inputs=inputs, outputs=outputs, name=name)
    self._fpn_config = dict(
        input_specs={str(level): shape for level, shape in specs.items()},
        min_level=min_level, max_level=max_level, num_filters=num_filters,
        use_separable_conv=use_separable_conv, activation=activation,
        use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon)
    self.min_level = min_level
    self.max_level = max_level
    self.num_filters = num_filters

  @property
  def output_specs(self):
    """dict str(level) -> output shape, batch dimension None."""
    return {k: tuple(v.shape) for k, v in self.output.items()}

  def get_config(self):
    return dict(self._fpn_config, name=self.name)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


@register_decoder("fpn")
def fpn(input_specs, min_level=3, max_level=7, num_filters=256,
        use_separable_conv=False, activation="relu", use_sync_bn=False,
        norm_momentum=0.99, norm_epsilon=1e-3):
  """Builds an FPN on a backbone whose outputs are `input_specs`.

  See FPN for the arguments. Returns a keras.Model mapping the backbone's
  output dict to dict str(level) -> [batch, H / 2^level, W / 2^level,
  num_filters] for levels min_level..max_level.
  """
  return FPN(input_specs, min_level=min_level, max_level=max_level,
             num_filters=num_filters, use_separable_conv=use_separable_conv,
             activation=activation, use_sync_bn=use_sync_bn,
             norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
