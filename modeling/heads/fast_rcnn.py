"""Fast R-CNN box head of Mask R-CNN (docs/model_garden_conventions.md).

Girshick, "Fast R-CNN" (2015), in the "4conv1fc" form with batch norm that
the SpineNet Mask R-CNN uses: 3x3 convs on each ROI's pooled features, each
followed by batch norm and the activation, then the features are flattened
and go through fully connected layers (each with batch norm and the
activation), and two linear layers give the class logits and the box deltas.

Configurations: SpineNet-49/96/143 4 convs x 256 + 1 FC of 1024;
SpineNet-49S 4 x 128 + FC 512; SpineNet-190 7 convs x 384 + FC 1024;
Eff-SpineNet D0/D1/D2 3 separable convs x 64/88/112 + FC 256/256/512; the
base config without SpineNet: 0 convs + 2 FC x 1024.

Choices written down here as the project rule:
- Prediction layers as in Detectron: class logits N(0, 0.01), box deltas
  N(0, 0.001), zero biases, so every ROI starts with near-uniform class
  scores and near-zero deltas.
- The convs and FCs use the project's He fan-in initialisation
  (modeling.layers.conv_bn.kernel_initializer; the peer uses He fan-out for
  the convs and a uniform 1/3 fan-out scaling for the FC): every one is
  followed by batch norm, which normalises the scale away.
- The convs and FCs keep their bias before the batch norm, as the peer
  (Model Garden) does, so parameter counts compare one to one.
- The flattening order is (row, column, channel) of each ROI.
- Batch norm statistics are taken over all batch x ROI rows, padded ROIs
  included.
- The prediction layers compute in the layer's compute dtype and their
  outputs are cast to float32.

BoxHead, the base class of this head and of Auto-FPN's Auto-head
(modeling/heads/auto_head.py), holds those prediction layers, their output
layout and shapes once; the two-stage assembly (modeling/models/maskrcnn.py)
takes any BoxHead as its box head.
"""

import keras
import tensorflow as tf

from modeling.heads import arguments
from modeling.heads.tower import ConvTower
from modeling.heads.registry import register_head
from modeling.layers import activations
from modeling.layers.tracking import tracked_list


def roi_feature_dims(layer_name, shape):
  """Checks an ROI feature shape and returns its static (height, width, C).

  Args:
    layer_name: named in the error message.
    shape: [batch, num_rois, height, width, channels]; height, width and
      channels must be known.
  Raises:
    ValueError: saying which dimension is wrong and what was expected.
  """
  shape = tuple(shape)
  if len(shape) != 5:
    raise ValueError(f"{layer_name}: ROI features must be [batch, num_rois, "
                     f"height, width, channels], got shape {shape}.")
  if any(d is None for d in shape[2:]):
    raise ValueError(f"{layer_name}: the ROI height, width and channels must "
                     f"be static, got shape {shape}.")
  return tuple(int(d) for d in shape[2:])


class BoxHead(keras.layers.Layer):
  """Base of the second-stage box heads: class and box prediction layers.

  A subclass computes one feature vector per ROI, [batch * num_rois, D], and
  hands it to `predict_outputs`, which applies Fast R-CNN's two sibling
  output layers (Girshick 2015, Sec. 2: class scores and per-class box
  regression) and returns what the two-stage detector reads: a tuple
  (class_logits, box_deltas), float32 [batch, num_rois, num_classes] and
  [batch, num_rois, 4 * num_classes] (class major: columns 4c..4c+3 are the
  deltas of class c) or [batch, num_rois, 4] with class_agnostic_boxes.

  The layers are attributes named class_predict and box_predict, so their
  checkpoint paths are class_predict/kernel, box_predict/kernel (and bias)
  in every subclass. Initialisation (module docstring): N(0, 0.01) for the
  logits, N(0, 0.001) for the deltas, zero biases.

  Args:
    num_classes: classes, background column 0 included (COCO: 91); an
      integer >= 2.
    class_agnostic_boxes: one box per ROI instead of one per class.
    **kwargs: keras.layers.Layer arguments (name, dtype).
  Raises:
    ValueError: num_classes is not an integer >= 2 (named with the
      subclass).
  """

  def __init__(self, num_classes, class_agnostic_boxes=False, **kwargs):
    super().__init__(**kwargs)
    arguments.check_integers(type(self).__name__,
                             (("num_classes", num_classes, 2),))
    self.num_classes = int(num_classes)
    self.class_agnostic_boxes = bool(class_agnostic_boxes)
    self.class_predict = None
    self.box_predict = None

  def make_predictors(self):
    """Creates class_predict and box_predict; the subclass calls it last in
    its constructor, so that the layers come after its own in the layer's
    weight order (the order FastRCNNHead has always had)."""
    self.class_predict = keras.layers.Dense(
        self.num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer="zeros", name="class_predict")
    self.box_predict = keras.layers.Dense(
        self.num_box_outputs,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        bias_initializer="zeros", name="box_predict")

  @property
  def num_box_outputs(self):
    """Box delta columns per ROI: 4, or 4 * num_classes."""
    return 4 if self.class_agnostic_boxes else 4 * self.num_classes

  def build_predictors(self, feature_dims):
    """Builds the two prediction layers on [None, feature_dims] vectors."""
    self.class_predict.build((None, int(feature_dims)))
    self.box_predict.build((None, int(feature_dims)))

  def predict_outputs(self, features, batch, num_rois):
    """Class logits and box deltas of per-ROI feature vectors.

    Args:
      features: [batch * num_rois, D] in the layer's compute dtype.
      batch, num_rois: ints or scalar int32 tensors, the leading dims of
        the outputs.
    Returns:
      (class_logits, box_deltas), float32, shapes as in the class docstring.
    """
    class_logits = tf.cast(self.class_predict(features), tf.float32)
    box_deltas = tf.cast(self.box_predict(features), tf.float32)
    return (tf.reshape(class_logits, [batch, num_rois, self.num_classes]),
            tf.reshape(box_deltas, [batch, num_rois, self.num_box_outputs]))

  def compute_output_shape(self, input_shape):
    roi_feature_dims(self.name, input_shape)
    leading = tuple(input_shape)[:2]
    return leading + (self.num_classes,), leading + (self.num_box_outputs,)

  def compute_output_spec(self, roi_features, training=None):
    return tuple(keras.KerasTensor(s, dtype="float32")
                 for s in self.compute_output_shape(roi_features.shape))

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes,
                  class_agnostic_boxes=self.class_agnostic_boxes)
    return config


@register_head("fast_rcnn")
@keras.saving.register_keras_serializable(package="spinenet")
class FastRCNNHead(BoxHead):
  """Class logits and box deltas for each ROI.

  Input: ROI features [batch, num_rois, h, w, C] (h, w, C static; the ROI
  aligned features of the detector, 7x7 in the SpineNet configs). Output: a
  tuple (class_logits, box_deltas): float32 [batch, num_rois, num_classes]
  and [batch, num_rois, 4 * num_classes] (class major: columns 4c..4c+3 are
  the deltas for class c; Faster R-CNN encoding), or [batch, num_rois, 4]
  with class_agnostic_boxes.

  Args:
    num_classes: classes, background column 0 included (COCO: 91).
    num_convs: 3x3 conv layers on each ROI before the FCs.
    num_filters: width of those convs.
    num_fcs: fully connected layers after the convs.
    fc_dims: width of those FCs.
    use_separable_conv: SeparableConv2D (depthwise + pointwise) for the 3x3
      convs.
    class_agnostic_boxes: one box per ROI instead of one per class.
    activation: "relu", "swish" or "hard_swish", after each batch norm.
    use_sync_bn, norm_momentum, norm_epsilon: batch norm.
  """

  def __init__(self, num_classes, num_convs=4, num_filters=256, num_fcs=1,
               fc_dims=1024, use_separable_conv=False,
               class_agnostic_boxes=False, activation="relu",
               use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3,
               **kwargs):
    super().__init__(num_classes, class_agnostic_boxes, **kwargs)
    arguments.check_integers("FastRCNNHead", (
        ("num_convs", num_convs, 0),
        ("num_filters", num_filters, 1),
        ("num_fcs", num_fcs, 0),
        ("fc_dims", fc_dims, 1)))
    self.num_convs = int(num_convs)
    self.num_filters = int(num_filters)
    self.num_fcs = int(num_fcs)
    self.fc_dims = int(fc_dims)
    self.use_separable_conv = bool(use_separable_conv)
    self.activation = activations.check_activation(activation)
    self.use_sync_bn = use_sync_bn
    self.norm_momentum = norm_momentum
    self.norm_epsilon = norm_epsilon

    # Two towers (modeling/heads/tower.py), one batch norm per layer: the
    # convs on each ROI, then the FCs on the flattened ROI features.
    norm_args = dict(activation=self.activation, use_sync_bn=use_sync_bn,
                     norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)
    self._conv_tower = ConvTower(
        self.num_convs, self.num_filters, "conv", "conv_norm",
        use_separable_conv=self.use_separable_conv, **norm_args)
    self._fc_tower = ConvTower(self.num_fcs, self.fc_dims, "fc", "fc_norm",
                               kind="dense", **norm_args)
    self.convs = tracked_list(self, "conv", self._conv_tower.layers)
    self.conv_norms = tracked_list(self, "conv_norm", self._conv_tower.norms)
    self.fcs = tracked_list(self, "fc", self._fc_tower.layers)
    self.fc_norms = tracked_list(self, "fc_norm", self._fc_tower.norms)
    self.make_predictors()

  def build(self, input_shape):
    height, width, channels = roi_feature_dims(self.name, input_shape)
    channels = self._conv_tower.build((None, height, width, channels))[-1]
    shape = self._fc_tower.build((None, height * width * channels))
    self.build_predictors(shape[-1])

  def call(self, roi_features, training=None):
    height, width, channels = roi_feature_dims(self.name, roi_features.shape)
    dynamic = tf.shape(roi_features)
    batch = roi_features.shape[0] or dynamic[0]
    num_rois = roi_features.shape[1] or dynamic[1]
    x = tf.reshape(roi_features, [-1, height, width, channels])
    x = self._conv_tower(x, training=training)
    x = tf.reshape(x, [-1, height * width * x.shape[-1]])
    x = self._fc_tower(x, training=training)
    return self.predict_outputs(x, batch, num_rois)

  def get_config(self):
    config = super().get_config()
    config.update(
        num_convs=self.num_convs,
        num_filters=self.num_filters, num_fcs=self.num_fcs,
        fc_dims=self.fc_dims, use_separable_conv=self.use_separable_conv,
        activation=self.activation, use_sync_bn=self.use_sync_bn,
        norm_momentum=self.norm_momentum, norm_epsilon=self.norm_epsilon)
    return config
