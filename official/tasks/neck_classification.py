"""Classification through a neck: backbone -> decoder -> pooled levels -> logits.

A classification proxy for neck searches (Auto-FPN, Xu et al. 2019, Sec. 3.2,
searched here on a small classification set so that a whole search runs on a
CPU): the decoder's output levels are nearest-upsampled to the largest one,
averaged, global-average pooled and classified by the ClassificationHead
(modeling/heads/classification.py). Every level the neck makes therefore
reaches the loss, so every link of the neck gets a gradient.

The task is ClassificationTask (official/tasks/classification.py) with one
more argument, `decoder`; inputs, losses, evaluation and serving are its.
"""

import gin
import keras

from modeling.heads.classification import ClassificationHead
from official.core import registry
from official.tasks.classification import ClassificationTask


def build_neck_classifier(backbone, decoder, num_classes, head_levels=None,
                          dropout_rate=0.0, normalize_levels=True,
                          name="neck_classifier"):
  """images -> backbone -> decoder -> ClassificationHead, one functional model.

  The backbone is applied to the model input and the decoder to the
  backbone's outputs, the layout official/core/checkpointing.py
  (model_modules) finds, so `Trainer.init_checkpoint_modules = 'backbone'`
  restores the backbone alone.

  Args:
    backbone: keras.Model images [batch, H, W, 3] -> dict str(level) -> map.
    decoder: keras.Model of the backbone's output dict -> dict str(level) ->
      [batch, H / 2^level, W / 2^level, C], the same C at every level.
    num_classes: classifier outputs.
    head_levels: levels the head averages (None: every decoder output).
    dropout_rate: dropout before the classifier.
    normalize_levels: batch norm (keras BatchNormalization, one per level)
      on every decoder output before the head. The Auto-FPN super-network
      has no batch norm (Sec. 4.1) and ends in a linear sum of links whose
      mixture weights start at 1/8, so its outputs are small (std ~0.1 on
      the digits proxy) and, globally pooled into a classifier initialised
      at std 0.01, give logits of std ~0.002: the loss stays at ln(10) for
      tens of steps and the architecture gradient of the loss is noise. The
      normalisation belongs to the proxy's head, not to the searched neck.
  Returns:
    keras.Model images [batch, H, W, 3] float32 -> logits [batch,
    num_classes] float32.
  """
  images = keras.Input(shape=backbone.input_shape[1:], name="images")
  features = decoder(backbone(images))
  if normalize_levels:
    features = {level: keras.layers.BatchNormalization(
        name=f"head_norm_{level}")(x) for level, x in features.items()}
  logits = ClassificationHead(num_classes, head_levels, dropout_rate,
                              name="classification_head")(features)
  return keras.Model(images, logits, name=name)


@registry.register_task
class NeckClassificationTask(ClassificationTask):
  """ClassificationTask with a decoder between the backbone and the head.

  Args: those of ClassificationTask, and
    decoder: gin-bound decoder builder (@auto_fpn, @fpn); required.
  Raises:
    ValueError: (build_model) the decoder's levels have different widths
      (ClassificationHead averages them).
  """

  def __init__(self, decoder=gin.REQUIRED, **kwargs):
    super().__init__(**kwargs)
    self.decoder_fn = decoder

  def build_model(self):
    backbone, decoder = registry.multilevel_features(
        (self.image_size, self.image_size, 3), backbone=self.backbone_fn,
        decoder=self.decoder_fn)
    return build_neck_classifier(backbone, decoder, self.num_classes,
                                 self.head_levels, self.dropout_rate)
