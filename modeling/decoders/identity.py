"""Identity decoder: the backbone's levels min..max, untouched.

Also holds the input-spec checks every decoder shares: the backbone output
dict it is built for, and the levels it needs from it.
"""

import keras

from modeling.decoders.registry import register_decoder
from modeling.levels import require_levels


def parse_input_specs(input_specs, decoder):
  """Validates a backbone output spec and returns {int level: shape tuple}.

  Args:
    input_specs: dict str(level) -> (batch, height, width, channels); batch
      (and height/width) may be None. A backbone's `output_specs` is one.
    decoder: decoder name, for the error message.
  Raises:
    ValueError: when input_specs is not a non-empty dict of rank-4 shapes
      keyed by integer levels.
  """
  if not isinstance(input_specs, dict) or not input_specs:
    raise ValueError(
        f"{decoder}: input_specs must be a non-empty dict str(level) -> shape "
        f"(e.g. backbone.output_specs; Keras 3's output_shape of a dict-output "
        f"model is a list), got {input_specs!r}.")
  specs = {}
  for key, shape in input_specs.items():
    try:
      level = int(key)
    except (TypeError, ValueError):
      raise ValueError(f"{decoder}: input_specs key {key!r} is not a level "
                       "number.") from None
    shape = tuple(shape)
    if len(shape) != 4:
      raise ValueError(
          f"{decoder}: input_specs[{key!r}] = {shape} is not a (batch, height, "
          "width, channels) shape.")
    specs[level] = shape
  return dict(sorted(specs.items()))


def check_levels(decoder, needed, available, min_level, max_level):
  """Raises ValueError naming both level ranges if a needed level is missing.

  Args:
    decoder: decoder name, for the message.
    needed: levels the decoder takes from the backbone.
    available: levels the backbone provides.
    min_level, max_level: the decoder's output levels.
  """
  if min_level > max_level:
    raise ValueError(f"{decoder}: impossible level range min_level="
                     f"{min_level} > max_level={max_level}.")
  require_levels(
      available, needed,
      f"{decoder} outputs levels {min_level}..{max_level} and needs backbone",
      "the backbone provides",
      ". Make the decoder's min_level/max_level agree with the backbone's.")


def make_inputs(specs):
  """keras.Input per backbone level, named and keyed str(level).

  Every level of the backbone gets an input, used or not, so the decoder is
  called with the backbone's whole output dict (Keras matches a dict with
  extra keys to the inputs by position, not by key). The inputs take the
  global policy's compute dtype, the dtype the backbone outputs under the same
  policy (bfloat16 under mixed_bfloat16): Keras casts every input to its
  Input's dtype, and a float32 Input would upcast bfloat16 features.
  """
  dtype = keras.mixed_precision.global_policy().compute_dtype
  return {str(level): keras.Input(batch_shape=shape, dtype=dtype,
                                  name=str(level))
          for level, shape in specs.items()}


@register_decoder("identity")
def identity(input_specs, min_level=3, max_level=7):
  """Pass-through decoder.

  Args:
    input_specs: dict str(level) -> (batch, height, width, channels) of the
      backbone outputs.
    min_level, max_level: levels to return; each must be a backbone level.
  Returns:
    keras.Model mapping the backbone's output dict to dict str(level) ->
    the same tensor, [batch, H / 2^level, W / 2^level, channels], for levels
    min_level..max_level.
  Raises:
    ValueError: naming both level ranges when the backbone lacks a level.
  """
  specs = parse_input_specs(input_specs, "identity decoder")
  levels = list(range(min_level, max_level + 1))
  check_levels("identity decoder", levels, specs, min_level, max_level)
  inputs = make_inputs(specs)
  outputs = {str(level): inputs[str(level)] for level in levels}
  return keras.Model(inputs=inputs, outputs=outputs, name="identity_decoder")
