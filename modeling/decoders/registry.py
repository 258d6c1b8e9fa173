"""Decoder registry: name -> builder, filled by `@register_decoder` in each module.

Contract: a decoder builder is called as
`builder(input_specs, min_level=..., max_level=..., **kwargs)`, where
input_specs is a dict str(level) -> (batch, height, width, channels) describing
the backbone's outputs (a backbone's `output_specs`; batch may be None). It
returns a keras.Model that takes the backbone's whole output dict str(level) ->
tensor and returns a dict str(level) -> [batch, H / 2^level, W / 2^level,
channels] tensor for every level min_level..max_level. A builder whose levels
the backbone cannot feed raises ValueError naming both level ranges. Builders
list their arguments explicitly (no **kwargs); those of
modeling.backbones.registry.SHARED_OPTIONS that a builder takes (batch norm,
activation) are supplied by the caller, as for the backbone.

The package imports every decoder module (modeling/decoders/__init__.py), so
`from modeling.decoders.registry import DECODERS` sees every decoder.
"""

from modeling.registry import register

REQUIRED_ARGS = ("input_specs", "min_level", "max_level")

DECODERS = {}


def register_decoder(name):
  """Registers a decoder builder under `name`.

  Raises:
    ValueError: `name` is already registered.
    TypeError: the builder takes **kwargs or lacks input_specs, min_level or
      max_level.
  """
  return register(DECODERS, "decoder", name, REQUIRED_ARGS)
