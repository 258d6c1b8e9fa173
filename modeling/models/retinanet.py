"""RetinaNet: backbone -> decoder -> RetinaNetHead, and its detector wrapper.

build_retinanet gives the trainable model (raw head outputs, used with
modeling.losses.retinanet); RetinaNetDetector adds anchors and
post-processing (used at evaluation and export).
"""

import keras

from modeling.heads.retinanet import RetinaNetHead
from modeling.models.features import check_levels
from modeling.models.features import multilevel_features
from modeling.ops.anchors import Anchors
from modeling.ops.postprocess import NMS_METHODS, multilevel_detections


def build_retinanet(backbone, decoder, head, name="retinanet"):
  """Assembles a RetinaNet as one functional keras.Model.

  Args:
    backbone: keras.Model images [batch, H, W, 3] -> dict str(level) -> map,
      with a static input shape (H, W, 3).
    decoder: keras.Model taking the backbone's output dict and returning dict
      str(level) -> [batch, H / 2^level, W / 2^level, C] (see
      modeling.decoders.registry), or None to feed the backbone outputs to the
      head directly.
    head: a RetinaNetHead.
    name: model name.
  Returns:
    keras.Model images [batch, H, W, 3] float32 (ImageNet-normalised) ->
    {"cls_outputs": dict str(level) -> float32 [batch, H_l, W_l, A *
    num_classes], "box_outputs": dict str(level) -> float32 [batch, H_l, W_l,
    A * 4]} for the head's levels.
  Raises:
    ValueError: when the decoder's output levels do not cover the head's
      min_level..max_level (naming both ranges).
  """
  if not isinstance(head, RetinaNetHead):
    raise ValueError(f"build_retinanet: head must be a RetinaNetHead, got "
                     f"{type(head).__name__}.")
  images, features, source = multilevel_features(
      backbone, decoder, "build_retinanet", "anchors depend on it")
  check_levels(features, head.levels, "RetinaNet: the head predicts on",
               source)
  cls_outputs, box_outputs = head(features)
  return keras.Model(images, {"cls_outputs": cls_outputs,
                              "box_outputs": box_outputs}, name=name)


@keras.saving.register_keras_serializable(package="spinenet")
class RetinaNetDetector(keras.Model):
  """A RetinaNet plus anchors and post-processing: images -> detections.

  Call: images [batch, H, W, 3] float32 (the model's input size) -> dict
  boxes float32 [batch, max_detections, 4] (ymin, xmin, ymax, xmax, pixels of
  the input), scores float32 [batch, max_detections], classes int32 [batch,
  max_detections] (1..num_classes-1; 0 for padding), num_detections int32
  [batch]; see modeling.ops.postprocess.multilevel_detections.

  Args:
    model: a model from build_retinanet.
    num_scales, aspect_ratios, anchor_size: the anchors the model was trained
      with (image size and levels come from the model).
    pre_nms_top_k, score_threshold, nms_iou_threshold, max_detections,
      box_coder_weights, nms_method: post-processing; see
      multilevel_detections.
  Raises:
    ValueError: when the anchors per location differ from the head's.
  """

  def __init__(self, model, num_scales=3, aspect_ratios=(0.5, 1.0, 2.0),
               anchor_size=3.0, pre_nms_top_k=5000, score_threshold=0.05,
               nms_iou_threshold=0.5, max_detections=100,
               box_coder_weights=None, nms_method="combined", **kwargs):
    super().__init__(**kwargs)
    if nms_method not in NMS_METHODS:
      raise ValueError(f"nms_method must be one of {NMS_METHODS}, got "
                       f"{nms_method!r}.")
    self.model = model
    cls_specs = model.output["cls_outputs"]
    box_specs = model.output["box_outputs"]
    levels = sorted((int(l) for l in cls_specs))
    image_size = tuple(model.input_shape[1:3])
    self.anchors = Anchors(levels[0], levels[-1], num_scales, aspect_ratios,
                           anchor_size, image_size)
    head_anchors = box_specs[str(levels[0])].shape[-1] // 4
    if head_anchors != self.anchors.anchors_per_location:
      raise ValueError(
          f"RetinaNetDetector: the head predicts {head_anchors} anchors per "
          f"location but num_scales={num_scales} x {len(aspect_ratios)} "
          f"aspect ratios give {self.anchors.anchors_per_location}.")
    self.num_classes = cls_specs[str(levels[0])].shape[-1] // head_anchors
    self._detector_config = dict(
        num_scales=num_scales, aspect_ratios=list(aspect_ratios),
        anchor_size=anchor_size, pre_nms_top_k=pre_nms_top_k,
        score_threshold=score_threshold, nms_iou_threshold=nms_iou_threshold,
        max_detections=max_detections,
        box_coder_weights=(None if box_coder_weights is None
                           else list(box_coder_weights)),
        nms_method=nms_method)

  def call(self, images, training=False):
    outputs = self.model(images, training=False)
    config = self._detector_config
    return multilevel_detections(
        outputs["cls_outputs"], outputs["box_outputs"], self.anchors,
        self.anchors.image_size, num_classes=self.num_classes,
        pre_nms_top_k=config["pre_nms_top_k"],
        score_threshold=config["score_threshold"],
        nms_iou_threshold=config["nms_iou_threshold"],
        max_detections=config["max_detections"],
        box_coder_weights=config["box_coder_weights"],
        nms_method=config["nms_method"])

  def get_config(self):
    return dict(self._detector_config, name=self.name,
                model=keras.saving.serialize_keras_object(self.model))

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config["model"] = keras.saving.deserialize_keras_object(
        config["model"], custom_objects=custom_objects)
    return cls(**config)
