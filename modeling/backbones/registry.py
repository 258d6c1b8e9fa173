"""Backbone registry: name -> builder, filled by `@register_backbone` in each module.

Contract: a backbone builder is called as builder(input_shape=(H, W, 3),
**kwargs) and returns a keras.Model that maps images [batch, H, W, 3]
(float, ImageNet-normalised) to dict str(level) -> [batch, ceil(H / 2^level),
ceil(W / 2^level), C_level] for consecutive levels min_level..max_level, and
has an `output_specs` property (dict str(level) -> shape, batch None) that a
decoder is built from. Every builder accepts the SHARED_OPTIONS below (the
runtime supplies them for every backbone alike: batch norm, activation,
stochastic depth, DropBlock) and lists every argument explicitly (no
**kwargs), so that a configuration naming an argument the builder does not
have is an error instead of being ignored.

The modules of this package register themselves when imported, and the
package imports them all (modeling/backbones/__init__.py), so
`from modeling.backbones.registry import BACKBONES` sees every backbone.
"""

from modeling.registry import register

# Arguments every backbone builder takes, and that the caller supplies.
SHARED_OPTIONS = ("input_shape", "activation", "use_sync_bn", "norm_momentum",
                  "norm_epsilon", "init_stochastic_depth_rate",
                  "dropblock_keep_prob", "dropblock_size")

BACKBONES = {}


def register_backbone(name):
  """Registers a backbone builder under `name` (the name configs use).

  Raises:
    ValueError: `name` is already registered.
    TypeError: the builder takes **kwargs or lacks a SHARED_OPTIONS argument.
  """
  return register(BACKBONES, "backbone", name, SHARED_OPTIONS)
