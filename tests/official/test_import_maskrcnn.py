"""Model Garden Mask R-CNN import: the refusal, its list, the proposal check.

No Model Garden Mask R-CNN fixture is committed: the three fixtures of
tests/fixtures/model_garden already take 1.94 of the 2 MB they may use, and
the smallest Mask R-CNN checkpoint (SpineNet-49 at filter scale 0.0625,
8-wide heads) is 0.57 MB. scripts/make_model_garden_fixture.py
--model=maskrcnn writes one; official/core/model_garden_import.py
(ROI_ALIGN_DIFFERENCE) gives the figures measured with it. Here the
RetinaNet fixture's checkpoint (spinenet49_tiny) stands in for a checkpoint
of another model: its backbone pairs with our Mask R-CNN's, nothing else
does, and the list says so.
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
