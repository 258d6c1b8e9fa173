r"""Imports a Model Garden checkpoint into a model of this project.

  python -m official.import_checkpoint --source=model_garden \
    --checkpoint=PREFIX --gin_file=EXPERIMENT [--gin_param=...] \
    --output_dir=DIR \
    [--check_images=IMAGES.npy --check_outputs=OUTPUTS.npz] \
    [--check_tolerance=1e-4] [--check_box_tolerance=1e-3]

The experiment's gin files build our model (as official.train would); the
checkpoint (a TF2 checkpoint prefix written by Model Garden, read with
tf.train.load_checkpoint; Model Garden need not be installed) is mapped onto
it variable by variable (official/core/model_garden_import.py says how).
Implemented: RetinaNet with a SpineNet backbone (any model id or scaling,
the identity decoder); the SpineNet classifier when ours pools the same
level (ClassificationTask.head_levels = [max_level]; Model Garden pools
that endpoint alone); SpineNet-MBConv RetinaNets (Model Garden's
SpineNet-Mobile) when ours are built with Model Garden's squeeze-excitation,
ReLU and a hard sigmoid (--gin_param="spinenet_mbconv.se_inner_activation =
'relu'" --gin_param="spinenet_mbconv.se_gating = 'hard_sigmoid'"); with our
default (the block activation and a sigmoid) they map variable for variable
but are refused, naming those bindings
(official/core/model_garden_import.py, SE_DIFFERENCE). SpineNet Mask R-CNNs
(and Faster R-CNNs: backbone, RPN, Fast R-CNN and mask heads) import when
our ROI Align is Model Garden's, one sample per bin without the half-cell
shift (--gin_param="MaskRCNNTask.roi_aligned = False"
--gin_param="MaskRCNNTask.roi_sampling_ratio = 1"); with our default
(aligned, 2 x 2 samples) they map variable for variable but are refused,
naming those bindings (ROI_ALIGN_DIFFERENCE there).

DIR then holds config.gin (the gin files and bindings given here), ckpt-0
and the `checkpoint` index, the layout of a training run's model directory,
so that

  python -m official.train --mode=eval --model_dir=DIR
  python -m official.export --model_dir=DIR --export_dir=OUT
  --gin_param="Trainer.init_checkpoint='DIR'"   (fine-tuning)

accept it; import_report.json lists what was mapped and the check's figures.

Nothing is written when the checkpoint is not the configured network: a
variable of ours with no counterpart, a variable of the checkpoint's model
that nothing of ours computes, or a pair of different shapes fails with the
list (names on both sides, shapes), and DIR is not created.

--check_images / --check_outputs: the imported model is run on the images
(float32 [batch, H, W, 3], already normalised, H = W = the config's image
size) and its raw head outputs are compared with the arrays of the .npz,
named as Model Garden's output dict flattens them (`cls_outputs/3` ...
`box_outputs/7`; a classifier's `logits`; a Mask R-CNN's as
compare_maskrcnn_outputs says); the max abs difference per output is printed, and the
import fails (writing nothing) when one exceeds --check_tolerance. When the
.npz also holds Model Garden's post-processed `detection_boxes`,
`detection_scores`, `detection_classes` and `num_detections`, our
post-processing's detections must pair with them one to one: the same
classes, boxes within --check_box_tolerance pixels and scores within
--check_tolerance. A detection without a partner passes only when a tie
at a selection boundary explains it (scores equal within --check_tolerance
at NMS, at the last kept detection or at the pre-NMS top-k; the two NMS
implementations break such ties in different orders): _compare_detections
gives the rules, and the printed summary counts each.
scripts/make_model_garden_fixture.py writes such files from Model Garden
itself.

Exit status 0 on success; 1 with "official.import_checkpoint: Error:
message" as the last line otherwise.
"""

import sys

import gin
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from modeling.ops import postprocess
from official import registry
from official.core import checkpointing
from official.core import gin_config
from official.core import model_garden_import
from official.evaluation.detection_agreement import box_iou
from official.tasks.classification import ClassificationTask
from official.tasks.maskrcnn import MaskRCNNTask
from official.tasks.retinanet import RetinaNetTask

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs as a command: tests and
  other entry points import this module beside their own --gin_file."""
  flags.DEFINE_enum("source", "model_garden", ["model_garden"],
                    "Where the checkpoint comes from.")
  flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix.")
  flags.DEFINE_multi_string("gin_file", [], "Gin files building our model.")
  flags.DEFINE_multi_string("gin_param", [], "Gin bindings, after the files.")
  flags.DEFINE_string("output_dir", None, "Where to write ckpt-0 and "
                      "config.gin; must not hold a checkpoint already.")
  flags.DEFINE_string("check_images", None, "A .npy of float32 images "
                      "[batch, H, W, 3] (normalised).")
  flags.DEFINE_string("check_outputs", None, "A .npz of Model Garden's outputs "
                      "on --check_images.")
  flags.DEFINE_float("check_tolerance", 1e-4, "Max abs difference allowed "
                     "between raw outputs (and between detection scores).")
  flags.DEFINE_float("check_box_tolerance", 1e-3, "Max abs difference of "
                     "detection boxes, in pixels.")


REPORT_FILE = "import_report.json"
DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes",
                  "num_detections")


class ImportCheckError(ValueError):
  """The imported model's outputs differ from the reference outputs."""


def build_model(gin_files, gin_params):
  """(task, model) from gin, as official.train builds them."""
  gin_config.parse_gin(gin_files, gin_params, skip_unknown=False)
  task = registry.experiment()
  model = task.build_model()
  return task, model


def map_model(task, model, checkpoint):
  """The Mapping for the task's model; raises for an unsupported task."""
  if isinstance(task, RetinaNetTask):
    return model_garden_import.map_retinanet(checkpoint, model), "RetinaNet"
  if isinstance(task, ClassificationTask):
    return model_garden_import.map_classifier(checkpoint, model), "classifier"
  if isinstance(task, MaskRCNNTask):  # FasterRCNNTask too (no mask head).
    what = "Mask R-CNN" if model.mask_head is not None else "Faster R-CNN"
    return model_garden_import.map_maskrcnn(checkpoint, model), what
  raise model_garden_import.ImportMismatchError(
      f"Importing Model Garden checkpoints is implemented for RetinaNetTask, "
      f"ClassificationTask and MaskRCNNTask (FasterRCNNTask) with a SpineNet "
      f"or SpineNet-MBConv backbone; the config builds a "
      f"{type(task).__name__}.")


def flat_outputs(outputs):
  """{"cls_outputs/3": array, ...}: Model Garden's flattened names.

  A classifier's logits [batch, num_classes] are "logits".
  """
  if not isinstance(outputs, dict):
    return {"logits": np.asarray(outputs)}
  flat = {}
  for group in ("cls_outputs", "box_outputs"):
    for level, value in outputs[group].items():
      flat[f"{group}/{level}"] = np.asarray(value)
  return flat


def compare_outputs(task, model, images, expected, tolerance,
                    box_tolerance):
  """Runs the model on images and compares with Model Garden's outputs.

  Args:
    task: the task (its `detect` post-processes RetinaNet outputs).
    model: the imported model.
    images: float32 [batch, H, W, 3].
    expected: {name: array} from the .npz.
    tolerance: max abs difference allowed per raw output (and score).
    box_tolerance: max abs difference of detection boxes, pixels.

  Returns:
    dict: "max_abs_diff" {output name: float}, and with detections
    "detections" (_compare_detections' dict: "num_detections" [...],
    "max_box_diff_px", "max_score_diff", "classes_equal", "num_paired",
    "num_unpaired", "unpaired_explained_by", ...).

  Raises:
    ImportCheckError: an output is absent on one side, of another shape, or
      differs beyond the tolerances (every output is listed).
  """
  outputs = model(tf.constant(images), training=False)
  ours = flat_outputs(outputs)
  raw_expected = {k: v for k, v in expected.items() if k not in DETECTION_KEYS}
  problems, diffs = [], {}
  for name in sorted(set(ours) | set(raw_expected), key=_output_order):
    if name not in ours or name not in raw_expected:
      side = "ours" if name not in ours else "the .npz"
      problems.append(f"{name}: absent from {side}")
      continue
    if ours[name].shape != raw_expected[name].shape:
      problems.append(f"{name}: shape {list(ours[name].shape)} (ours) vs "
                      f"{list(raw_expected[name].shape)} (expected)")
      continue
    diffs[name] = float(np.max(np.abs(ours[name] - raw_expected[name])))
    if not diffs[name] <= tolerance:
      problems.append(f"{name}: max abs difference {diffs[name]:.3g} > "
                      f"{tolerance:g}")
  result = {"max_abs_diff": diffs}
  if all(k in expected for k in DETECTION_KEYS) and isinstance(outputs, dict):
    result["detections"] = _compare_detections(
        task.detect(outputs), expected, tolerance, box_tolerance, problems,
        task.postprocess_args["nms_iou_threshold"],
        _retinanet_candidates(task, outputs))
  _raise_if_problems(problems)
  return result


def _retinanet_candidates(task, outputs):
  """Our pre-NMS candidates: the top pre_nms_top_k (anchor, class) pairs.

  Our own post-processing (modeling/ops/postprocess.py) with nothing
  suppressed (IoU threshold 1, which no IoU exceeds) and every candidate
  kept, so the decode and clipping are those of the
  detections. Returns its dict ([B, K]) plus "top_k" (K).
  """
  args = dict(task.postprocess_args)
  # (anchor, class) pairs per image: logits / num_classes * real classes.
  pairs = sum(int(np.prod(v.shape[1:])) for v in
              outputs["cls_outputs"].values()) // task.num_classes
  top_k = min(int(args["pre_nms_top_k"]), pairs * (task.num_classes - 1))
  args.update(nms_iou_threshold=1.0, max_detections=top_k, score_threshold=0.0,
              nms_method="combined")
  candidates = postprocess.multilevel_detections(
      outputs["cls_outputs"], outputs["box_outputs"], task.anchors,
      (task.image_size, task.image_size), num_classes=task.num_classes, **args)
  return dict({k: np.asarray(v) for k, v in candidates.items()}, top_k=top_k)


def _raise_if_problems(problems):
  """ImportCheckError listing every output over its tolerance, if any."""
  if problems:
    raise ImportCheckError(
        "The imported model's outputs differ from the expected ones; nothing "
        "was written:\n  " + "\n  ".join(problems))


def _output_order(name):
  group, _, level = name.partition("/")
  return (group, int(level) if level.isdigit() else 0, name)


# Why an unpaired detection may still be the same function's output: the
# rules of _compare_detections, by the name the report counts them under.
TIE_RULES = {
    "nms_tie": "NMS ties (a same-class unpaired detection of the other side "
               "overlaps it with IoU above the NMS threshold, scores within "
               "{tol:g})",
    "max_detections": "the last-score boundary (the other side kept its "
                      "maximum number, the last within {tol:g} of this one)",
    "pre_nms_top_k": "the pre-NMS top-k boundary (score within {tol:g} of "
                     "our k-th candidate's)",
}


def _compare_detections(ours, expected, tolerance, box_tolerance, problems,
                        nms_iou_threshold=None, candidates=None):
  """Detections of both sides, image by image (see compare_outputs).

  Raw outputs that agree to `tolerance` still leave scores equal within
  float rounding, and the selections of post-processing (pre-NMS top-k,
  greedy NMS, the first max_detections) break such ties in an order each
  implementation chooses: tf.image.combined_non_max_suppression takes
  tied boxes in its priority queue's order, Model Garden's v2 generator
  (per-class top-k, sorted_non_max_suppression_padded) the lower anchor
  index first, as our nms_method="batched" does. Of a row of overlapping
  boxes of one score, each side then keeps other members: same network,
  other detections. So:

  1. Detections pair one to one: same class, score within `tolerance`,
     box within `box_tolerance` pixels, at the same rank where that one
     fits (ties reorder ranks). Box and score differences are measured on
     the pairs.
  2. An unpaired detection of Model Garden's must be one of our pre-NMS
     candidates (`candidates`, same class, score and box within the
     tolerances), i.e. our decode and scores produce it and only the
     selection differs -- unless its score is within `tolerance` of our
     k-th candidate's ("pre_nms_top_k").
  3. An unpaired detection (either side) is accepted when the other side
     has an unpaired detection of the same class overlapping it with IoU >
     nms_iou_threshold and a score within `tolerance` ("nms_tie": NMS
     kept the one and suppressed the other on one side, the reverse on
     the other), or when the other side holds its maximum number of
     detections (the arrays' width) and the last of them scores at least
     this one's score minus `tolerance` ("max_detections").

  Anything else (a different class, a box moved by more than
  box_tolerance without a tie to explain it, another number of
  detections left unexplained) is a problem naming the detection.

  Args:
    ours: {"boxes" [B, D, 4] pixels, "scores" [B, D], "classes" [B, D],
      "num_detections" [B]} from our post-processing.
    expected: the .npz's `detection_boxes`, `detection_scores`,
      `detection_classes`, `num_detections` (widths may differ from D).
    tolerance: max abs score difference of a pair, and the width of a tie.
    box_tolerance: max abs box coordinate difference of a pair, pixels.
    problems: list the problems are appended to.
    nms_iou_threshold: our NMS IoU threshold; None disables "nms_tie".
    candidates: our pre-NMS candidates, the same dict layout ([B, K]),
      plus "top_k" (int, the cut-off); None makes every unpaired detection
      of Model Garden's a problem.

  Returns:
    dict: "num_detections" (Model Garden's, per image), "max_box_diff_px"
    and "max_score_diff" (over the pairs), "classes_equal" (no detection
    left unexplained), "num_reordered_among_tied_scores", "num_paired",
    "num_unpaired" {"ours", "expected"}, "unpaired_explained_by"
    {rule name of TIE_RULES: count}.
  """
  sides = []
  for arrays, keys in ((ours, ("classes", "scores", "boxes",
                               "num_detections")),
                       (expected, ("detection_classes", "detection_scores",
                                   "detection_boxes", "num_detections"))):
    sides.append(tuple(np.asarray(arrays[k]) for k in keys))
  box_diff, score_diff, reordered, paired = 0.0, 0.0, 0, 0
  unpaired = {"ours": 0, "expected": 0}
  explained = {rule: 0 for rule in TIE_RULES}
  unexplained = []
  for b in range(len(sides[1][3])):
    dets, full = [], []
    for classes, scores, boxes, count in sides:
      n = int(count[b])
      dets.append((classes[b, :n].astype(np.int64),
                   scores[b, :n].astype(np.float64),
                   boxes[b, :n].astype(np.float64)))
      full.append(n == classes.shape[1])
    order = _match_detections(dets[0], dets[1], tolerance, box_tolerance)
    mine_paired = np.flatnonzero(order >= 0)
    if mine_paired.size:
      j = order[mine_paired]
      box_diff = max(box_diff, float(np.max(np.abs(
          dets[0][2][mine_paired] - dets[1][2][j]))))
      score_diff = max(score_diff, float(np.max(np.abs(
          dets[0][1][mine_paired] - dets[1][1][j]))))
    paired += int(mine_paired.size)
    reordered += int(np.sum(order[mine_paired] != mine_paired))
    free = [np.flatnonzero(order < 0),
            np.setdiff1d(np.arange(len(dets[1][0])), order[mine_paired])]
    unpaired["ours"] += int(free[0].size)
    unpaired["expected"] += int(free[1].size)
    for side in (0, 1):
      other = 1 - side
      for i in free[side]:
        cls, score, box = (a[i] for a in dets[side])
        rule = "candidate"
        if side == 1:  # Model Garden's: must be a candidate of ours.
          rule = _candidate_rule(candidates, b, cls, score, box, tolerance,
                                 box_tolerance)
        if rule == "candidate":
          rule = _selection_rule((cls, score, box), dets[other], free[other],
                                 full[other], tolerance, nms_iou_threshold)
        if rule:
          explained[rule] += 1
        else:
          unexplained.append(
              f"image {b}: {('our', 'the expected')[side]} detection {i} "
              f"(class {cls}, score {score:.7g}, box "
              f"{np.round(box, 2).tolist()}) has no partner (same class, "
              f"score within {tolerance:g}, box within {box_tolerance:g} px) "
              "and no tie at a selection boundary explains it" +
              ("" if side == 0 or candidates is not None else
               " (no pre-NMS candidates of ours to check it against)"))
  if unexplained:
    problems.append(f"detections: {len(unexplained)} unexplained:\n    " +
                    "\n    ".join(unexplained[:10]) +
                    ("\n    ..." if len(unexplained) > 10 else ""))
  if box_diff > box_tolerance:
    problems.append(f"detection boxes: max abs difference {box_diff:.3g} px "
                    f"> {box_tolerance:g}")
  if score_diff > tolerance:
    problems.append(f"detection scores: max abs difference {score_diff:.3g} "
                    f"> {tolerance:g}")
  return {"num_detections": sides[1][3].astype(np.int64).tolist(),
          "max_box_diff_px": box_diff, "max_score_diff": score_diff,
          "classes_equal": not unexplained,
          "num_reordered_among_tied_scores": reordered,
          "num_paired": paired, "num_unpaired": unpaired,
          "unpaired_explained_by": {k: v for k, v in explained.items() if v}}


def detection_summary(result, tolerance):
  """One line: how many detections paired and why the others may differ."""
  unpaired = result.get("num_unpaired", {})
  line = (f"detections paired: {result['num_paired']} "
          f"({result['num_reordered_among_tied_scores']} out of rank among "
          f"tied scores)")
  if not sum(unpaired.values()):
    return line + "; none unpaired"
  line += (f"; unpaired: {unpaired['ours']} of ours, {unpaired['expected']} "
           "of the expected")
  reasons = [f"{n} at {TIE_RULES[rule].format(tol=tolerance)}"
             if rule != "nms_tie" else
             f"{n} by {TIE_RULES[rule].format(tol=tolerance)}"
             for rule, n in result["unpaired_explained_by"].items()]
  return line + ("; explained: " + "; ".join(reasons) if reasons else "")


def _match_detections(mine, theirs, tolerance, box_tolerance):
  """Index into theirs for each of mine (-1: none), one to one.

  Same class, score within tolerance, box within box_tolerance; the same
  rank when that one fits, else the first free fit in rank order.
  """
  classes, scores, boxes = theirs
  free = np.ones(len(classes), bool)
  order = np.full(len(mine[0]), -1, np.int64)
  for i, (cls, score, box) in enumerate(zip(*mine)):
    fits = free & (classes == cls) & (np.abs(scores - score) <= tolerance)
    if len(boxes):
      fits &= np.max(np.abs(boxes - box), axis=-1) <= box_tolerance
    if fits.any():
      order[i] = i if i < len(fits) and fits[i] else int(
          np.flatnonzero(fits)[0])
      free[order[i]] = False
  return order


def _pair_detections(mine, theirs, tolerance, box_tolerance):
  """Index into theirs for each of mine, or None when one has no partner."""
  order = _match_detections(mine, theirs, tolerance, box_tolerance)
  return None if np.any(order < 0) or len(mine[0]) != len(theirs[0]) else order


def _candidate_rule(candidates, b, cls, score, box, tolerance, box_tolerance):
  """"candidate" when (cls, score, box) is one of our pre-NMS candidates of
  image b; "pre_nms_top_k" when not but its score is within tolerance of
  the k-th candidate's; None otherwise (or without candidates)."""
  if candidates is None:
    return None
  n = int(np.asarray(candidates["num_detections"])[b])
  classes = np.asarray(candidates["classes"])[b, :n]
  scores = np.asarray(candidates["scores"])[b, :n].astype(np.float64)
  boxes = np.asarray(candidates["boxes"])[b, :n].astype(np.float64)
  if np.any((classes == cls) & (np.abs(scores - score) <= tolerance) &
            (np.max(np.abs(boxes - box), axis=-1) <= box_tolerance)):
    return "candidate"
  if n == candidates["top_k"] and score <= scores.min() + tolerance:
    return "pre_nms_top_k"
  return None


def _selection_rule(detection, other, other_free, other_full, tolerance,
                    nms_iou_threshold):
  """"nms_tie", "max_detections" or None for an unpaired detection given
  the other side's detections (classes, scores, boxes), the indices of
  its unpaired ones and whether it holds its maximum number."""
  cls, score, box = detection
  classes, scores, boxes = other
  if nms_iou_threshold is not None and other_free.size:
    rivals = other_free[(classes[other_free] == cls) &
                        (np.abs(scores[other_free] - score) <= tolerance)]
    if rivals.size and np.any(
        box_iou(boxes[rivals], box)[:, 0] > nms_iou_threshold):
      return "nms_tie"
  if other_full and len(scores) and score <= scores.min() + tolerance:
    return "max_detections"
  return None


# --- Mask R-CNN (and Faster R-CNN) outputs.

# What the .npz of a Mask R-CNN holds besides DETECTION_KEYS, as
# scripts/make_model_garden_fixture.py --model=maskrcnn writes it
# (Model Garden's names): the RPN outputs per level, the proposals,
# the Fast R-CNN head's outputs on those proposals and the mask head's
# logits on the detections.
MASKRCNN_ROIS = "rois"
MASKRCNN_MASKS = "detection_masks"


def maskrcnn_raw_outputs(model, images, rois, mask_boxes, mask_classes):
  """Our Mask R-CNN's raw outputs, the second stage on the given ROIs.

  The second stage depends on the proposals, which come out of top-k and
  NMS: a difference in the 7th digit of two objectness scores can swap
  two proposals. So the Fast R-CNN head is run on the reference's
  proposals and the mask head on the reference's detections, and each
  head is compared on the same input; the proposals themselves are
  compared as the output `rois`.

  Args:
    model: our MaskRCNNModel.
    images: float32 [B, S, S, 3].
    rois: float32 [B, N, 4] proposals (pixels) for the Fast R-CNN head.
    mask_boxes: float32 [B, D, 4] boxes for the mask head, or None.
    mask_classes: int [B, D] their classes, or None.

  Returns:
    {name: numpy array}, named as the .npz: `rpn_scores/<level>`,
    `rpn_boxes/<level>`, `rois` (our proposals), `class_outputs`,
    `box_outputs` (on `rois` given), and `mask_outputs` (logits of each
    box's class) when mask_boxes is given and the model has a mask head.
  """
  # pylint: disable=protected-access
  settings = model._settings
  images = tf.constant(images)
  size = tf.constant([model.image_size] * int(images.shape[0]), tf.float32)
  features = model._features(images, False)
  rpn_scores, rpn_boxes = model.rpn_head(features, training=False)
  flat = {}
  for group, values in (("rpn_scores", rpn_scores), ("rpn_boxes", rpn_boxes)):
    for level, value in values.items():
      flat[f"{group}/{level}"] = np.asarray(value)
  flat[MASKRCNN_ROIS] = np.asarray(model._proposals(rpn_scores, rpn_boxes,
                                                    size, False))
  class_outputs, box_outputs = model.fast_rcnn_head(
      model._roi_align(features, tf.constant(rois, tf.float32),
                       settings["roi_output_size"]), training=False)
  flat["class_outputs"] = np.asarray(class_outputs)
  flat["box_outputs"] = np.asarray(box_outputs)
  if mask_boxes is not None and model.mask_head is not None:
    flat["mask_outputs"] = np.asarray(model.mask_head(
        model._roi_align(features, tf.constant(mask_boxes, tf.float32),
                         settings["mask_roi_output_size"]),
        classes=tf.constant(mask_classes, tf.int32), training=False))
  # pylint: enable=protected-access
  return flat


def compare_maskrcnn_outputs(task, model, images, expected, tolerance,
                             box_tolerance):
  """compare_outputs for a Mask R-CNN (or Faster R-CNN) and its .npz.

  Raw outputs (maskrcnn_raw_outputs; every one in the .npz must be
  matched): `rpn_scores/<level>`, `rpn_boxes/<level>`; `rois`, our
  proposals paired one to one with the .npz's within box_tolerance pixels
  (_compare_proposals: tied objectness scores come out in either order);
  `class_outputs` and `box_outputs` (our Fast R-CNN head on the .npz's
  `rois`, compared on the rows of non-empty ROIs); `mask_outputs` (our
  mask head on the .npz's detection boxes and classes). Detections: our model run end to end (proposals, head,
  post-processing) on the images, compared as compare_outputs does, and
  with `detection_masks` in the .npz each detection's 28x28 mask
  probabilities with its partner's, within `tolerance`.

  Returns:
    dict as compare_outputs; "detections" gains "max_mask_diff".

  Raises:
    ImportCheckError: as compare_outputs; also when the .npz has no `rois`.
  """
  del task  # The model post-processes its detections itself.
  if MASKRCNN_ROIS not in expected:
    raise ImportCheckError(
        f"The .npz holds no `{MASKRCNN_ROIS}` (Model Garden's proposals) to "
        "run our Fast R-CNN head on; write it with scripts/"
        "make_model_garden_fixture.py --model=maskrcnn. It holds: "
        f"{sorted(expected)}.")
  has_detections = all(k in expected for k in DETECTION_KEYS)
  ours = maskrcnn_raw_outputs(
      model, images, expected[MASKRCNN_ROIS],
      expected["detection_boxes"] if has_detections else None,
      expected["detection_classes"] if has_detections else None)
  raw_expected = {k: v for k, v in expected.items()
                  if k not in DETECTION_KEYS + (MASKRCNN_MASKS,)}
  problems, diffs, proposals_reordered = [], {}, 0
  for name in sorted(set(ours) | set(raw_expected), key=_output_order):
    if name not in raw_expected:
      continue  # Ours only (e.g. mask_outputs for a .npz without masks).
    if name not in ours:
      problems.append(f"{name}: absent from ours")
      continue
    if ours[name].shape != raw_expected[name].shape:
      problems.append(f"{name}: shape {list(ours[name].shape)} (ours) vs "
                      f"{list(raw_expected[name].shape)} (expected)")
      continue
    if name == MASKRCNN_ROIS:
      diffs[name], proposals_reordered = _compare_proposals(
          ours[name], raw_expected[name], box_tolerance, problems)
      continue
    mine, theirs = ours[name], raw_expected[name]
    if name in ("class_outputs", "box_outputs"):
      # The rows of real proposals only: both generators pad to N with
      # all-zero boxes, whose head outputs neither post-processing uses
      # (ours zeroes their scores; the detections are compared below).
      real = _box_areas(expected[MASKRCNN_ROIS]) > 0.0
      mine, theirs = mine[real], theirs[real]
    diffs[name] = float(np.max(np.abs(mine - theirs))) if mine.size else 0.0
    if not diffs[name] <= tolerance:
      problems.append(f"{name}: max abs difference {diffs[name]:.3g} > "
                      f"{tolerance:g}")
  result = {"max_abs_diff": diffs}
  if MASKRCNN_ROIS in diffs:
    result["num_proposals_reordered_among_ties"] = proposals_reordered
  if has_detections:
    size = tf.constant([model.image_size] * len(images), tf.float32)
    detections = model(tf.constant(images), image_shape=size, training=False)
    mine = {"boxes": detections["detection_boxes"],
            "scores": detections["detection_scores"],
            "classes": detections["detection_classes"],
            "num_detections": detections["num_detections"]}
    result["detections"] = _compare_detections(mine, expected, tolerance,
                                               box_tolerance, problems)
    if MASKRCNN_MASKS in expected and "detection_masks" in detections:
      result["detections"]["max_mask_diff"] = _compare_masks(
          mine, np.asarray(detections["detection_masks"]), expected,
          tolerance, box_tolerance, problems)
  _raise_if_problems(problems)
  return result


def _box_areas(boxes):
  boxes = np.asarray(boxes, np.float64)
  return (np.maximum(boxes[..., 2] - boxes[..., 0], 0.0) *
          np.maximum(boxes[..., 3] - boxes[..., 1], 0.0))


def _compare_proposals(ours, theirs, box_tolerance, problems):
  """(max abs difference in pixels, number out of rank) of two proposal sets.

  The proposals of both generators are sorted by objectness, and equal
  objectness scores (frequent where features saturate) come out in either
  order; so each of ours pairs with one of the reference's, one to one, at
  the same rank where that one is within box_tolerance, else with the
  nearest unpaired one. A proposal without a partner within box_tolerance
  is a problem.
  """
  worst, reordered = 0.0, 0
  for b in range(ours.shape[0]):
    free = np.ones(theirs.shape[1], bool)
    distance = np.max(np.abs(ours[b][:, None, :].astype(np.float64) -
                             theirs[b][None, :, :]), axis=-1)
    unpaired = 0
    for i in range(ours.shape[1]):
      j = i if free[i] and distance[i, i] <= box_tolerance else int(
          np.argmin(np.where(free, distance[i], np.inf)))
      if not distance[i, j] <= box_tolerance:
        unpaired += 1
        continue
      free[j] = False
      reordered += int(j != i)
      worst = max(worst, float(distance[i, j]))
    if unpaired:
      problems.append(f"rois: image {b}: {unpaired} of our proposals have no "
                      f"partner within {box_tolerance:g} px among the "
                      "expected ones")
  return worst, reordered


def _compare_masks(mine, masks, expected, tolerance, box_tolerance,
                   problems):
  """Max abs difference of paired detections' masks (see _pair_detections).

  Images whose detections do not pair were reported by _compare_detections
  and are skipped here.
  """
  worst = 0.0
  count = np.asarray(mine["num_detections"])
  for b, n in enumerate(np.asarray(expected["num_detections"]).astype(int)):
    if int(count[b]) != n or not n:
      continue
    order = _pair_detections(
        (np.asarray(mine["classes"])[b, :n].astype(np.int64),
         np.asarray(mine["scores"])[b, :n].astype(np.float64),
         np.asarray(mine["boxes"])[b, :n].astype(np.float64)),
        (np.asarray(expected["detection_classes"])[b, :n].astype(np.int64),
         np.asarray(expected["detection_scores"])[b, :n].astype(np.float64),
         np.asarray(expected["detection_boxes"])[b, :n].astype(np.float64)),
        tolerance, box_tolerance)
    if order is None:
      continue
    worst = max(worst, float(np.max(np.abs(
        masks[b, :n] - np.asarray(expected[MASKRCNN_MASKS])[b, order]))))
  if worst > tolerance:
    problems.append(f"detection masks: max abs difference {worst:.3g} > "
                    f"{tolerance:g}")
  return worst


def check_destination(output_dir):
  """Raises unless output_dir is absent or holds no checkpoint."""
  if tf.io.gfile.exists(output_dir) and (
      tf.train.latest_checkpoint(output_dir) or
      tf.io.gfile.glob(tf.io.gfile.join(output_dir, "ckpt-*"))):
    raise FileExistsError(
        f"--output_dir={output_dir} already holds a checkpoint; choose a new "
        "directory (an import never overwrites one).")


def import_checkpoint(checkpoint_path, gin_files, gin_params, output_dir,
                      check_images=None, check_outputs=None,
                      check_tolerance=1e-4, check_box_tolerance=1e-3,
                      progress=True):
  """Maps, checks and writes; the whole of the command line.

  Args: the flags of the same names.

  Returns:
    The report written to output_dir/import_report.json.

  Raises:
    model_garden_import.ImportMismatchError: the checkpoint is not the
      configured network (nothing written).
    ImportCheckError: the outputs differ (nothing written).
    FileExistsError: output_dir already holds a checkpoint.
    ValueError: only one of check_images / check_outputs.
  """
  if (check_images is None) != (check_outputs is None):
    raise ValueError("--check_images and --check_outputs go together; got "
                     f"only {'--check_images' if check_outputs is None else '--check_outputs'}.")
  check_destination(output_dir)
  task, model = build_model(gin_files, gin_params)
  checkpoint = model_garden_import.ModelGardenCheckpoint(checkpoint_path)
  mapping, what = map_model(task, model, checkpoint)
  for note in mapping.notes:
    logging.info("%s", note)
  mapping.check(checkpoint_path, f"{what} ({model.name})")
  scalars = model_garden_import.assign(mapping, checkpoint, progress)
  logging.info("Imported %d variables (%d scalars) from %s; %d checkpoint "
               "variables outside the model (optimizer, step) not used.",
               len(mapping.pairs), scalars, checkpoint_path, mapping.ignored)
  report = {"checkpoint": checkpoint_path, "source": "model_garden",
            "model": model.name, "num_variables": len(mapping.pairs),
            "num_scalars": scalars,
            "num_checkpoint_variables_not_in_model": mapping.ignored,
            "notes": mapping.notes,
            "variables": {v.path: s.path for v, s in mapping.pairs}}
  if check_images is not None:
    with tf.io.gfile.GFile(check_images, "rb") as f:
      images = np.load(f).astype(np.float32)
    with tf.io.gfile.GFile(check_outputs, "rb") as f:
      expected = dict(np.load(f))
    compare = (compare_maskrcnn_outputs if isinstance(task, MaskRCNNTask)
               else compare_outputs)
    result = compare(task, model, images, expected, check_tolerance,
                     check_box_tolerance)
    for name, diff in result["max_abs_diff"].items():
      print(f"{name}: max abs difference {diff:.3g}")
    if "detections" in result:
      d = result["detections"]
      print(f"detections: {d['num_detections']} per image, classes equal: "
            f"{d['classes_equal']}, boxes max abs difference "
            f"{d['max_box_diff_px']:.3g} px, scores {d['max_score_diff']:.3g}"
            + (f", masks {d['max_mask_diff']:.3g}" if "max_mask_diff" in d
               else ""))
      print(detection_summary(d, check_tolerance))
    report["check"] = dict(result, images=check_images,
                           outputs=check_outputs, tolerance=check_tolerance,
                           box_tolerance=check_box_tolerance)
  tf.io.gfile.makedirs(output_dir)
  gin_config.write_config(output_dir, gin_config.CONFIG_FILE,
                          gin.config_str())
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
  path = checkpointing.Checkpointer(output_dir, model, step).save()
  report["written"] = path
  gin_config.write_json(tf.io.gfile.join(output_dir, REPORT_FILE), report)
  return report


def main(argv):
  del argv
  if not FLAGS.checkpoint or not FLAGS.output_dir or not FLAGS.gin_file:
    raise app.UsageError("--checkpoint, --gin_file and --output_dir are "
                         "required.")
  try:
    report = import_checkpoint(
        FLAGS.checkpoint, FLAGS.gin_file, FLAGS.gin_param, FLAGS.output_dir,
        FLAGS.check_images, FLAGS.check_outputs, FLAGS.check_tolerance,
        FLAGS.check_box_tolerance)
  except (model_garden_import.ImportMismatchError, ImportCheckError,
          gin_config.GinConfigError, FileExistsError, ValueError) as e:
    print(f"official.import_checkpoint: {type(e).__name__}: {e}",
          file=sys.stderr, flush=True)
    sys.exit(1)
  print(report["written"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
