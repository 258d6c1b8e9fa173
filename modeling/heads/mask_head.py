"""Mask head of Mask R-CNN (docs/model_garden_conventions.md).

He et al., "Mask R-CNN" (2017), in the batch-norm form that the SpineNet
Mask R-CNN uses: 3x3 convs on each ROI's pooled features (each followed by
batch norm and the activation), a transposed conv with kernel and stride
`upsample_factor` (batch norm, activation), and a 1x1 conv to one mask logit
per class per pixel. With 14x14 ROI features and upsample_factor 2 the
masks are 28x28.

Configurations: SpineNet 4 convs x 256; Eff-SpineNet D0/D1/D2 3 separable
convs x 64/88/112.

Choices written down here as the project rule:
- The mask logits of one class per ROI are selected by gathering the
  class's channel (the detected class at inference, the ground-truth class
  of a foreground ROI in training), so the mask loss of an ROI involves only
  its own class, as in the paper.
- The 3x3 and transposed convs use the project's He fan-in initialisation
  (modeling.layers.conv_bn.kernel_initializer); the 1x1 mask prediction conv
  is N(0, 0.001) with zero bias, as Detectron's, so masks start at
  probability 0.5.
- use_separable_conv makes the 3x3 convs SeparableConv2D; the transposed
  conv and the 1x1 prediction conv stay plain.
- The convs keep their bias before the batch norm, as the peer (Model Garden)
  does, so parameter counts compare one to one.
- The prediction conv computes in the layer's compute dtype; its output is
  cast to float32, so mask logits and the mask loss are float32.
"""

import keras
import tensorflow as tf

from modeling.heads import arguments
from modeling.heads.fast_rcnn import roi_feature_dims
from modeling.heads.tower import ConvTower
from modeling.heads.registry import register_head
from modeling.layers import activations
from modeling.layers.conv_bn import batch_norm, kernel_initializer
from modeling.layers.tracking import tracked_list


@register_head("mask")
@keras.saving.register_keras_serializable(package="spinenet")
class MaskHead(keras.layers.Layer):
  """Per-ROI mask logits.

  Call(roi_features, classes=None):
    roi_features: [batch, num_rois, h, w, C] (h, w, C static; 14x14 in the
      SpineNet configs).
    classes: int [batch, num_rois] class of each ROI, in 0..num_classes - 1,
      or None.
  Returns float32 mask logits [batch, num_rois, h * f, w * f] (f =
  upsample_factor) for the class of each ROI, or, with classes None, for
  every class: [batch, num_rois, h * f, w * f, num_classes] (last dim 1 with
  class_agnostic, where `classes` only chooses the output rank).

  Args:
    num_classes: mask channels, background channel 0 included (COCO: 91).
    num_convs: 3x3 conv layers on each ROI before the upsampling.
    num_filters: width of those convs and of the transposed conv.
    upsample_factor: kernel size and stride of the transposed conv.
    use_separable_conv: SeparableConv2D (depthwise + pointwise) for the 3x3
      convs.
    class_agnostic: one mask per ROI, shared by all classes.
    activation: "relu", "swish" or "hard_swish", after each batch norm.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  """

  def __init__(self, num_classes, num_convs=4, num_filters=256,
               upsample_factor=2, use_separable_conv=False,
               class_agnostic=False, activation="relu", use_sync_bn=False,
               norm_momentum=0.99, norm_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    arguments.check_integers("MaskHead", (
        ("num_classes", num_classes, 2),
        ("num_convs", num_convs, 0),
        ("num_filters", num_filters, 1),
        ("upsample_factor", upsample_factor, 1)))
    self.num_classes = int(num_classes)
    self.num_convs = int(num_convs)
    self.num_filters = int(num_filters)
    self.upsample_factor = int(upsample_factor)
    self.use_separable_conv = bool(use_separable_conv)
    self.class_agnostic = bool(class_agnostic)
    self.activation = activations.check_activation(activation)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon

    # The convs on each ROI (modeling/heads/tower.py), one batch norm each.
    self._tower = ConvTower(
        self.num_convs, self.num_filters, "conv", "conv_norm",
        use_separable_conv=self.use_separable_conv,
        activation=self.activation, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    self.convs = tracked_list(self, "conv", self._tower.layers)
    self.conv_norms = tracked_list(self, "conv_norm", self._tower.norms)
    self.upsample = keras.layers.Conv2DTranspose(
        self.num_filters, self.upsample_factor,
        strides=self.upsample_factor, padding="valid",
        kernel_initializer=kernel_initializer(), bias_initializer="zeros",
        name="upsample")
    self.upsample_norm = batch_norm(norm_momentum, norm_epsilon, use_sync_bn,
                                    name="upsample_norm")
    self.mask_predict = keras.layers.Conv2D(
        self.num_mask_channels, 1,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        bias_initializer="zeros", name="mask_predict")

  @property
  def num_mask_channels(self):
    """Masks predicted per ROI: 1 if class_agnostic, else num_classes."""
    return 1 if self.class_agnostic else self.num_classes

  def _check_classes(self, roi_shape, classes):
    """Raises ValueError unless `classes` is an int [batch, num_rois]."""
    if not tf.as_dtype(classes.dtype).is_integer:
      raise ValueError(f"{self.name}: classes must be an integer tensor "
                       f"[batch, num_rois], got dtype {classes.dtype}.")
    shape = tuple(classes.shape)
    if len(shape) != 2 or any(
        a is not None and b is not None and a != b
        for a, b in zip(shape, tuple(roi_shape)[:2])):
      raise ValueError(f"{self.name}: classes must be [batch, num_rois] = "
                       f"{tuple(roi_shape)[:2]} like the ROI features, got "
                       f"shape {shape}.")

  def build(self, input_shape):
    height, width, channels = roi_feature_dims(self.name, input_shape)
    self.upsample.build(self._tower.build((None, height, width, channels)))
    size = (height * self.upsample_factor, width * self.upsample_factor)
    self.upsample_norm.build((None,) + size + (self.num_filters,))
    self.mask_predict.build((None,) + size + (self.num_filters,))

  def call(self, roi_features, classes=None, training=None):
    height, width, channels = roi_feature_dims(self.name, roi_features.shape)
    dynamic = tf.shape(roi_features)
    batch = roi_features.shape[0] or dynamic[0]
    num_rois = roi_features.shape[1] or dynamic[1]
    act = activations.get_activation(self.activation)
    x = tf.reshape(roi_features, [-1, height, width, channels])
    x = self._tower(x, training=training)
    x = act(self.upsample_norm(self.upsample(x), training=training))
    logits = tf.cast(self.mask_predict(x), tf.float32)
    size = height * self.upsample_factor, width * self.upsample_factor
    logits = tf.reshape(
        logits, [batch, num_rois, *size, self.num_mask_channels])
    if classes is None:
      return logits
    self._check_classes(roi_features.shape, classes)
    if self.class_agnostic:
      return logits[..., 0]
    classes = tf.cast(classes, tf.int32)
    checks = [
        tf.debugging.assert_non_negative(
            classes, message=f"{self.name}: classes must be >= 0"),
        tf.debugging.assert_less(
            classes, self.num_classes,
            message=f"{self.name}: classes must be < num_classes = "
                    f"{self.num_classes}"),
    ]
    with tf.control_dependencies(checks):
      return tf.gather(logits, classes, axis=4, batch_dims=2)

  def compute_output_shape(self, input_shape, classes_shape=None):
    height, width, _ = roi_feature_dims(self.name, input_shape)
    shape = tuple(input_shape)[:2] + (height * self.upsample_factor,
                                      width * self.upsample_factor)
    if classes_shape is None:
      return shape + (self.num_mask_channels,)
    return shape

  def compute_output_spec(self, roi_features, classes=None, training=None):
    if classes is not None:
      self._check_classes(roi_features.shape, classes)
    shape = self.compute_output_shape(
        roi_features.shape, None if classes is None else classes.shape)
    return keras.KerasTensor(shape, dtype="float32")

  def get_config(self):
    config = super().get_config()
    config.update(
        num_classes=self.num_classes, num_convs=self.num_convs,
        num_filters=self.num_filters, upsample_factor=self.upsample_factor,
        use_separable_conv=self.use_separable_conv,
        class_agnostic=self.class_agnostic, activation=self.activation,
        use_sync_bn=self.use_sync_bn, norm_momentum=self.norm_momentum,
        norm_epsilon=self.norm_epsilon)
    return config
