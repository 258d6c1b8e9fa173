"""Semantic segmenter: backbone -> decoder -> SegmentationHead -> upsampling.

The head predicts at output stride 2^min_level (8); the logits are upsampled
bilinearly to the input size, so the model maps images [batch, H, W, 3] to
per-pixel logits [batch, H, W, num_classes] and the loss and the evaluation
compare them with labels of the input's size.
"""

import keras

from modeling.heads.segmentation import SegmentationHead


def _describe(levels):
  levels = sorted(int(l) for l in levels)
  if levels == list(range(levels[0], levels[-1] + 1)):
    return f"{levels[0]}..{levels[-1]}"
  return str(levels)


def build_segmenter(backbone, decoder, head, name="segmenter"):
  """Assembles a semantic segmenter as one functional keras.Model.

  Args:
    backbone: keras.Model images [batch, H, W, 3] -> dict str(level) -> map,
      with a static input shape (H, W, 3).
    decoder: keras.Model taking the backbone's output dict and returning dict
      str(level) -> [batch, H / 2^level, W / 2^level, C] (see
      modeling.decoders.registry), or None to feed the backbone outputs to the
      head directly.
    head: a SegmentationHead.
    name: model name.
  Returns:
    keras.Model images [batch, H, W, 3] float32 (ImageNet-normalised) ->
    logits float32 [batch, H, W, num_classes].
  Raises:
    ValueError: when the head is not a SegmentationHead, the input size is
      not static, or the features lack a level the head averages (naming
      both level ranges).
  """
  if not isinstance(head, SegmentationHead):
    raise ValueError(f"build_segmenter: head must be a SegmentationHead, got "
                     f"{type(head).__name__}.")
  input_shape = tuple(backbone.input_shape[1:])
  if None in input_shape[:2]:
    raise ValueError(f"build_segmenter: the backbone's input shape "
                     f"{input_shape} must be static (the logits are upsampled "
                     "to it).")
  images = keras.Input(shape=input_shape, name="images")
  features = backbone(images)
  source = "backbone"
  if decoder is not None:
    features = decoder(features)
    source = "decoder"
  missing = [l for l in head.levels if l not in features]
  if missing:
    raise ValueError(
        f"Segmenter: the head averages levels {head.min_level}.."
        f"{head.max_level} but the {source} outputs levels "
        f"{_describe(features)} (missing {missing}); make the head's "
        f"min_level/max_level agree with the {source}'s.")
  logits = head(features)
  # float32 whatever the policy: logits at the input size feed the loss.
  logits = keras.layers.Resizing(
      input_shape[0], input_shape[1], interpolation="bilinear",
      dtype="float32", name="upsample_logits")(logits)
  return keras.Model(images, logits, name=name)
