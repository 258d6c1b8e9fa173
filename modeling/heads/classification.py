"""Classification head over multi-level features (SpineNet paper, Sec. 4.2)."""

import keras
import tensorflow as tf

from modeling.heads.registry import register_head
from modeling.layers.resampling import nearest_resize
from modeling.levels import require_levels


@register_head("classification")
@keras.saving.register_keras_serializable(package="spinenet")
class ClassificationHead(keras.layers.Layer):
  """Multi-level features -> class logits.

  Input: dict str(level) -> [batch, H_l, W_l, C] (same C at every level used).
  The levels in `levels` (default: all) are nearest-upsampled to the largest
  map (P3 for SpineNet), averaged, global-average pooled to [batch, C], passed
  through dropout and a linear classifier. Output: logits [batch, num_classes]
  float32 under any mixed-precision policy. With one level (ResNet: C5) it is
  the usual global-pool + linear head.

  Args:
    num_classes: number of classes.
    levels: str levels to use, or None for all inputs.
    dropout_rate: dropout before the classifier.
  """

  def __init__(self, num_classes, levels=None, dropout_rate=0.0, **kwargs):
    super().__init__(**kwargs)
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    self.num_classes = int(num_classes)
    self.levels = None if levels is None else [str(l) for l in levels]
    self.dropout_rate = dropout_rate
    self.dropout = keras.layers.Dropout(dropout_rate, name="dropout")
    self.classifier = keras.layers.Dense(
        num_classes, name="classifier", dtype="float32",
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))

  def _selected(self, features):
    levels = self.levels or sorted(features, key=int)
    require_levels(features, levels, f"{self.name}: the head pools",
                   "the features have", ".")
    return [features[l] for l in levels]

  def build(self, input_shape):
    shapes = self._selected(input_shape)
    widths = {s[-1] for s in shapes}
    if len(widths) != 1:
      raise ValueError(f"{self.name}: levels must share one width to be "
                       f"averaged, got widths {sorted(widths)}.")
    self.classifier.build((None, widths.pop()))

  def call(self, features, training=None):
    maps = self._selected(features)
    height = max(m.shape[1] for m in maps)
    width = max(m.shape[2] for m in maps)
    if all(height % m.shape[1] == 0 and width % m.shape[2] == 0
           for m in maps):
      # Nearest upsampling by an integer factor repeats every pixel
      # factor^2 times, so the global mean of an upsampled map is the mean
      # of the map itself, and the pooled average of the upsampled levels
      # equals the average of each level's pooled vector: the same function
      # without building the [batch, H_3, W_3, C] maps of levels 4..7.
      x = tf.add_n([tf.reduce_mean(m, axis=[1, 2]) for m in maps])
    else:
      # Sizes not divisible by 2^level (e.g. 224 px) repeat pixels unevenly;
      # the upsampled maps are averaged as described.
      x = tf.add_n([nearest_resize(m, height, width) for m in maps])
      x = tf.reduce_mean(x, axis=[1, 2])
    if len(maps) > 1:
      x = x / len(maps)
    x = self.dropout(x, training=training)
    return self.classifier(x)

  def compute_output_shape(self, input_shape):
    return (next(iter(input_shape.values()))[0], self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, levels=self.levels,
                  dropout_rate=self.dropout_rate)
    return config
