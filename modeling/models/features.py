"""The multilevel features a detector or segmenter head reads, level-checked.

Backbone (and decoder) -> dict str(level) -> map; the head names the levels
it needs, and a mismatch (a head on levels 2..6 over a backbone making 3..7)
is an error at build time that names both ranges, not a KeyError later.
"""

import keras

from modeling.levels import require_levels


def multilevel_features(backbone, decoder, model_name, why_static):
  """Applies backbone and decoder to a new static-size image input.

  Args:
    backbone: keras.Model images [batch, H, W, 3] -> dict str(level) -> map,
      with a static input shape (H, W, 3).
    decoder: keras.Model on the backbone's outputs, or None.
    model_name: names the model in errors ("RetinaNet").
    why_static: why the input size must be static, for the error.
  Returns:
    (images keras.Input, features dict str(level) -> KerasTensor, source
    "backbone" or "decoder").
  Raises:
    ValueError: the backbone's input size is not static.
  """
  input_shape = tuple(backbone.input_shape[1:])
  if None in input_shape[:2]:
    raise ValueError(f"{model_name}: the backbone's input shape "
                     f"{input_shape} must be static ({why_static}).")
  images = keras.Input(shape=input_shape, name="images")
  features = backbone(images)
  source = "backbone"
  if decoder is not None:
    features = decoder(features)
    source = "decoder"
  return images, features, source


def check_levels(features, levels, consumer, source):
  """Raises ValueError naming both ranges when `features` lack a level.

  Args:
    features: dict str(level) -> map.
    levels: the str levels the consumer reads.
    consumer: what reads them ("RetinaNet: the head predicts on").
    source: "backbone" or "decoder".
  """
  require_levels(features, levels, consumer, f"the {source} outputs",
                 f"; make the head's min_level/max_level agree with the "
                 f"{source}'s.")
