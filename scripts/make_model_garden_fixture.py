r"""Writes a Model Garden checkpoint and its outputs: the import test's fixture.

Runs only with the peer environment's python (tf-models-official 2.20, on
tf-keras / Keras 2, installs its own top-level package `official`), from a
directory outside this repository and with PYTHONPATH unset, so that this
repository's `official` cannot be imported by mistake. Create the environment
once as scripts/benchmarks/benchmark.py's `--peer` does
(`python -m venv .venv-peer && .venv-peer/bin/pip install
tf-models-official==2.20.0`), then:

  cd /tmp && env -u PYTHONPATH /path/to/repo/.venv-peer/bin/python \
    /path/to/repo/scripts/make_model_garden_fixture.py \
    --output_dir=/path/to/repo/tests/fixtures/model_garden/spinenet49_tiny \
    --image_size=128 --filter_size_scale=0.03125 --resample_alpha=0.5 \
    --endpoints_num_filters=8 --head_num_convs=1 --head_num_filters=8 \
    --num_classes=8 --batch_size=1

(one of the committed fixtures; tests/fixtures/model_garden/README.md gives
the others: --backbone=spinenet_mobile (with --se_init_scale),
--model=classification, and --model=maskrcnn, Model Garden's SpineNet Mask
R-CNN with the --rpn_*, --frcnn_* and --mask_* head sizes,
--test_num_proposals and --max_num_detections). The flags are also written
to spec.json. For the full-size check, leave the scaling and head flags at
their defaults (the model id's own) and pass --image_size=640
--num_classes=91.

What it builds: Model Garden's RetinaNet (experiment
`retinanet_spinenet_coco` edited to the flags) with Model Garden's own
SpineNet, built with the model id's block specs (16 blocks: the 16th,
level 2, is computed by nothing at levels 3..7) and the flags' scaling
(SpineNet-Mobile with --backbone=spinenet_mobile), or with
--model=classification Model Garden's ClassificationModel on that backbone.
Its weights are Model
Garden's random initialisation, except:
- every batch norm's gamma, beta, moving mean and moving variance are drawn
  at random (a correct import must carry them; the initial 1, 0, 0, 1 would
  hide a batch norm mapped to the wrong layer);
- the prediction convs' kernels are N(0, 0.01) (separable ones: depthwise
  N(0, 1/3), pointwise N(0, 0.3 / sqrt(input width))) and the class biases
  U(-4, -1), instead of N(0, 1e-5) and the 0.01 prior: with the initial
  values every score is 0.01, below the 0.05 threshold, and there would be
  no detection to compare; with N(0, 0.01) in both separable factors every
  logit is its bias and the scores tie;
- with --se_init_scale=S (SpineNet-Mobile), the squeeze-excitation convs'
  kernels are N(0, S / sqrt(fan_in)) and their biases N(0, S): under Model
  Garden's initialisation their pre-activations stay near 0, where its ReLU
  and hard sigmoid and our default swish and sigmoid nearly agree, and the
  49XS fixture's outputs told the forms apart by 6e-4 only (2.9e-3 with
  S = 2).

What it writes into --output_dir:
- ckpt.index / ckpt.data-*: tf.train.Checkpoint(model=model,
  global_step=...), the layout of Model Garden's trainer checkpoints
  (object paths model/_backbone/..., model/_head/...);
- images.npy: float32 [batch, S, S, 3], N(0, 1) (already normalised);
- outputs.npz: the raw head outputs under the names Model Garden's output
  dict flattens to (`cls_outputs/3` .. `box_outputs/7`) and the
  post-processed `detection_boxes` [batch, 100, 4] (ymin, xmin, ymax, xmax,
  input pixels), `detection_scores`, `detection_classes`, `num_detections`
  (Model Garden's MultilevelDetectionGenerator, its default v2 NMS, boxes
  clipped to the image);
- with --model=maskrcnn, outputs.npz holds instead what maskrcnn_outputs
  below lists: the RPN outputs per level, the proposals (`rois`), the Fast
  R-CNN head's outputs on them, the mask logits on the detections, and the
  detections with their masks (Model Garden's DetectionGenerator, v2 NMS;
  its prediction layers and batch norms randomised as randomise_maskrcnn
  says);
- spec.json: the flags, the versions, and the gin bindings that configure
  this repository's model the same way (for a Mask R-CNN they include
  MaskRCNNTask.roi_aligned = False and MaskRCNNTask.roi_sampling_ratio = 1,
  Model Garden's ROI Align: modeling/ops/roi_align.py).
"""

import argparse
import json
import os
import sys

# The peer's isolation check (scripts/benchmarks/peer_model_garden.py): this
# script also runs in the peer venv, where `official` must be Model Garden's.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "benchmarks"))
from peer_model_garden import check_isolated  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--model", default="retinanet",
                      choices=("retinanet", "classification", "maskrcnn"))
  parser.add_argument("--backbone", default="spinenet",
                      choices=("spinenet", "spinenet_mobile"))
  parser.add_argument("--model_id", default="49")
  parser.add_argument("--image_size", type=int, default=640)
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--num_classes", type=int, default=91)
  parser.add_argument("--min_level", type=int, default=3)
  parser.add_argument("--max_level", type=int, default=7)
  parser.add_argument("--filter_size_scale", type=float, default=None,
                      help="Default: the model id's.")
  parser.add_argument("--resample_alpha", type=float, default=None,
                      help="spinenet only. Default: the model id's.")
  parser.add_argument("--endpoints_num_filters", type=int, default=None,
                      help="Default: the model id's.")
  parser.add_argument("--block_repeats", type=int, default=None,
                      help="Default: the model id's.")
  parser.add_argument("--head_num_convs", type=int, default=4)
  parser.add_argument("--head_num_filters", type=int, default=256)
  parser.add_argument("--head_use_separable_conv", action="store_true")
  parser.add_argument("--activation", default=None,
                      help="Default: relu (spinenet), swish (spinenet_mobile).")
  parser.add_argument("--anchor_size", type=float, default=3.0)
  # Mask R-CNN only (--model=maskrcnn); defaults: the SpineNet-49 Mask
  # R-CNN's (docs/model_garden_conventions.md, "Detection heads").
  parser.add_argument("--rpn_num_convs", type=int, default=1)
  parser.add_argument("--rpn_num_filters", type=int, default=256)
  parser.add_argument("--frcnn_num_convs", type=int, default=4)
  parser.add_argument("--frcnn_num_filters", type=int, default=256)
  parser.add_argument("--frcnn_num_fcs", type=int, default=1)
  parser.add_argument("--frcnn_fc_dims", type=int, default=1024)
  parser.add_argument("--mask_num_convs", type=int, default=4)
  parser.add_argument("--mask_num_filters", type=int, default=256)
  parser.add_argument("--test_num_proposals", type=int, default=1000,
                      help="Proposals kept after the RPN's NMS at inference "
                      "(Model Garden's roi_generator.test_num_proposals).")
  parser.add_argument("--max_num_detections", type=int, default=100,
                      help="Detections kept (detection_generator."
                      "max_num_detections).")
  parser.add_argument("--se_init_scale", type=float, default=None,
                      help="spinenet_mobile only: draw the squeeze-"
                      "excitation convs' kernels N(0, scale / sqrt(fan_in))"
                      " and biases N(0, scale) (default: Model Garden's "
                      "initialisation, under which its ReLU + hard sigmoid "
                      "and our swish + sigmoid differ by little).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--images", default=None,
                      help="A .npy of float32 [batch, S, S, 3] images to use "
                      "instead of drawing N(0, 1) ones; then no images.npy "
                      "is written (fixtures share one image file).")
  return parser.parse_args()


def scaling(args, scaling_map):
  """The model id's scaling with the flags' overrides."""
  values = dict(scaling_map[args.model_id])
  for key in ("filter_size_scale", "resample_alpha", "endpoints_num_filters",
              "block_repeats"):
    if getattr(args, key) is not None:
      if key not in values:
        raise ValueError(f"--{key} does not apply to {args.backbone}.")
      values[key] = getattr(args, key)
  return values


def build_backbone(args, input_specs):
  """Model Garden's SpineNet (or SpineNet-Mobile), default block specs."""
  if args.backbone == "spinenet":
    from official.vision.modeling.backbones import spinenet  # pylint: disable=g-import-not-at-top
    values = scaling(args, spinenet.SCALING_MAP)
    backbone = spinenet.SpineNet(
        input_specs=input_specs, min_level=args.min_level,
        max_level=args.max_level,
        block_specs=spinenet.build_block_specs(), activation=args.activation,
        use_sync_bn=False, norm_momentum=0.99, norm_epsilon=1e-3, **values)
  else:
    from official.vision.modeling.backbones import spinenet_mobile  # pylint: disable=g-import-not-at-top
    values = scaling(args, spinenet_mobile.SCALING_MAP)
    backbone = spinenet_mobile.SpineNetMobile(
        input_specs=input_specs, min_level=args.min_level,
        max_level=args.max_level,
        block_specs=spinenet_mobile.build_block_specs(),
        activation=args.activation, use_sync_bn=False, norm_momentum=0.99,
        norm_epsilon=1e-3, **values)
  return backbone, values


def build_model(args):
  """(model, scaling values) for the flags."""
  if args.model == "classification":
    return build_classifier(args)
  if args.model == "maskrcnn":
    return build_maskrcnn(args)
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.vision.modeling import factory  # pylint: disable=g-import-not-at-top
  size = args.image_size
  config = exp_factory.get_exp_config("retinanet_spinenet_coco")
  model_cfg = config.task.model
  model_cfg.num_classes = args.num_classes
  model_cfg.input_size = [size, size, 3]
  model_cfg.min_level = args.min_level
  model_cfg.max_level = args.max_level
  model_cfg.anchor.num_scales = 3
  model_cfg.anchor.aspect_ratios = [0.5, 1.0, 2.0]
  model_cfg.anchor.anchor_size = args.anchor_size
  model_cfg.head.num_convs = args.head_num_convs
  model_cfg.head.num_filters = args.head_num_filters
  model_cfg.head.use_separable_conv = args.head_use_separable_conv
  model_cfg.norm_activation.activation = args.activation
  model_cfg.norm_activation.use_sync_bn = False
  model_cfg.norm_activation.norm_momentum = 0.99
  model_cfg.norm_activation.norm_epsilon = 1e-3
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  backbone, values = build_backbone(args, input_specs)
  model = factory.build_retinanet(input_specs=input_specs,
                                  model_config=model_cfg, backbone=backbone)
  return model, values


def build_classifier(args):
  """Model Garden's ClassificationModel on the flags' backbone.

  It pools the backbone's endpoint of the largest key (max_level) only
  (module official.vision.modeling.classification_model of
  tf-models-official), then dropout (0
  here) and a dense layer.
  """
  from official.vision.modeling import classification_model  # pylint: disable=g-import-not-at-top
  size = args.image_size
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  backbone, values = build_backbone(args, input_specs)
  model = classification_model.ClassificationModel(
      backbone=backbone, num_classes=args.num_classes,
      input_specs=input_specs, dropout_rate=0.0)
  return model, values


def build_maskrcnn(args):
  """Model Garden's Mask R-CNN (`maskrcnn_spinenet_coco`) on the flags.

  The experiment's identity decoder, levels min..max_level for the RPN and
  ROI Align, 1 anchor scale x 3 aspect ratios, the heads' sizes from the
  flags, batch norm momentum 0.99 and epsilon 1e-3 everywhere (the
  experiment's NormActivation; the mask head takes no use_sync_bn).
  """
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.vision.modeling import factory  # pylint: disable=g-import-not-at-top
  size = args.image_size
  config = exp_factory.get_exp_config("maskrcnn_spinenet_coco")
  model_cfg = config.task.model
  model_cfg.num_classes = args.num_classes
  model_cfg.input_size = [size, size, 3]
  model_cfg.min_level = args.min_level
  model_cfg.max_level = args.max_level
  model_cfg.anchor.num_scales = 1
  model_cfg.anchor.aspect_ratios = [0.5, 1.0, 2.0]
  model_cfg.anchor.anchor_size = args.anchor_size
  model_cfg.rpn_head.num_convs = args.rpn_num_convs
  model_cfg.rpn_head.num_filters = args.rpn_num_filters
  model_cfg.detection_head.num_convs = args.frcnn_num_convs
  model_cfg.detection_head.num_filters = args.frcnn_num_filters
  model_cfg.detection_head.num_fcs = args.frcnn_num_fcs
  model_cfg.detection_head.fc_dims = args.frcnn_fc_dims
  model_cfg.mask_head.num_convs = args.mask_num_convs
  model_cfg.mask_head.num_filters = args.mask_num_filters
  model_cfg.roi_generator.test_num_proposals = args.test_num_proposals
  model_cfg.detection_generator.max_num_detections = args.max_num_detections
  model_cfg.norm_activation.activation = args.activation
  model_cfg.norm_activation.use_sync_bn = False
  model_cfg.norm_activation.norm_momentum = 0.99
  model_cfg.norm_activation.norm_epsilon = 1e-3
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  backbone, values = build_backbone(args, input_specs)
  model = factory.build_maskrcnn(input_specs=input_specs,
                                 model_config=model_cfg, backbone=backbone)
  return model, values


def maskrcnn_outputs(model, images):
  """Model Garden's Mask R-CNN outputs on images, raw and post-processed.

  MaskRCNNModel returns the RPN outputs, the class and box outputs of the
  Fast R-CNN head and the detections, but not the proposals those outputs
  belong to; `_call_box_outputs` (what its call runs first) returns them
  as `current_rois`. The mask logits are recomputed from the detections
  with `_features_to_mask_outputs` (its call returns their sigmoid only).

  Returns:
    {name: numpy array}: `rpn_scores/<level>` [B, H_l, W_l, A],
    `rpn_boxes/<level>` [B, H_l, W_l, 4 A], `rois` [B, N, 4] (input
    pixels), `class_outputs` [B, N, C] and `box_outputs` [B, N, 4 C] on
    those ROIs, `mask_outputs` [B, D, 28, 28] logits of each detection's
    class, and `detection_boxes`, `detection_scores`, `detection_classes`,
    `num_detections`, `detection_masks` [B, D, 28, 28] probabilities.
  """
  # pylint: disable=protected-access
  size = images.shape[1:3]
  image_shape = tf.constant([list(size)] * len(images), tf.float32)
  images = tf.constant(images)
  outputs = model(images, image_shape=image_shape, training=False)
  _, intermediate = model._call_box_outputs(
      images=images, image_shape=image_shape, training=False)
  mask_logits, _ = model._features_to_mask_outputs(
      outputs["decoder_features"], outputs["detection_boxes"],
      outputs["detection_classes"])
  # pylint: enable=protected-access
  arrays = {}
  for group in ("rpn_scores", "rpn_boxes"):
    for level, value in outputs[group].items():
      arrays[f"{group}/{level}"] = value.numpy()
  arrays["rois"] = intermediate["current_rois"].numpy()
  for key in ("class_outputs", "box_outputs", "detection_boxes",
              "detection_scores", "detection_classes", "num_detections",
              "detection_masks"):
    arrays[key] = outputs[key].numpy()
  arrays["mask_outputs"] = mask_logits.numpy()
  return arrays


def _maskrcnn_predictors(model):
  """(prediction layers, the class bias) of Model Garden's Mask R-CNN."""
  # pylint: disable=protected-access
  detection = model.detection_head[0]
  layers = (model.rpn_head._classifier, model.rpn_head._box_regressor,
            detection._classifier, detection._box_regressor,
            model.mask_head._mask_regressor)
  # pylint: enable=protected-access
  return layers, detection._classifier.bias  # pylint: disable=protected-access


def randomise_maskrcnn(model, rng):
  """Random batch-norm statistics and prediction layers of a Mask R-CNN.

  Batch norms as in `randomise`. Every prediction layer's kernel is
  N(0, 1 / sqrt(fan_in)) (the RPN and box regressors 0.3 / sqrt(fan_in))
  instead of Model Garden's N(0, 1e-5) .. N(0, 0.01): with those, the RPN
  scores all tie at 0.5 (the proposals would be an arbitrary order of
  ties), the class scores are uniform and the masks 0.5 everywhere, so
  that a head mapped wrongly could not show. The class bias is U(-1, 1).
  """
  predictors, class_bias = _maskrcnn_predictors(model)
  regressors = {id(v) for layer in (predictors[1], predictors[3])
                for v in layer.weights}
  kernels = {id(layer.kernel) for layer in predictors}
  for v in model.weights:
    name = v.name.split(":")[0].split("/")[-1]
    shape = v.shape.as_list()
    if v is class_bias:
      value = rng.uniform(-1.0, 1.0, shape)
    elif id(v) in kernels:
      fan_in = int(_prod(shape[:-1]))
      scale = 0.3 if id(v) in regressors else 1.0
      value = rng.normal(0.0, scale / fan_in ** 0.5, shape)
    elif name == "gamma":
      value = rng.uniform(0.5, 1.5, shape)
    elif name in ("beta", "moving_mean"):
      value = rng.normal(0.0, 0.2, shape)
    elif name == "moving_variance":
      value = rng.uniform(0.5, 2.0, shape)
    else:
      continue
    v.assign(value.astype(v.dtype.as_numpy_dtype))


def _prod(values):
  result = 1
  for value in values:
    result *= int(value)
  return result


def _se_weights(model):
  """ids of the squeeze-excitation convs' variables (SpineNet-Mobile)."""
  found = set()
  backbone = getattr(model, "backbone", None) or model.layers[0]
  for layer in backbone.layers:
    se = getattr(layer, "_squeeze_excitation", None)
    if se is not None:
      found.update(id(v) for v in se.weights)
  return found


def randomise(model, rng, se_init_scale=None):
  """Random batch-norm statistics and visible prediction layers (see doc).

  With se_init_scale, also the squeeze-excitation convs (see --se_init_scale):
  Model Garden's initialisation leaves their pre-activations near 0, where
  ReLU and swish, hard sigmoid and sigmoid nearly agree, so a fixture could
  not tell its squeeze-excitation from another.
  """
  se_weights = _se_weights(model) if se_init_scale else set()
  if isinstance(getattr(model, "head", None), tf_keras.layers.Layer):
    head = model.head
    predictors = {id(v) for layer in (head._classifier, head._box_regressor)  # pylint: disable=protected-access
                  for v in layer.weights}
    class_bias = head._classifier.bias  # pylint: disable=protected-access
  else:
    predictors, class_bias = set(), None
  for v in model.weights:
    name = v.name.split(":")[0].split("/")[-1]
    shape = v.shape.as_list()
    if v is class_bias:
      value = rng.uniform(-4.0, -1.0, shape)
    elif id(v) in se_weights and name == "kernel":
      value = rng.normal(0.0, se_init_scale / _prod(shape[:-1]) ** 0.5, shape)
    elif id(v) in se_weights and name == "bias":
      value = rng.normal(0.0, se_init_scale, shape)
    elif id(v) in predictors and name == "depthwise_kernel":
      # Separable predictors: N(0, 0.01) in both factors would make every
      # logit its bias (all scores tied); 1/3 gives the 3x3 sum unit scale.
      value = rng.normal(0.0, 1.0 / 3.0, shape)
    elif id(v) in predictors and name == "pointwise_kernel":
      value = rng.normal(0.0, 0.3 / shape[-2] ** 0.5, shape)
    elif id(v) in predictors and "kernel" in name:
      value = rng.normal(0.0, 0.01, shape)
    elif name == "gamma":
      value = rng.uniform(0.5, 1.5, shape)
    elif name in ("beta", "moving_mean"):
      value = rng.normal(0.0, 0.2, shape)
    elif name == "moving_variance":
      value = rng.uniform(0.5, 2.0, shape)
    else:
      continue
    v.assign(value.astype(v.dtype.as_numpy_dtype))


def our_gin_params(args, values):
  """Bindings that give this repository's model the same architecture."""
  backbone = "spinenet" if args.backbone == "spinenet" else "spinenet_mbconv"
  if args.model == "classification":
    # Model Garden pools the max_level endpoint alone.
    params = [f"ClassificationTask.backbone = @{backbone}",
              f"ClassificationTask.image_size = {args.image_size}",
              f"ClassificationTask.num_classes = {args.num_classes}",
              f"ClassificationTask.head_levels = [{args.max_level}]",
              f"{backbone}.require_divisible_input = False"]
  elif args.model == "maskrcnn":
    params = [f"MaskRCNNTask.backbone = @{backbone}"] + _maskrcnn_params(
        args)
  else:
    params = [f"RetinaNetTask.backbone = @{backbone}"] + _retinanet_params(
        args)
  params.append(f"norm_activation.activation = '{args.activation}'")
  params.append(f"{backbone}.model_id = '{args.model_id}'")
  for key, value in sorted(values.items()):
    params.append(f"{backbone}.{key} = {value!r}")
  params += [f"{backbone}.min_level = {args.min_level}",
             f"{backbone}.max_level = {args.max_level}"]
  return params


def _retinanet_params(args):
  return [f"RetinaNetTask.image_size = {args.image_size}",
            f"RetinaNetTask.num_classes = {args.num_classes}",
            f"RetinaNetTask.min_level = {args.min_level}",
            f"RetinaNetTask.max_level = {args.max_level}",
            f"RetinaNetTask.anchor_size = {args.anchor_size}",
            f"RetinaNetTask.head_num_convs = {args.head_num_convs}",
            f"RetinaNetTask.head_num_filters = {args.head_num_filters}",
            "RetinaNetTask.head_use_separable_conv = "
            f"{args.head_use_separable_conv}"]


def _maskrcnn_params(args):
  return [f"MaskRCNNTask.image_size = {args.image_size}",
          f"MaskRCNNTask.num_classes = {args.num_classes}",
          f"MaskRCNNTask.min_level = {args.min_level}",
          f"MaskRCNNTask.max_level = {args.max_level}",
          "MaskRCNNTask.num_scales = 1",
          "MaskRCNNTask.aspect_ratios = (0.5, 1.0, 2.0)",
          f"MaskRCNNTask.anchor_size = {args.anchor_size}",
          f"MaskRCNNTask.rpn_num_convs = {args.rpn_num_convs}",
          f"MaskRCNNTask.rpn_num_filters = {args.rpn_num_filters}",
          f"MaskRCNNTask.frcnn_num_convs = {args.frcnn_num_convs}",
          f"MaskRCNNTask.frcnn_num_filters = {args.frcnn_num_filters}",
          f"MaskRCNNTask.frcnn_num_fcs = {args.frcnn_num_fcs}",
          f"MaskRCNNTask.frcnn_fc_dims = {args.frcnn_fc_dims}",
          f"MaskRCNNTask.mask_num_convs = {args.mask_num_convs}",
          f"MaskRCNNTask.mask_num_filters = {args.mask_num_filters}",
          "MaskRCNNTask.test_rpn_post_nms_top_k = "
          f"{args.test_num_proposals}",
          f"MaskRCNNTask.max_detections = {args.max_num_detections}",
          # Model Garden's ROI Align (modeling/ops/roi_align.py).
          "MaskRCNNTask.roi_aligned = False",
          "MaskRCNNTask.roi_sampling_ratio = 1"]


def main():
  args = parse_args()
  if args.se_init_scale is not None and args.backbone != "spinenet_mobile":
    raise ValueError("--se_init_scale applies to --backbone=spinenet_mobile "
                     f"(its squeeze-excitations), not {args.backbone}.")
  if args.activation is None:
    args.activation = "relu" if args.backbone == "spinenet" else "swish"
  global tf, tf_keras  # pylint: disable=global-variable-undefined
  check_isolated()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import tf_keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from official.vision import registry_imports  # pylint: disable=g-import-not-at-top,unused-import

  tf.random.set_seed(args.seed)
  tf_keras.utils.set_random_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  model, values = build_model(args)
  size = args.image_size
  if args.images:
    images = np.load(args.images).astype(np.float32)
    if images.shape[1:] != (size, size, 3):
      raise ValueError(f"--images={args.images} holds {images.shape}; "
                       f"expected [batch, {size}, {size}, 3].")
  else:
    images = rng.normal(0.0, 1.0, (args.batch_size, size, size, 3)).astype(
        np.float32)
  if args.model == "maskrcnn":
    # Every weight exists once the model has run (the heads build lazily).
    maskrcnn_outputs(model, images)
    randomise_maskrcnn(model, rng)
  else:
    model(tf.constant(images), training=False)  # Creates the head's weights.
    randomise(model, rng, args.se_init_scale)
  arrays = {}
  if args.model == "maskrcnn":
    arrays = maskrcnn_outputs(model, images)
  elif args.model == "classification":
    arrays["logits"] = model(tf.constant(images), training=False).numpy()
  else:
    # The image shape makes Model Garden clip the decoded boxes to the
    # image before NMS, as evaluation does (ours clips to the input size).
    image_shape = tf.constant([[size, size]] * len(images), tf.float32)
    outputs = model(tf.constant(images), image_shape=image_shape,
                    training=False)
    for group in ("cls_outputs", "box_outputs"):
      for level, value in outputs[group].items():
        arrays[f"{group}/{level}"] = value.numpy()
    for key in ("detection_boxes", "detection_scores", "detection_classes",
                "num_detections"):
      arrays[key] = outputs[key].numpy()

  os.makedirs(args.output_dir, exist_ok=True)
  if not args.images:
    np.save(os.path.join(args.output_dir, "images.npy"), images)
  np.savez_compressed(os.path.join(args.output_dir, "outputs.npz"), **arrays)
  checkpoint = tf.train.Checkpoint(
      model=model, global_step=tf.Variable(0, dtype=tf.int64))
  path = checkpoint.write(os.path.join(args.output_dir, "ckpt"))
  flags = {k: v for k, v in vars(args).items()
           if k not in ("output_dir", "images")}
  if args.images:  # Recorded relative to the fixture directory.
    flags["images"] = os.path.relpath(os.path.realpath(args.images),
                                      os.path.realpath(args.output_dir))
  spec = {"flags": flags, "scaling": values,
          "versions": {"tensorflow": tf.__version__,
                       "tf_keras": tf_keras.__version__,
                       "tf_models_official": _version("tf-models-official")},
          "checkpoint": os.path.basename(path),
          "num_model_variables": len(model.weights),
          "num_detections": (arrays["num_detections"].tolist()
                             if "num_detections" in arrays else None),
          "our_gin_params": our_gin_params(args, values)}
  with open(os.path.join(args.output_dir, "spec.json"), "w") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
    f.write("\n")
  print(json.dumps({"output_dir": args.output_dir, "checkpoint": path,
                    "num_detections": spec["num_detections"],
                    "num_model_variables": spec["num_model_variables"]}))


def _version(distribution):
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:
    return None


if __name__ == "__main__":
  main()
