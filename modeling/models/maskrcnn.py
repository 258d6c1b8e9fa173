"""Mask R-CNN and Faster R-CNN: backbone, decoder, RPN, proposals, heads.

He et al., "Mask R-CNN" (2017), in the form the SpineNet Mask R-CNN results
were obtained with: levels 3..7, heads with batch norm
(docs/model_garden_conventions.md). Without a mask head (mask_head=None)
the same model is Faster R-CNN (Ren et al. 2015) with FPN (Lin et al.
2017), the two-stage detector SP-NAS (Sec. 4.1, "RPN and RCNN head on the
backbone") and Auto-FPN (Sec. 3.1) evaluate their backbones and necks
with: every step below except the mask branch, and no mask output.
Training and inference take different paths through the second stage, so
the model is a keras.Model subclass rather than one functional graph:

  training:  features -> RPN -> proposals (pre-NMS 2000 per level, 1000
             kept) -> ROIs sampled against the ground truth (512 per image,
             25% foreground) -> 7x7 ROI Align -> Fast R-CNN head; with a
             mask head, the first num_mask_samples sampled ROIs (the
             foregrounds come first) -> 14x14 ROI Align -> mask head,
             logits of each ROI's own class.
  inference: features -> RPN -> proposals (1000 / 1000) -> 7x7 ROI Align ->
             Fast R-CNN head -> class-specific boxes decoded against their
             proposal, class-aware NMS (score 0.05, IoU 0.5, 100 kept); with
             a mask head, -> 14x14 ROI Align of the detections -> mask head
             -> 28x28 mask probabilities of each detection's class.

Choices written down here as the project rule:
- The box head ("Fast R-CNN head" below) is any BoxHead
  (modeling/heads/fast_rcnn.py): the Fast R-CNN head, or Auto-FPN's
  searched Auto-head (Sec. 3.3, modeling/heads/auto_head.py), which takes
  and returns the same tensors. It keeps the attribute name fast_rcnn_head
  either way, so checkpoints and configs of the two differ only inside it.
- Proposals, sampled ROIs and detections are clipped to each image's valid
  (unpadded) region when `image_shape` is given, as in Model Garden; then a
  detection box never reaches into the padding, and a mask predicted over
  the box maps to the original image by the same affine map as the box.
- The second-stage box coder weights are (10, 10, 5, 5) (Fast R-CNN /
  Detectron); the RPN's are 1 (what the input pipeline encodes with).
- Detection candidates are the pre_nms_top_k best (proposal, class) pairs
  over all classes (softmax scores, background column 0 excluded), then
  class-aware NMS, as the RetinaNet post-processing does. Model Garden's
  generator takes the top k of each class instead; both keep every pair
  above the 0.05 score threshold unless more than pre_nms_top_k (5000)
  pairs of one image pass it (a proposal's softmax sums to 1, so at most
  19 of its classes can).
- The mask head sees num_mask_samples ROIs per image in training (128 =
  512 x 25%, the most foregrounds the sampler returns; Model Garden's
  num_mask_samples_per_image): the sampler puts the foregrounds first in
  random order, so these rows are all foregrounds (a random subset when
  there are more) followed by backgrounds, which the mask loss skips.
- ROIs are sampled with a stateful random op (seeded by the global seed
  that Trainer.deterministic_seed sets); the sample changes every step.
- Level ranges are checked when the model is constructed: the RPN head's
  levels and the ROI Align levels must be produced by the decoder (or the
  backbone when there is none); a mismatch is a ValueError naming both
  ranges (Model Garden's Mask R-CNN defaults to levels 2..6; on a SpineNet
  backbone producing 3..7 that must not end in a bare KeyError). The FPN
  paper's layout, RPN and anchors on P2..P6 and ROI Align on P2..P5 (P6
  exists only for the 512-pixel anchors, Lin et al. 2017, Sec. 4.1), is
  roi_max_level = the RPN's max_level - 1.
- Without a mask head, gt_masks is neither needed nor read, and the
  outputs hold no mask entry in training or inference; the settings of the
  mask branch (num_mask_samples, mask_roi_output_size) are still checked
  and kept in the config, so one config format serves both models.
- Every output is float32 under mixed precision (the heads cast their
  predictions; targets, boxes and masks are computed in float32). The
  model does not autocast its inputs, so ground-truth boxes and masks keep
  float32 precision under a float16 policy; the backbone casts the images.
"""

import keras
import tensorflow as tf

from modeling.heads.fast_rcnn import BoxHead
from modeling.heads.mask_head import MaskHead
from modeling.heads.rpn import RPNHead
from modeling.models import features as features_lib
from modeling.ops import box_ops
from modeling.ops import postprocess
from modeling.ops.anchors import Anchors
from modeling.ops.mask_ops import mask_targets
from modeling.ops.roi_align import multilevel_roi_align
from modeling.ops.roi_sampler import encode_box_targets, sample_rois
from modeling.ops.rpn_proposals import multilevel_proposals

# Second-stage box coding (Fast R-CNN, Detectron, Model Garden).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
NMS_METHODS = ("combined", "batched")
# Keys of a dict input (see MaskRCNNModel.call).
INPUT_KEYS = ("images", "gt_boxes", "gt_classes", "gt_masks", "image_shape")


@keras.saving.register_keras_serializable(package="spinenet")
class MaskRCNNModel(keras.Model):
  """Mask R-CNN, or Faster R-CNN without a mask head; see the module docstring.

  Call: model(inputs, gt_boxes=None, gt_classes=None, gt_masks=None,
  image_shape=None, training=False), where `inputs` is either the images
  or a dict with the key "images" and any of the other arguments by name
  (the form the trainer passes: features = one dict). S = the input side,
  M = ground-truth rows, K = mask crop side, A = anchors per location.

    images: float32 [B, S, S, 3], ImageNet-normalised.
    gt_boxes: float32 [B, M, 4] (ymin, xmin, ymax, xmax) pixels of the
      input, zeros as padding (training only; required there).
    gt_classes: int32 [B, M] class ids, 0 as padding (training; required).
    gt_masks: float32 [B, M, K, K], each instance's mask cropped to its own
      box (dataloaders/maskrcnn_input.py; training, optional: without it no
      mask_targets are output; ignored without a mask head).
    image_shape: float32 [B, 2] valid (height, width) of each image in
      pixels of the input (the unpadded part); default (S, S).

  Training returns a dict of float32 tensors unless noted, R = the
  sampled ROIs per image, F = min(num_mask_samples, R), C = classes:
    rpn_scores: dict str(level) -> [B, H_l, W_l, A] objectness logits.
    rpn_boxes: dict str(level) -> [B, H_l, W_l, 4 A] deltas.
    rois: [B, R, 4] pixels, the sampled ROIs (zeros on ignored rows).
    roi_classes: int32 [B, R]: class of foregrounds, 0 backgrounds, -1
      ignored rows.
    class_logits: [B, R, C].
    box_deltas: [B, R, 4 C] (or [B, R, 4], class-agnostic head).
    box_targets: [B, R, 4] encoded with BOX_CODER_WEIGHTS, zeros except on
      foregrounds.
    mask_logits: [B, F, 28, 28] logits of each ROI's class.
    mask_classes: int32 [B, F], roi_classes of those rows (> 0:
      foreground, the only rows with a mask loss).
    mask_targets: [B, F, 28, 28] in {0, 1} (only with gt_masks).
    The three mask_* entries only with a mask head.
  Inference returns, D = max_detections:
    detection_boxes: [B, D, 4] (ymin, xmin, ymax, xmax) pixels of the input.
    detection_scores: [B, D] softmax probabilities, decreasing.
    detection_classes: int32 [B, D], 1..C-1 (0 for padding).
    num_detections: int32 [B].
    detection_masks: [B, D, 28, 28] mask probabilities over each detection
      box (zeros for padding); only with a mask head.

  Args:
    backbone: keras.Model images [B, S, S, 3] -> dict str(level) -> map, with
      a static input shape.
    decoder: keras.Model mapping the backbone's outputs to dict str(level) ->
      [B, S / 2^l, S / 2^l, C] features, or None.
    rpn_head: an RPNHead; its levels are the anchor levels.
    fast_rcnn_head: the box head, a BoxHead (modeling/heads/fast_rcnn.py):
      the Fast R-CNN head (FastRCNNHead) or Auto-FPN's Auto-head (AutoHead,
      modeling/heads/auto_head.py); ROI features [B, R, bins, bins, C] ->
      (class_logits [B, R, num_classes], box_deltas [B, R, 4 num_classes]
      or [B, R, 4]), float32.
    mask_head: a MaskHead with the Fast R-CNN head's num_classes, or None
      for Faster R-CNN (no mask branch, no mask outputs).
    num_scales, aspect_ratios, anchor_size: the RPN anchors (the public
      SpineNet Mask R-CNN: 1, (0.5, 1, 2), 3), as the input pipeline builds
      them.
    roi_min_level, roi_max_level: levels ROI Align may read (default: the
      RPN head's levels; FPN's Faster R-CNN: 2 and 5 under an RPN on 2..6).
    rpn_pre_nms_top_k, rpn_post_nms_top_k, rpn_nms_iou_threshold,
      rpn_min_size: training proposals (2000, 1000, 0.7, 0).
    test_rpn_pre_nms_top_k, test_rpn_post_nms_top_k,
      test_rpn_nms_iou_threshold: inference proposals (1000, 1000, 0.7).
    num_sampled_rois, foreground_fraction, foreground_iou,
      background_iou_high, background_iou_low, mix_gt_boxes: ROI sampling
      (512, 0.25, 0.5, 0.5, 0.0, True); see modeling.ops.roi_sampler.
    num_mask_samples: ROIs per image given to the mask head in training
      (checked but unused without a mask head).
    roi_output_size: ROI Align bins of the Fast R-CNN head (7).
    mask_roi_output_size: ROI Align bins of the mask head (14); the masks
      are this times the mask head's upsample_factor (28).
    roi_sampling_ratio, roi_aligned: ROI Align sampling (2, True).
    pre_nms_top_k, score_threshold, nms_iou_threshold, max_detections,
      nms_method: detections (5000, 0.05, 0.5, 100, "combined"; "batched"
      is pure TF with static shapes, for XLA / TPU).
  Raises:
    ValueError: for heads of the wrong type, a non-static input size,
      mismatched levels (naming both ranges), mismatched class counts or
      anchors, or out-of-range settings.
  """

  def __init__(self, backbone, decoder, rpn_head, fast_rcnn_head, mask_head,
               num_scales=1, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=3.0,
               roi_min_level=None, roi_max_level=None,
               rpn_pre_nms_top_k=2000, rpn_post_nms_top_k=1000,
               rpn_nms_iou_threshold=0.7, rpn_min_size=0.0,
               test_rpn_pre_nms_top_k=1000, test_rpn_post_nms_top_k=1000,
               test_rpn_nms_iou_threshold=0.7, num_sampled_rois=512,
               foreground_fraction=0.25, foreground_iou=0.5,
               background_iou_high=0.5, background_iou_low=0.0,
               mix_gt_boxes=True, num_mask_samples=128, roi_output_size=7,
               mask_roi_output_size=14, roi_sampling_ratio=2,
               roi_aligned=True, pre_nms_top_k=5000, score_threshold=0.05,
               nms_iou_threshold=0.5, max_detections=100,
               nms_method="combined", **kwargs):
    kwargs.setdefault("name",
                      "maskrcnn" if mask_head is not None else "faster_rcnn")
    kwargs["autocast"] = False
    super().__init__(**kwargs)
    heads = [("rpn_head", rpn_head, RPNHead),
             ("fast_rcnn_head", fast_rcnn_head, BoxHead)]
    if mask_head is not None:
      heads.append(("mask_head", mask_head, MaskHead))
    for name, head, kind in heads:
      if not isinstance(head, kind):
        # The box head: any BoxHead, whose num_classes, num_box_outputs and
        # (class_logits, box_deltas) outputs the second stage reads.
        what = ("a BoxHead (modeling/heads/fast_rcnn.py: FastRCNNHead, "
                "AutoHead)" if kind is BoxHead else f"a {kind.__name__}")
        raise ValueError(f"MaskRCNNModel: {name} must be {what}"
                         f"{' or None' if name == 'mask_head' else ''}, got "
                         f"{type(head).__name__}.")
    if nms_method not in NMS_METHODS:
      raise ValueError(f"MaskRCNNModel: nms_method must be one of "
                       f"{NMS_METHODS}, got {nms_method!r}.")
    if (mask_head is not None and
        mask_head.num_classes != fast_rcnn_head.num_classes):
      raise ValueError(
          f"MaskRCNNModel: the Fast R-CNN head has {fast_rcnn_head.num_classes}"
          f" classes but the mask head has {mask_head.num_classes}; both "
          "count the same classes (background included).")
    for name, value in (("num_sampled_rois", num_sampled_rois),
                        ("num_mask_samples", num_mask_samples),
                        ("max_detections", max_detections),
                        ("pre_nms_top_k", pre_nms_top_k)):
      if int(value) != value or value < 1:
        raise ValueError(f"MaskRCNNModel: {name} must be an integer >= 1, "
                         f"got {value!r}.")

    # The feature levels, from a symbolic pass (nothing is computed).
    images, features, source = features_lib.multilevel_features(
        backbone, decoder, "MaskRCNNModel", "the anchors depend on it")
    if not isinstance(features, dict):
      raise ValueError(f"MaskRCNNModel: the {source} must output a dict "
                       f"str(level) -> features, got "
                       f"{type(features).__name__}.")
    features_lib.check_levels(features, rpn_head.levels,
                              "Mask R-CNN: the RPN head expects", source)
    roi_min_level = rpn_head.min_level if roi_min_level is None else int(
        roi_min_level)
    roi_max_level = rpn_head.max_level if roi_max_level is None else int(
        roi_max_level)
    if roi_min_level > roi_max_level:
      raise ValueError(f"MaskRCNNModel: roi_min_level={roi_min_level} > "
                       f"roi_max_level={roi_max_level}.")
    roi_levels = [str(l) for l in range(roi_min_level, roi_max_level + 1)]
    features_lib.check_levels(
        features, roi_levels,
        "Mask R-CNN: ROI Align (roi_min_level..roi_max_level) reads", source)
    widths = {features[l].shape[-1] for l in roi_levels}
    if len(widths) != 1:
      raise ValueError(
          f"Mask R-CNN: ROI Align needs the same width on levels "
          f"{roi_min_level}..{roi_max_level}, but the {source} outputs "
          f"{ {l: features[l].shape[-1] for l in roi_levels} }.")
    input_shape = tuple(backbone.input_shape[1:])

    # The symbolic input of that pass; `inputs` reports it (see there).
    self._symbolic_images = images
    self.backbone = backbone
    self.decoder = decoder
    self.rpn_head = rpn_head
    self.fast_rcnn_head = fast_rcnn_head
    self.mask_head = mask_head
    self.image_size = (int(input_shape[0]), int(input_shape[1]))
    self.anchors = Anchors(rpn_head.min_level, rpn_head.max_level, num_scales,
                           aspect_ratios, anchor_size, self.image_size)
    if self.anchors.anchors_per_location != rpn_head.num_anchors_per_location:
      raise ValueError(
          f"MaskRCNNModel: the RPN head predicts "
          f"{rpn_head.num_anchors_per_location} anchors per location but "
          f"num_scales={num_scales} x {len(tuple(aspect_ratios))} aspect "
          f"ratios give {self.anchors.anchors_per_location}.")
    # Side of the mask outputs and targets; None without a mask head.
    self.mask_size = (None if mask_head is None else
                      int(mask_roi_output_size) * mask_head.upsample_factor)
    self._settings = dict(
        num_scales=int(num_scales), aspect_ratios=list(aspect_ratios),
        anchor_size=float(anchor_size), roi_min_level=roi_min_level,
        roi_max_level=roi_max_level, rpn_pre_nms_top_k=rpn_pre_nms_top_k,
        rpn_post_nms_top_k=rpn_post_nms_top_k,
        rpn_nms_iou_threshold=rpn_nms_iou_threshold,
        rpn_min_size=rpn_min_size,
        test_rpn_pre_nms_top_k=test_rpn_pre_nms_top_k,
        test_rpn_post_nms_top_k=test_rpn_post_nms_top_k,
        test_rpn_nms_iou_threshold=test_rpn_nms_iou_threshold,
        num_sampled_rois=int(num_sampled_rois),
        foreground_fraction=foreground_fraction,
        foreground_iou=foreground_iou,
        background_iou_high=background_iou_high,
        background_iou_low=background_iou_low, mix_gt_boxes=mix_gt_boxes,
        num_mask_samples=int(num_mask_samples),
        roi_output_size=int(roi_output_size),
        mask_roi_output_size=int(mask_roi_output_size),
        roi_sampling_ratio=int(roi_sampling_ratio), roi_aligned=roi_aligned,
        pre_nms_top_k=int(pre_nms_top_k), score_threshold=score_threshold,
        nms_iou_threshold=nms_iou_threshold,
        max_detections=int(max_detections), nms_method=nms_method)
    self._build_heads({l: tuple(v.shape) for l, v in features.items()})

  def _build_heads(self, feature_shapes):
    """Creates every head variable now, so the model is built when made.

    Heads that come built (deserialised with their build config) are left
    as they are.
    """
    channels = feature_shapes[str(self._settings["roi_min_level"])][-1]
    box_bins = self._settings["roi_output_size"]
    mask_bins = self._settings["mask_roi_output_size"]
    for head, shape in (
        (self.rpn_head, feature_shapes),
        (self.fast_rcnn_head, (None, None, box_bins, box_bins, channels)),
        (self.mask_head, (None, None, mask_bins, mask_bins, channels))):
      if head is not None and not head.built:
        head.build(shape)
    self.built = True

  @property
  def input_shape(self):
    """(None, S, S, 3), as a functional model reports it."""
    return (None,) + tuple(self.backbone.input_shape[1:])

  @property
  def inputs(self):
    """[images KerasTensor (None, S, S, 3)], as a functional model reports it.

    The input the backbone (and the decoder after it) were applied to when
    the model was made. official/core/checkpointing.py (model_modules) finds
    the backbone and the decoder of an assembly this way, so that
    Trainer.init_checkpoint_modules can restore them alone, e.g. an
    ImageNet-trained ResNet-50 under a Faster R-CNN (SP-NAS Sec. 4.1 starts
    from ImageNet-pretrained backbones).
    """
    return [self._symbolic_images]

  @property
  def num_classes(self):
    return self.fast_rcnn_head.num_classes

  def _features(self, images, training):
    features = self.backbone(images, training=training)
    if self.decoder is not None:
      features = self.decoder(features, training=training)
    return features

  def _roi_align(self, features, boxes, output_size):
    s = self._settings
    return multilevel_roi_align(
        features, boxes, output_size=output_size,
        sampling_ratio=s["roi_sampling_ratio"], min_level=s["roi_min_level"],
        max_level=s["roi_max_level"], aligned=s["roi_aligned"])

  def call(self, inputs, gt_boxes=None, gt_classes=None, gt_masks=None,
           image_shape=None, training=False):
    if isinstance(inputs, dict):
      unknown = sorted(set(inputs) - set(INPUT_KEYS))
      if unknown or "images" not in inputs:
        raise ValueError(
            f"{self.name}: a dict input needs 'images' and may hold "
            f"{list(INPUT_KEYS[1:])}; got keys {sorted(inputs)}.")
      images = inputs["images"]
      gt_boxes = inputs.get("gt_boxes", gt_boxes)
      gt_classes = inputs.get("gt_classes", gt_classes)
      gt_masks = inputs.get("gt_masks", gt_masks)
      image_shape = inputs.get("image_shape", image_shape)
    else:
      images = inputs
    training = bool(training)
    if image_shape is None:
      image_shape = tf.constant(self.image_size, tf.float32)
    image_shape = tf.cast(image_shape, tf.float32)

    features = self._features(images, training)
    rpn_scores, rpn_boxes = self.rpn_head(features, training=training)
    if training:
      if gt_boxes is None or gt_classes is None:
        raise ValueError(
            f"{self.name}: training needs gt_boxes [B, M, 4] and gt_classes "
            "[B, M] (as arguments or keys of the input dict) to sample the "
            "second-stage ROIs.")
      outputs = self._train_second_stage(features, rpn_scores, rpn_boxes,
                                         gt_boxes, gt_classes, gt_masks,
                                         image_shape)
      outputs["rpn_scores"] = rpn_scores
      outputs["rpn_boxes"] = rpn_boxes
      return outputs
    return self._detect(features, rpn_scores, rpn_boxes, image_shape)

  def _proposals(self, rpn_scores, rpn_boxes, image_shape, training):
    s = self._settings
    prefix = "" if training else "test_"
    rois, _ = multilevel_proposals(
        rpn_scores, rpn_boxes, self.anchors, image_shape,
        pre_nms_top_k=s[prefix + "rpn_pre_nms_top_k"],
        post_nms_top_k=s[prefix + "rpn_post_nms_top_k"],
        nms_iou_threshold=s[prefix + "rpn_nms_iou_threshold"],
        min_size=s["rpn_min_size"])
    return rois

  def _train_second_stage(self, features, rpn_scores, rpn_boxes, gt_boxes,
                          gt_classes, gt_masks, image_shape):
    s = self._settings
    proposals = self._proposals(rpn_scores, rpn_boxes, image_shape, True)
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    sample = sample_rois(
        proposals, gt_boxes, gt_classes, num_samples=s["num_sampled_rois"],
        foreground_fraction=s["foreground_fraction"],
        foreground_iou=s["foreground_iou"],
        background_iou_high=s["background_iou_high"],
        background_iou_low=s["background_iou_low"],
        mix_gt_boxes=s["mix_gt_boxes"])
    rois, classes = sample["rois"], sample["classes"]
    class_logits, box_deltas = self.fast_rcnn_head(
        self._roi_align(features, rois, s["roi_output_size"]), training=True)
    outputs = {
        "rois": rois,
        "roi_classes": classes,
        "class_logits": class_logits,
        "box_deltas": box_deltas,
        "box_targets": encode_box_targets(rois, sample["matched_gt_boxes"],
                                          classes, BOX_CODER_WEIGHTS),
    }
    if self.mask_head is None:
      return outputs

    count = min(s["num_mask_samples"], s["num_sampled_rois"])
    mask_rois = rois[:, :count]
    mask_classes = classes[:, :count]
    mask_features = self._roi_align(features, mask_rois,
                                    s["mask_roi_output_size"])
    outputs["mask_logits"] = self.mask_head(
        mask_features, classes=tf.maximum(mask_classes, 0), training=True)
    outputs["mask_classes"] = mask_classes
    if gt_masks is not None:
      rows = tf.maximum(sample["matched_gt_indices"][:, :count], 0)
      matched_masks = tf.gather(tf.cast(gt_masks, tf.float32), rows,
                                batch_dims=1)
      outputs["mask_targets"] = mask_targets(
          mask_rois, sample["matched_gt_boxes"][:, :count], matched_masks,
          output_size=self.mask_size)
    return outputs

  def _detect(self, features, rpn_scores, rpn_boxes, image_shape):
    s = self._settings
    proposals = self._proposals(rpn_scores, rpn_boxes, image_shape, False)
    class_logits, box_deltas = self.fast_rcnn_head(
        self._roi_align(features, proposals, s["roi_output_size"]),
        training=False)
    detections = self.decode_detections(class_logits, box_deltas, proposals,
                                        image_shape)
    if self.mask_head is None:
      return detections
    mask_features = self._roi_align(features, detections["detection_boxes"],
                                    s["mask_roi_output_size"])
    logits = self.mask_head(mask_features,
                            classes=detections["detection_classes"],
                            training=False)
    keep = (tf.range(s["max_detections"])[None, :] <
            detections["num_detections"][:, None])
    detections["detection_masks"] = tf.where(keep[..., None, None],
                                             tf.sigmoid(logits), 0.0)
    return detections

  def decode_detections(self, class_logits, box_deltas, rois, image_shape):
    """Class-specific boxes of the best (ROI, class) pairs, after NMS.

    Args:
      class_logits: float32 [B, N, C] Fast R-CNN logits (column 0 is
        background).
      box_deltas: float32 [B, N, 4 C] (or [B, N, 4]) deltas, encoded with
        BOX_CODER_WEIGHTS against the ROIs.
      rois: float32 [B, N, 4] pixels; zero-area rows are padding.
      image_shape: float32 [B, 2] or [2], (height, width) the boxes are
        clipped to.
    Returns:
      dict detection_boxes [B, D, 4], detection_scores [B, D],
      detection_classes int32 [B, D] (1..C-1, 0 padding), num_detections
      int32 [B]; entries at and after num_detections are zero.
    """
    s = self._settings
    num_classes = class_logits.shape[-1]
    num_real = num_classes - 1
    num_rois = class_logits.shape[1]
    batch = tf.shape(class_logits)[0]
    scores = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[..., 1:]
    rois = tf.cast(rois, tf.float32)
    scores = tf.where((box_ops.area(rois) > 0.0)[..., None], scores, 0.0)
    scores = tf.reshape(scores, [batch, num_rois * num_real])
    k = min(s["pre_nms_top_k"], num_rois * num_real)
    top_scores, top_index = tf.math.top_k(scores, k=k, sorted=True)
    roi_index = top_index // num_real
    class_index = top_index % num_real               # 0-based real class.
    if box_deltas.shape[-1] == 4:
      deltas = tf.gather(box_deltas, roi_index, batch_dims=1)
    else:
      per_class = tf.reshape(box_deltas, [batch, num_rois * num_classes, 4])
      deltas = tf.gather(per_class, roi_index * num_classes + class_index + 1,
                         batch_dims=1)
    boxes = box_ops.decode_boxes(
        deltas, tf.gather(rois, roi_index, batch_dims=1), BOX_CODER_WEIGHTS)
    size = tf.convert_to_tensor(image_shape, tf.float32)
    if size.shape.rank == 2:
      height, width = size[:, 0:1], size[:, 1:2]
    else:
      height, width = size[0], size[1]
    boxes = box_ops.clip_boxes(boxes, height, width)
    top_scores = tf.where(box_ops.area(boxes) > 0.0, top_scores, 0.0)
    # The class-aware NMS of the RetinaNet post-processing (same package).
    # pylint: disable=protected-access
    if s["nms_method"] == "combined":
      boxes, top_scores, classes, num = postprocess._combined_nms(
          boxes, top_scores, class_index, num_real, s["score_threshold"],
          s["nms_iou_threshold"], s["max_detections"])
    else:
      boxes, top_scores, classes, num = postprocess._batched_nms(
          boxes, top_scores, class_index, s["score_threshold"],
          s["nms_iou_threshold"], s["max_detections"])
    # pylint: enable=protected-access
    keep = tf.range(s["max_detections"])[None, :] < num[:, None]
    return {
        "detection_boxes": tf.where(keep[..., None], boxes, 0.0),
        "detection_scores": tf.where(keep, top_scores, 0.0),
        "detection_classes": tf.where(keep, classes + 1, 0),
        "num_detections": num,
    }

  def get_config(self):
    serialize = keras.saving.serialize_keras_object
    return dict(
        self._settings, name=self.name,
        backbone=serialize(self.backbone),
        decoder=None if self.decoder is None else serialize(self.decoder),
        rpn_head=serialize(self.rpn_head),
        fast_rcnn_head=serialize(self.fast_rcnn_head),
        mask_head=(None if self.mask_head is None else
                   serialize(self.mask_head)))

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    for key in ("backbone", "decoder", "rpn_head", "fast_rcnn_head",
                "mask_head"):
      if config.get(key) is not None:
        config[key] = keras.saving.deserialize_keras_object(
            config[key], custom_objects=custom_objects)
    return cls(**config)
