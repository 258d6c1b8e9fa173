"""Decoder registry: name -> builder.

Contract: a decoder builder is called as
`builder(input_specs, min_level=..., max_level=..., **kwargs)`, where
input_specs is a dict str(level) -> (batch, height, width, channels) describing
the backbone's outputs (a backbone's `output_specs`; batch may be None). It
returns a keras.Model that takes the backbone's whole output dict str(level) ->
tensor and returns a dict str(level) -> [batch, H / 2^level, W / 2^level,
channels] tensor for every level min_level..max_level. A builder whose levels
the backbone cannot feed raises ValueError naming both level ranges.
"""

from modeling.decoders.fpn import fpn
from modeling.decoders.identity import identity

DECODERS = {
    "identity": identity,
    "fpn": fpn,
}
