"""Everything gin can name: backbone/decoder builders, tasks, dataset sources.

Importing this module registers them. gin binds these builder functions and the
task classes, never Keras layer classes (DESIGN.md, Configuration). Options
every network shares are bound once, in `norm_activation` and
`regularization`, so that a protocol file can change them for any backbone:

    norm_activation.activation = 'swish'
    regularization.init_stochastic_depth_rate = 0.2
"""

import os

import gin

from modeling.backbones import registry as backbone_registry
from modeling.backbones import spinenet as spinenet_lib
from modeling.decoders import registry as decoder_registry

# `include 'configs/...'` lines resolve from the repository root, from any cwd.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
gin.add_config_file_search_path(REPO_ROOT)

COMMON_ARGS = ("input_shape", "activation", "use_sync_bn", "norm_momentum",
               "norm_epsilon", "init_stochastic_depth_rate",
               "dropblock_keep_prob", "dropblock_size")


@gin.configurable
def norm_activation(activation="relu", use_sync_bn=True, norm_momentum=0.99,
                    norm_epsilon=1e-3):
  """Activation and batch-norm options shared by backbone, decoder and heads."""
  return dict(activation=activation, use_sync_bn=use_sync_bn,
              norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)


@gin.configurable
def regularization(init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
                   dropblock_size=3):
  """Stochastic depth and DropBlock options for the backbone (protocols A, C)."""
  return dict(init_stochastic_depth_rate=init_stochastic_depth_rate,
              dropblock_keep_prob=dropblock_keep_prob,
              dropblock_size=dropblock_size)


@gin.configurable("spinenet", denylist=COMMON_ARGS)
def spinenet_backbone(input_shape, model_id="49", block_specs=None,
                      min_level=3, max_level=7, endpoints_num_filters=None,
                      filter_size_scale=None, resample_alpha=None,
                      block_repeats=None, fusion_mode="sum",
                      fusion_epsilon=1e-3, block_fn_override=None,
                      resnext_base_width=4, num_init_blocks=2,
                      require_divisible_input=True, activation="relu",
                      use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
                      init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
                      dropblock_size=3):
  """SpineNet-`model_id`; a scaling argument left None comes from the model id.

  The signature is explicit (no **kwargs) so that gin rejects a misspelt
  binding at parse time; the shared options come from norm_activation and
  regularization.
  """
  overrides = dict(
      endpoints_num_filters=endpoints_num_filters,
      filter_size_scale=filter_size_scale, resample_alpha=resample_alpha,
      block_repeats=block_repeats, block_specs=block_specs)
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return spinenet_lib.spinenet(
      input_shape, model_id, min_level=min_level, max_level=max_level,
      fusion_mode=fusion_mode, fusion_epsilon=fusion_epsilon,
      block_fn_override=block_fn_override,
      resnext_base_width=resnext_base_width, num_init_blocks=num_init_blocks,
      require_divisible_input=require_divisible_input, activation=activation,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
      **overrides)


@gin.configurable("resnet", denylist=COMMON_ARGS)
def resnet_backbone(input_shape, model_id=50, min_level=2, max_level=5,
                    activation="relu", use_sync_bn=False, norm_momentum=0.99,
                    norm_epsilon=1e-3, init_stochastic_depth_rate=0.0,
                    dropblock_keep_prob=None, dropblock_size=3):
  """ResNet-`model_id` (50, 101, 152): endpoints C2..C5 by default."""
  return backbone_registry.BACKBONES["resnet"](
      input_shape, model_id, min_level=min_level, max_level=max_level,
      activation=activation, use_sync_bn=use_sync_bn,
      norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size)


# --- MBConv scale-permuted backbones (issue 5): SpineNet-MBConv, Eff-SpineNet.


@gin.configurable("spinenet_mbconv", denylist=COMMON_ARGS)
def spinenet_mbconv_backbone(input_shape, model_id="49", block_specs=None,
                             min_level=3, max_level=7,
                             endpoints_num_filters=None,
                             filter_size_scale=None, block_filters=None,
                             block_repeats=1, expand_ratio=6, kernel_size=3,
                             se_ratio=0.2, fusion_mode="sum",
                             fusion_epsilon=1e-3,
                             downsample_mode="strided_conv",
                             require_divisible_input=True, activation="relu",
                             use_sync_bn=False, norm_momentum=0.99,
                             norm_epsilon=1e-3,
                             init_stochastic_depth_rate=0.0,
                             dropblock_keep_prob=None, dropblock_size=3):
  """SpineNet-`model_id` with MBConv blocks (49, 49S, 49XS, 49XXS).

  Scaling arguments left None come from the model id; explicit signature so
  gin rejects a misspelt binding.
  """
  overrides = dict(endpoints_num_filters=endpoints_num_filters,
                   filter_size_scale=filter_size_scale,
                   block_specs=block_specs)
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return backbone_registry.BACKBONES["spinenet_mbconv"](
      input_shape, model_id, min_level=min_level, max_level=max_level,
      block_filters=block_filters, block_repeats=block_repeats,
      expand_ratio=expand_ratio, kernel_size=kernel_size, se_ratio=se_ratio,
      fusion_mode=fusion_mode, fusion_epsilon=fusion_epsilon,
      downsample_mode=downsample_mode,
      require_divisible_input=require_divisible_input, activation=activation,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
      **overrides)


@gin.configurable("eff_spinenet", denylist=COMMON_ARGS)
def eff_spinenet_backbone(input_shape, model_id="D0", block_filters=None,
                          feature_multiplier=None, block_repeats=None,
                          endpoints_num_filters=None, fusion_mode="weighted",
                          fusion_epsilon=1e-3,
                          downsample_mode="space_to_depth", min_level=3,
                          max_level=7, expand_ratio=6, kernel_size=3,
                          se_ratio=0.2, stem_filters=None,
                          require_divisible_input=True, activation="relu",
                          use_sync_bn=False, norm_momentum=0.99,
                          norm_epsilon=1e-3, init_stochastic_depth_rate=0.0,
                          dropblock_keep_prob=None, dropblock_size=3):
  """Eff-SpineNet-`model_id` (M0..M2, D0..D2) or SP-EfficientNet-B0 ("B0").

  block_filters: 18 Table-1 widths before the feature multiplier (what
  `python -m official.resource_distribution` writes); None takes Table 1.
  fusion_mode ("weighted"/"sum") and downsample_mode
  ("space_to_depth"/"strided_conv") are the Table 9 switches.
  """
  extra = {} if stem_filters is None else dict(stem_filters=stem_filters)
  return backbone_registry.BACKBONES["eff_spinenet"](
      input_shape, model_id, block_filters=block_filters,
      feature_multiplier=feature_multiplier, block_repeats=block_repeats,
      endpoints_num_filters=endpoints_num_filters, fusion_mode=fusion_mode,
      fusion_epsilon=fusion_epsilon, downsample_mode=downsample_mode,
      min_level=min_level, max_level=max_level, expand_ratio=expand_ratio,
      kernel_size=kernel_size, se_ratio=se_ratio,
      require_divisible_input=require_divisible_input, activation=activation,
      use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
      norm_epsilon=norm_epsilon,
      init_stochastic_depth_rate=init_stochastic_depth_rate,
      dropblock_keep_prob=dropblock_keep_prob, dropblock_size=dropblock_size,
      **extra)


# --- end of the MBConv scale-permuted backbones.


@gin.configurable("fpn", denylist=("input_specs", "activation",
                                    "use_sync_bn", "norm_momentum",
                                    "norm_epsilon"))
def fpn_decoder(input_specs, min_level=3, max_level=7, num_filters=256,
                use_separable_conv=False, activation="relu", use_sync_bn=False,
                norm_momentum=0.99, norm_epsilon=1e-3):
  """FPN producing P{min_level}..P{max_level} of width num_filters."""
  return decoder_registry.DECODERS["fpn"](
      input_specs, min_level=min_level, max_level=max_level,
      num_filters=num_filters, use_separable_conv=use_separable_conv,
      activation=activation, use_sync_bn=use_sync_bn,
      norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)


@gin.configurable("identity_decoder", denylist=("input_specs",))
def identity_decoder(input_specs, min_level=3, max_level=7):
  """The backbone's levels min..max, untouched (SpineNet needs no decoder)."""
  return decoder_registry.DECODERS["identity"](
      input_specs, min_level=min_level, max_level=max_level)


def build_backbone(backbone_fn, input_shape):
  """Calls a gin-bound backbone builder with the shared options."""
  return backbone_fn(input_shape=tuple(input_shape), **norm_activation(),
                     **regularization())


@gin.configurable
def multilevel_features(input_shape, backbone=gin.REQUIRED, decoder=None):
  """Backbone and decoder for a dense-prediction model.

  Returns:
    (backbone, decoder): decoder maps the backbone's output dict to dict
    str(level) -> features (the identity when `decoder` is None).
  """
  backbone_model = build_backbone(backbone, input_shape)
  decoder_fn = decoder or identity_decoder
  return backbone_model, decoder_fn(input_specs=backbone_model.output_specs,
                                    **_decoder_common(decoder_fn))


def _decoder_common(decoder_fn):
  if decoder_fn is identity_decoder:
    return {}
  return norm_activation()


# The trainer, optimizer and schedule, and the tasks, register themselves with
# gin when imported.
# pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from official.core import trainer
from official.tasks import classification
from official.tasks import maskrcnn
from official.tasks import retinanet
from official.tasks import segmentation


@gin.configurable
def experiment(task=gin.REQUIRED):
  """The experiment's task: every experiment file binds `experiment.task`."""
  return task
