"""Every registered backbone in every model it serves trains: all weights get gradient.

For each registered backbone (modeling/backbones/registry.py) at a tiny size,
and each model assembly (RetinaNet, classifier, segmenter, Mask R-CNN), the
test builds the model, runs a training-mode forward pass on a batch of two
128 px images, takes the gradient of a fixed random projection of the outputs
a task's loss reads, and requires every trainable weight (batch-norm gammas
and betas, fusion weights, biases included) to receive a finite, non-zero
gradient. A weight without one is a layer that is built but not wired into
what the model is trained on (or whose gradient is cancelled); the failure
names each such weight.

A random projection, not the task loss, is differentiated so the check does
not depend on the data: a loss sums only the anchors/pixels that targets
select, while here every output element carries weight. The two projections
that must stay meaningful are made explicit below (class-specific mask
logits, batch of two for batch norm).

128 px because the level-7 features of the detectors and segmenter must be
at least 1x1 (128 = 2^7) and the SpineNet family checks H, W % 2^max_level.
"""

import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.backbones.registry import BACKBONES
from modeling.decoders.registry import DECODERS
from modeling.heads.registry import HEADS
from modeling.models.classifier import build_classifier
from modeling.models.maskrcnn import MaskRCNNModel
from modeling.models.retinanet import build_retinanet
from modeling.models.segmentation import build_segmenter

SIZE = 128
BATCH = 2  # Batch norm in training mode needs two values per channel at 1x1.
NUM_CLASSES = 4
WIDTH = 8  # Decoder and head width.

# The smallest configuration of each registered backbone (the smallest model
# id, widths scaled down as the SpineNet paper's search proxy does, Sec. 5.1),
# its paper's activation, and the decoder that gives it levels 3..7.
TINY_BACKBONES = {
    "spinenet": dict(
        kwargs=dict(model_id="49S", filter_size_scale=0.125,
                    resample_alpha=0.25, endpoints_num_filters=WIDTH),
        activation="relu", decoder="identity", classifier_levels=None),
    # MBConv blocks are trained with swish (SpineNet paper, final version,
    # appendix A; Eff-SpineNet Sec. 5.1.1). With ReLU, the squeeze-excitation
    # bottleneck of a block this narrow (one or two units) can be dead for the
    # whole batch, and its weights then get no gradient: a property of the
    # tiny width, not of the wiring.
    "spinenet_mbconv": dict(
        kwargs=dict(model_id="49XS", filter_size_scale=0.25,
                    endpoints_num_filters=WIDTH),
        activation="swish", decoder="identity", classifier_levels=None),
    "eff_spinenet": dict(
        kwargs=dict(model_id="M0", feature_multiplier=0.25,
                    endpoints_num_filters=WIDTH),
        activation="swish", decoder="identity", classifier_levels=None),
    # ResNet has no width knob: 50 is its smallest depth. Its C2..C5 feed an
    # FPN, which makes P3..P7 as in the RetinaNet paper; its classifier reads
    # C5 (configs/experiments/classification/resnet50_imagenet.gin), as the
    # levels' widths differ and cannot be averaged.
    "resnet": dict(kwargs=dict(model_id=50), activation="relu",
                   decoder="fpn", classifier_levels=["5"]),
    # SP-NAS: 8 basic blocks in 6 stages (levels 2..7) of base width 8 that
    # double once, so levels 3..7 all have 16 channels, and one sub-network
    # on stage 2 (SP-NAS Sec. 3.2). zero_init_residual is off: with every
    # branch's last batch-norm scale at 0, nothing inside the residual
    # branches gets gradient before the first step
    # (modeling/backbones/spnet.py).
    "spnet": dict(
        kwargs=dict(serial="BB(11,d1,1,1,1,1)", parallel=(0, 1, 0, 0, 0, 0),
                    base_channels=8, min_level=3, zero_init_residual=False),
        activation="relu", decoder="identity", classifier_levels=None),
}

TINY_DECODERS = {
    "identity": dict(min_level=3, max_level=7),
    "fpn": dict(min_level=3, max_level=7, num_filters=WIDTH),
}


def _norm(backbone_name):
  """Batch norm and activation as the runtime passes them to every network
  (official/core/registry.py norm_activation), on one device."""
  return dict(activation=TINY_BACKBONES[backbone_name]["activation"],
              use_sync_bn=False,
              norm_momentum=0.99, norm_epsilon=1e-3)


@functools.lru_cache(maxsize=None)
def _features(backbone_name):
  """(backbone, decoder), built once and shared by the four models: a
  backbone's weights are its own whichever model calls it, and building the
  SpineNet graphs is most of this test's time."""
  config = TINY_BACKBONES[backbone_name]
  decoder_name = config["decoder"]
  norm = _norm(backbone_name)
  backbone = BACKBONES[backbone_name](
      input_shape=(SIZE, SIZE, 3), init_stochastic_depth_rate=0.0,
      dropblock_keep_prob=None, dropblock_size=3, **config["kwargs"], **norm)
  decoder_kwargs = dict(TINY_DECODERS[decoder_name])
  if decoder_name != "identity":
    decoder_kwargs.update(norm)
  decoder = DECODERS[decoder_name](backbone.output_specs, **decoder_kwargs)
  return backbone, decoder


def _images():
  return tf.random.stateless_normal([BATCH, SIZE, SIZE, 3], [1, 2])


def retinanet(backbone_name):
  backbone, decoder = _features(backbone_name)
  head = HEADS["retinanet"](
      min_level=3, max_level=7, num_classes=NUM_CLASSES,
      num_anchors_per_location=3, num_convs=1, num_filters=WIDTH,
      **_norm(backbone_name))
  model = build_retinanet(backbone, decoder, head)
  return model, _images(), ("cls_outputs", "box_outputs")


def classifier(backbone_name):
  backbone, _ = _features(backbone_name)
  model = build_classifier(
      backbone, NUM_CLASSES,
      head_levels=TINY_BACKBONES[backbone_name]["classifier_levels"])
  return model, _images(), None


def segmenter(backbone_name):
  backbone, decoder = _features(backbone_name)
  head = HEADS["segmentation"](
      num_classes=NUM_CLASSES, min_level=3, max_level=7, num_convs=1,
      num_filters=WIDTH, **_norm(backbone_name))
  return build_segmenter(backbone, decoder, head), _images(), None


def maskrcnn(backbone_name):
  backbone, decoder = _features(backbone_name)
  norm = _norm(backbone_name)
  model = MaskRCNNModel(
      backbone, decoder,
      HEADS["rpn"](3, 7, 3, num_filters=WIDTH, **norm),
      HEADS["fast_rcnn"](NUM_CLASSES, num_convs=1, num_filters=WIDTH,
                         fc_dims=16, **norm),
      HEADS["mask"](NUM_CLASSES, num_convs=1, num_filters=WIDTH, **norm),
      rpn_pre_nms_top_k=100, rpn_post_nms_top_k=32, num_sampled_rois=16,
      num_mask_samples=8)
  # One ground-truth box of every foreground class: in training the mask
  # head's logits are those of each ROI's own class (the mask loss reads only
  # them), so its last conv's kernel column of a class gets gradient only
  # from ROIs of that class. The sampler puts foregrounds first, and
  # num_mask_samples (8) exceeds the foregrounds (at most 2 x 3 ground truths,
  # mixed in as ROIs), so background ROIs fill the rest and class 0's column
  # (background) takes its gradient from them.
  boxes = tf.constant([[[8, 8, 60, 70], [64, 30, 120, 110], [20, 70, 90, 124]],
                       [[30, 10, 100, 80], [4, 60, 50, 120], [70, 70, 126, 126]]],
                      tf.float32)
  classes = tf.constant([[1, 2, 3], [3, 1, 2]], tf.int32)
  masks = tf.cast(tf.random.stateless_uniform([BATCH, 3, 16, 16], [3, 4]) > 0.5,
                  tf.float32)
  inputs = {"images": _images(), "gt_boxes": boxes, "gt_classes": classes,
            "gt_masks": masks}
  # The outputs Mask R-CNN's losses read (modeling/losses/maskrcnn.py); the
  # others (ROIs, targets) are inputs to the losses, not predictions.
  return model, inputs, ("rpn_scores", "rpn_boxes", "class_logits",
                         "box_deltas", "mask_logits")


MODELS = {"retinanet": retinanet, "classifier": classifier,
          "segmenter": segmenter, "maskrcnn": maskrcnn}
# The registered heads each model assembly exercises.
MODEL_HEADS = {"retinanet": {"retinanet"}, "classifier": {"classification"},
               "segmenter": {"segmentation"},
               "maskrcnn": {"rpn", "fast_rcnn", "mask"}}


# Searched modules whose networks are built from a genotype: their every
# weight (super-network and discrete) is checked for a gradient in their own
# test file, across genotypes that use every op.
COVERED_ELSEWHERE = {"auto_fpn": "tests/modeling/test_auto_fpn.py",
                     "auto_head": "tests/modeling/test_auto_fpn.py"}


def test_every_registered_component_is_covered():
  # A newly registered backbone, decoder or head fails here until it is
  # given a tiny configuration and a model in this file (or a test file of
  # its own named in COVERED_ELSEWHERE).
  decoders = set(DECODERS) - set(COVERED_ELSEWHERE)
  assert set(TINY_BACKBONES) == set(BACKBONES)
  assert {c["decoder"] for c in TINY_BACKBONES.values()} == decoders
  assert set(TINY_DECODERS) == decoders
  assert set().union(*MODEL_HEADS.values()) == set(HEADS) - set(
      COVERED_ELSEWHERE)
  assert set(MODEL_HEADS) == set(MODELS)
  for path in COVERED_ELSEWHERE.values():
    assert os.path.exists(os.path.join(os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), path)), path


def _projection(outputs, keys):
  """A fixed random linear function of the float outputs (a scalar)."""
  if keys is not None:
    outputs = [outputs[k] for k in keys]
  total = tf.constant(0.0)
  for i, tensor in enumerate(tf.nest.flatten(outputs)):
    weights = tf.random.stateless_normal(tf.shape(tensor), [7, i])
    total += tf.reduce_sum(tf.cast(tensor, tf.float32) * weights)
  return total


def _batch_norms(model):
  return [layer for layer in model._flatten_layers(include_self=False)
          if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("backbone_name", sorted(TINY_BACKBONES))
def test_every_trainable_weight_gets_a_gradient(backbone_name, model_name):
  model, inputs, keys = MODELS[model_name](backbone_name)
  weights = model.trainable_variables
  assert weights, f"{backbone_name} x {model_name} has no trainable weight"
  # The batch norms normalise with this batch's statistics held constant:
  # one training-mode pass with momentum 0 sets every moving mean and
  # variance to the batch's, then the layers are frozen (a Keras batch norm
  # that is not trainable normalises with its moving statistics even in
  # training mode), so each is an affine map that gives the training-mode
  # activations. With the statistics a function of the batch, a batch norm
  # removes any per-channel constant of its input, so a beta or conv bias
  # whose every path ends in another batch norm (through 1x1 convs, or 3x3
  # convs on a 1x1 map such as P7 at 128 px) has an analytically zero
  # gradient, which comes out as exactly 0.0 or a rounding residue by the
  # order of float additions: the test then failed or passed by chance.
  # (Freezing at the initial statistics, mean 0 and variance 1, instead
  # leaves activations unnormalised, and a random draw could kill a whole
  # ReLU layer.) The rest of the model (ROI sampling, targets) runs in
  # training mode.
  norms = _batch_norms(model)
  momenta = [layer.momentum for layer in norms]
  try:
    for layer in norms:
      layer.momentum = 0.0
    model(inputs, training=True)
    for layer in norms:
      layer.trainable = False
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch([w.value for w in weights])
      outputs = model(inputs, training=True)
      loss = _projection(outputs, keys)
  finally:
    for layer, momentum in zip(norms, momenta):
      layer.trainable = True
      layer.momentum = momentum
  grads = tape.gradient(loss, [w.value for w in weights])
  without = [w.path for w, g in zip(weights, grads)
             if g is None or not np.any(g.numpy())]
  assert not without, (
      f"{backbone_name} x {model_name}: {len(without)} of {len(weights)} "
      f"trainable weights get no gradient: {without}")
  nonfinite = [w.path for w, g in zip(weights, grads)
               if not np.all(np.isfinite(g.numpy()))]
  assert not nonfinite, (
      f"{backbone_name} x {model_name}: non-finite gradient for {nonfinite}")
