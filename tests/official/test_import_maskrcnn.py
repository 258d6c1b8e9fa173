"""Model Garden Mask R-CNN import: equality, the refusals, the proposal check.

tests/fixtures/model_garden/spinenet49_maskrcnn_tiny was written by
scripts/make_model_garden_fixture.py --model=maskrcnn with Model Garden
(tf-models-official 2.20, its README.md gives the command): SpineNet-49 at
filter scale 0.03125 with 8-wide endpoints, 8-wide RPN, Fast R-CNN and mask
heads (one conv each, one 16-wide FC), 4 classes, 50 proposals and 5
detections on the RetinaNet fixture's 128-px image. It imports only with
Model Garden's ROI Align (MaskRCNNTask.roi_aligned = False,
MaskRCNNTask.roi_sampling_ratio = 1, which its spec.json binds). The
RetinaNet fixture's checkpoint (spinenet49_tiny) stands in for a
checkpoint of another model: its backbone pairs with our Mask R-CNN's,
nothing else does, and the list says so.
"""

import json
import os

import numpy as np
import pytest

from official import import_checkpoint
from official.core import model_garden_import

pytestmark = pytest.mark.usefixtures("no_gin_bindings")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RETINANET_FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures",
                                 "model_garden", "spinenet49_tiny")
FIXTURE = os.path.join(os.path.dirname(RETINANET_FIXTURE),
                       "spinenet49_maskrcnn_tiny")
ROI_BINDINGS = ("MaskRCNNTask.roi_aligned = False",
                "MaskRCNNTask.roi_sampling_ratio = 1")
MASKRCNN_GIN = [os.path.join(REPO_ROOT, "configs", "experiments", "maskrcnn",
                             "spinenet49_coco.gin")]
# The scaled-down heads scripts/make_model_garden_fixture.py --model=maskrcnn
# builds for a fixture (1 conv x 8 in each head, one 16-wide FC).
TINY_HEADS = ["MaskRCNNTask.image_size = 128", "MaskRCNNTask.num_classes = 8",
              "MaskRCNNTask.rpn_num_filters = 8",
              "MaskRCNNTask.frcnn_num_convs = 1",
              "MaskRCNNTask.frcnn_num_filters = 8",
              "MaskRCNNTask.frcnn_fc_dims = 16",
              "MaskRCNNTask.mask_num_convs = 1",
              "MaskRCNNTask.mask_num_filters = 8"]


def _backbone_params():
  """The RetinaNet fixture's SpineNet bindings (spinenet.*, norm)."""
  with open(os.path.join(RETINANET_FIXTURE, "spec.json")) as f:
    params = json.load(f)["our_gin_params"]
  return [p for p in params if not p.startswith("RetinaNetTask.")]


def test_a_retinanet_checkpoint_is_not_a_maskrcnn_and_nothing_is_written(
    tmp_path):
  out = tmp_path / "imported"
  with pytest.raises(model_garden_import.ImportMismatchError) as error:
    import_checkpoint.import_checkpoint(
        os.path.join(RETINANET_FIXTURE, "ckpt"), MASKRCNN_GIN,
        _backbone_params() + TINY_HEADS, str(out), progress=False)
  message = str(error.value)
  # The backbone (650 variables) pairs; our three heads (56 variables) have
  # nothing to take; the RetinaNet head (48) is computed by nothing of ours.
  assert ("Checkpoint " + os.path.join(RETINANET_FIXTURE, "ckpt") +
          " is not the Mask R-CNN (maskrcnn) the config builds: 650 variables"
          " pair up, 0 differ in shape, 56 of ours are missing, 48 of the "
          "checkpoint's model are unused, 1 layers compute another function."
          ) in message
  assert ("  rpn_head/conv_0/kernel [3, 3, 8, 8]: no variable of the "
          "checkpoint corresponds to it") in message
  assert ("  mask_head/upsample/kernel [2, 2, 8, 8]: no variable of the "
          "checkpoint corresponds to it") in message
  assert ("model/_head/_classifier/kernel (retina_net_model/retina_net_head/"
          "scores/kernel) [3, 3, 8, 72]: a part of Model Garden's model "
          "outside its backbone, decoder, RPN, detection and mask heads"
          ) in message
  # Even where every variable pairs, ROI Align is another function.
  assert ("maskrcnn ROI Align (roi_sampling_ratio=2, roi_aligned=True) <- "
          "Model Garden's roi_aligner and mask_roi_aligner: Model Garden's "
          "ROI Align (multilevel_crop_and_resize, sample_offset 0.5) takes "
          "one bilinear sample at each bin's centre") in message
  assert not out.exists()


def _spec():
  with open(os.path.join(FIXTURE, "spec.json")) as f:
    return json.load(f)


def _params(drop=()):
  """The fixture's bindings, without those in `drop`."""
  return [p for p in _spec()["our_gin_params"] if p not in drop]


def _import(output_dir, params, check=True):
  images = os.path.join(FIXTURE, _spec()["flags"]["images"])
  return import_checkpoint.import_checkpoint(
      os.path.join(FIXTURE, "ckpt"), MASKRCNN_GIN, params, str(output_dir),
      check_images=images if check else None,
      check_outputs=os.path.join(FIXTURE, "outputs.npz") if check else None,
      progress=False)


def test_maskrcnn_with_model_gardens_roi_align_gives_its_outputs(tmp_path):
  assert set(ROI_BINDINGS) <= set(_params())
  out = tmp_path / "imported"
  report = _import(out, _params())
  # Every variable of ours (backbone, RPN, Fast R-CNN and mask heads, batch
  # norm statistics included) came from the checkpoint.
  assert report["num_variables"] == 706
  assert report["num_checkpoint_variables_not_in_model"] == 1
  diffs = report["check"]["max_abs_diff"]
  assert sorted(diffs) == sorted(
      [f"rpn_{g}/{l}" for g in ("scores", "boxes") for l in range(3, 8)] +
      ["rois", "class_outputs", "box_outputs", "mask_outputs"])
  # rois is in pixels, compared within the 1e-3 px box tolerance.
  assert diffs["rois"] <= 1e-3
  assert max(v for k, v in diffs.items() if k != "rois") <= 1e-4, diffs
  detections = report["check"]["detections"]
  assert detections["num_detections"] == [5]
  assert detections["classes_equal"]
  assert detections["max_box_diff_px"] <= 1e-3
  assert detections["max_score_diff"] <= 1e-4
  assert detections["max_mask_diff"] <= 1e-4
  assert (out / "ckpt-0.index").exists()
  # The bindings travel in config.gin: evaluation and export rebuild
  # Model Garden's ROI Align.
  config = (out / "config.gin").read_text()
  assert all(b in config for b in ROI_BINDINGS)


@pytest.mark.parametrize("drop", [ROI_BINDINGS, ROI_BINDINGS[1:],
                                  ROI_BINDINGS[:1]])
def test_maskrcnn_with_our_roi_align_is_refused_naming_the_bindings(
    tmp_path, drop):
  out = tmp_path / "imported"
  with pytest.raises(model_garden_import.ImportMismatchError) as error:
    _import(out, _params(drop), check=False)
  message = str(error.value)
  assert ("706 variables pair up, 0 differ in shape, 0 of ours are missing, "
          "0 of the checkpoint's model are unused, 1 layers compute another "
          "function") in message
  ratio = 2 if ROI_BINDINGS[1] in drop else 1
  aligned = ROI_BINDINGS[0] in drop
  assert (f"maskrcnn ROI Align (roi_sampling_ratio={ratio}, roi_aligned="
          f"{aligned}) <- Model Garden's roi_aligner and mask_roi_aligner: "
          "Model Garden's ROI Align (multilevel_crop_and_resize, sample_offset"
          " 0.5) takes one bilinear sample at each bin's centre, at index = "
          "coordinate / stride; ours (modeling/ops/roi_align.py) as "
          f"configured averages roi_sampling_ratio^2 = {ratio ** 2} samples "
          "per bin") in message
  assert ("Bind MaskRCNNTask.roi_aligned = False and "
          "MaskRCNNTask.roi_sampling_ratio = 1 to build Model Garden's "
          "function") in message
  assert "Configure the model" not in message
  assert not out.exists()


def test_maskrcnn_with_our_roi_align_fails_the_output_check():
  # The refusal is real: every variable in place, our default ROI Align
  # (aligned, 2 x 2 samples) gives the second stage other outputs.
  task, model = import_checkpoint.build_model(MASKRCNN_GIN,
                                              _params(ROI_BINDINGS))
  checkpoint = model_garden_import.ModelGardenCheckpoint(
      os.path.join(FIXTURE, "ckpt"))
  mapping, _ = import_checkpoint.map_model(task, model, checkpoint)
  assert len(mapping.pairs) == 706 and len(mapping.differences) == 1
  model_garden_import.assign(mapping, checkpoint, progress=False)
  expected = dict(np.load(os.path.join(FIXTURE, "outputs.npz")))
  images = np.load(os.path.join(FIXTURE, _spec()["flags"]["images"]))
  with pytest.raises(import_checkpoint.ImportCheckError) as error:
    import_checkpoint.compare_maskrcnn_outputs(task, model, images, expected,
                                               1e-4, 1e-3)
  message = str(error.value)
  assert "class_outputs: max abs difference" in message
  assert "mask_outputs: max abs difference" in message
  # The first stage does not read ROI Align: the RPN still agrees.
  assert "rpn_scores" not in message and "rois:" not in message


def _proposals():
  rng = np.random.default_rng(0)
  corners = rng.uniform(0.0, 64.0, (1, 6, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(4.0, 60.0, (1, 6, 2))],
                         axis=-1).astype(np.float32)
  boxes[0, 5] = 0.0  # Padding.
  return boxes


def test_proposals_pair_across_tied_ranks_and_a_moved_one_is_reported():
  expected = _proposals()
  ours = expected.copy()
  ours[0, [1, 2]] = expected[0, [2, 1]]  # Two tied proposals swapped.
  ours[0, 3] += 4e-4
  problems = []
  worst, reordered = import_checkpoint._compare_proposals(  # pylint: disable=protected-access
      ours, expected, 1e-3, problems)
  assert problems == []
  assert reordered == 2
  assert worst == pytest.approx(4e-4, abs=1e-5)

  ours[0, 4, 0] += 0.01  # 0.01 px off: no partner within 1e-3 px.
  worst, reordered = import_checkpoint._compare_proposals(  # pylint: disable=protected-access
      ours, expected, 1e-3, problems)
  assert problems == ["rois: image 0: 1 of our proposals have no partner "
                      "within 0.001 px among the expected ones"]
