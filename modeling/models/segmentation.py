"""Semantic segmenter: backbone -> decoder -> SegmentationHead -> upsampling.

The head predicts at output stride 2^min_level (8); the logits are upsampled
bilinearly to the input size, so the model maps images [batch, H, W, 3] to
per-pixel logits [batch, H, W, num_classes] and the loss and the evaluation
compare them with labels of the input's size.
"""

import keras

from modeling.heads.segmentation import SegmentationHead
from modeling.models.features import check_levels
from modeling.models.features import multilevel_features


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
  images, features, source = multilevel_features(
      backbone, decoder, "build_segmenter",
      "the logits are upsampled to it")
  check_levels(features, head.levels, "Segmenter: the head averages", source)
  logits = head(features)
  # float32 whatever the policy: logits at the input size feed the loss.
  logits = keras.layers.Resizing(
      images.shape[1], images.shape[2], interpolation="bilinear",
      dtype="float32", name="upsample_logits")(logits)
  return keras.Model(images, logits, name=name)
