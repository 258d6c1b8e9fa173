"""SP-NAS morphisms on the whole detector, through the weight inheritance the
search uses (official/core/weight_inheritance.py): Expand keeps a Faster
R-CNN's outputs, Swap keeps every weight and every FPN input shape, and the
parallel network starts equal to the serial one (SP-NAS §3.1-3.2)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.backbones import spnet_spec
from modeling.backbones.spnet import spnet
from modeling.decoders.fpn import fpn
from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.rpn import RPNHead
from modeling.models.maskrcnn import MaskRCNNModel
from official.core import weight_inheritance

SIZE = 64
SMALL = dict(rpn_pre_nms_top_k=100, rpn_post_nms_top_k=32,
             test_rpn_pre_nms_top_k=100, test_rpn_post_nms_top_k=32,
             num_sampled_rois=16, max_detections=8, roi_min_level=2,
             roi_max_level=5, anchor_size=2.0)


def detector(serial, block_ids=None, parallel=None, base_channels=8):
  # Each trial builds its one model in a fresh process; here both models
  # share one, so reset Keras's automatic layer names (the heads' keys).
  keras.utils.clear_session()
  backbone = spnet(input_shape=(SIZE, SIZE, 3), serial=serial,
                   block_ids=block_ids, parallel=parallel,
                   base_channels=base_channels)
  decoder = fpn(backbone.output_specs, min_level=2, max_level=6,
                num_filters=8)
  model = MaskRCNNModel(backbone, decoder, RPNHead(2, 6, 3, num_filters=8),
                        FastRCNNHead(4, num_convs=0, num_fcs=1, fc_dims=16),
                        None, **SMALL)
  images = tf.random.stateless_normal([2, SIZE, SIZE, 3], [7, 1])
  model(images, training=False)  # Builds every layer.
  return model, images


def randomise(model, seed=0):
  """Non-trivial weights everywhere: every batch-norm scale and statistic
  too (a zero last-block scale would make every block an identity)."""
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    shape = tuple(variable.shape)
    if "moving_variance" in variable.path:
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, 0.2, shape)
    variable.assign(value.astype(variable.dtype))


def child_from_parent(tmp_path, parent, child):
  path = str(tmp_path / "parent.npz")
  weight_inheritance.save_inheritable_weights(parent, path)
  return weight_inheritance.inherit_weights(
      child, [path], aliases=spnet_spec.INHERITANCE_ALIASES)


def outputs(model, images):
  out = model(images, training=False)
  feats = model.decoder(model.backbone(images, training=False),
                        training=False)
  return out, feats


@pytest.mark.parametrize("serial,base", [("BB(11,d1,d1,d1)", 8),
                                         ("BNB(11,d1,d1,d1)", 8),
                                         ("XB(11,d1,d1,d1)", 16)])
def test_expand_keeps_the_detectors_outputs(tmp_path, serial, base):
  spec = spnet_spec.parse_serial(serial)
  parent, images = detector(spec.code, base_channels=base)
  randomise(parent)
  grown = spnet_spec.expand(spnet_spec.expand(spec, 2), 5)
  child, _ = detector(grown.code, grown.block_ids, base_channels=base)
  report = child_from_parent(tmp_path, parent, child)
  assert not report["shape_mismatch"]
  assert {k.split("/")[1] for k in report["initialised"]} == {
      f"block{i}" for i in grown.block_ids if i not in spec.block_ids}
  (out_p, feat_p), (out_c, feat_c) = outputs(parent, images), outputs(
      child, images)
  for level in feat_p:
    np.testing.assert_allclose(feat_c[level], feat_p[level], atol=1e-5)
  for key in ("detection_boxes", "detection_scores", "detection_classes",
              "num_detections"):
    np.testing.assert_allclose(out_c[key], out_p[key], atol=1e-5,
                               err_msg=key)


def test_swap_keeps_every_weight_and_fpn_input_shape(tmp_path):
  spec = spnet_spec.parse_serial("BB(111,d111,d1,d1)")
  parent, _ = detector(spec.code)
  randomise(parent)
  # Stage 1 gives two plain blocks to stage 2: no doubling crosses.
  swapped = spnet_spec.swap(spec, 1, -2)
  assert swapped.code == "BB(1,11d111,d1,d1)"
  child, _ = detector(swapped.code, swapped.block_ids)
  report = child_from_parent(tmp_path, parent, child)
  assert report["initialised"] == [] and report["shape_mismatch"] == []
  assert report["num_unused"] == 0
  parent_vars = weight_inheritance.variable_keys(parent)
  child_vars = weight_inheritance.variable_keys(child)
  assert sorted(parent_vars) == sorted(child_vars)
  for key, variable in child_vars.items():
    np.testing.assert_array_equal(variable.numpy(), parent_vars[key].numpy())
  assert child.backbone.output_specs == parent.backbone.output_specs


def test_swap_across_a_doubling_lists_the_fpn_lateral_it_cannot_keep(
    tmp_path):
  """A boundary moved past a 'd' block changes that level's channels (Table
  7's '11d' stages): every block weight is still kept, and the one FPN
  lateral conv whose input width changed is listed, not silently dropped."""
  spec = spnet_spec.parse_serial("BB(111,d111,d1,d1)")
  parent, _ = detector(spec.code)
  swapped = spnet_spec.swap(spec, 1, 1)
  assert swapped.code == "BB(111d,111,d1,d1)"
  child, _ = detector(swapped.code, swapped.block_ids)
  report = child_from_parent(tmp_path, parent, child)
  level2_lateral = [
      k for k in weight_inheritance.variable_keys(child)
      if k.startswith("fpn/") and "lateral" in k and "kernel" in k and
      "2" in k.split("/")[1]]
  assert len(level2_lateral) == 1, level2_lateral
  assert [m["key"] for m in report["shape_mismatch"]] == level2_lateral
  assert not any(k.startswith("spnet/") for k in report["initialised"])


def test_parallel_network_starts_equal_to_the_serial_one(tmp_path):
  spec = spnet_spec.parse_serial("BB(11,d1,d1,d1)")
  parent, images = detector(spec.code)
  randomise(parent)
  child, _ = detector(spec.code, parallel=(0, 2, 1, 3))
  report = child_from_parent(tmp_path, parent, child)
  assert report["aliased"], "the copies inherit their stage's weights"
  assert all("_up/" in k for k in report["initialised"]), report[
      "initialised"]
  (out_p, feat_p), (out_c, feat_c) = outputs(parent, images), outputs(
      child, images)
  for level in feat_p:
    np.testing.assert_allclose(feat_c[level], feat_p[level], atol=1e-5)
  np.testing.assert_allclose(out_c["detection_scores"],
                             out_p["detection_scores"], atol=1e-5)
