"""Image classifier: backbone -> classification head."""

import keras

from modeling.heads.classification import ClassificationHead


def build_classifier(backbone, num_classes, head_levels=None, dropout_rate=0.0,
                     name="classifier"):
  """Wraps `backbone` and a ClassificationHead into one functional model.

  Args:
    backbone: keras.Model images [batch, H, W, 3] -> dict str(level) -> map.
    num_classes: classifier outputs.
    head_levels: levels the head averages (None: all backbone outputs).
    dropout_rate: dropout before the classifier.
  Returns:
    keras.Model images [batch, H, W, 3] float32 -> logits [batch, num_classes].
  """
  images = keras.Input(shape=backbone.input_shape[1:], name="images")
  features = backbone(images)
  logits = ClassificationHead(num_classes, head_levels, dropout_rate,
                              name="classification_head")(features)
  return keras.Model(images, logits, name=name)
