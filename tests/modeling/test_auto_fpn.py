"""Tests for the Auto-FPN neck and head (modeling/decoders/auto_fpn.py,
modeling/heads/auto_head.py) and their operations, decoding and resource
cost (modeling/layers/auto_fpn_ops.py).

Small sizes: 3 backbone levels of 8-16 channels from a 32 px image, 16-wide
links, 7x7x16 ROI features, 16-wide cells.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling.decoders.auto_fpn import (AutoFusionNeck, auto_fpn,
                                        check_neck_genotype, decode_neck,
                                        link_names, neck_parameter_count,
                                        neck_space_size)
from modeling.decoders.registry import DECODERS
from modeling.heads.auto_head import (AutoHead, EDGES_PER_CELL, decode_head,
                                      edge_names, head_parameter_count,
                                      head_space_size)
from modeling.heads.registry import HEADS
from modeling.layers import auto_fpn_ops
from modeling.layers.auto_fpn_ops import HEAD_OPS, NECK_OPS
from tests.modeling.layer_harness import assert_checkpoint_covers

IMAGE = 32
SPECS = {"2": (None, 8, 8, 8), "3": (None, 4, 4, 12), "4": (None, 2, 2, 16)}
WIDTH = 16
ROI_SHAPE = (2, 3, 7, 7, 16)  # batch, ROIs, 7x7, channels
NUM_CLASSES = 4

# Every neck operation appears; layer-1 node 2 (level 4) is read by no
# layer-2 link, so the discrete neck does not build it nor its three links.
NECK_GENOTYPE = [
    [["skip", "dil_conv_3x3_r2", "none"],
     ["dil_conv_3x3_r3", "none", "dil_conv_5x5_r2"],
     ["none", "dil_conv_5x5_r3", "sep_conv_3x3"]],
    [["sep_conv_5x5", "skip", "none"],
     ["none", "dil_conv_3x3_r2", "none"],
     ["skip", "sep_conv_3x3", "none"]],
]
# Every head operation appears; both cells live.
HEAD_GENOTYPE = [
    [["conv_3x3", "none"], ["skip", "sep_conv_3x3", "none"],
     ["none", "dil_conv_3x3_r2", "conv_5x5", "none"],
     ["sep_conv_5x5", "none", "none", "skip", "dil_conv_5x5_r2"]],
    [["none", "conv_3x3"], ["dil_conv_5x5_r2", "none", "skip"],
     ["sep_conv_3x3", "skip", "none", "none"],
     ["none", "conv_5x5", "none", "none", "skip"]],
]
# Cell 1 reads nothing from cell 0 (its in1 edges are all none): cell 0 is
# not built.
HEAD_GENOTYPE_DEAD_CELL = [
    HEAD_GENOTYPE[0],
    [["conv_3x3", "none"], ["none", "none", "skip"],
     ["sep_conv_3x3", "none", "none", "none"],
     ["none", "none", "conv_5x5", "none", "skip"]],
]


@pytest.fixture(scope="module")
def neck_supernet():
  """Levels 2..4 fused, level 5 pooled. Shared: building the super-networks
  is most of this file's time. Each test sets the architecture weights it
  needs; the network weights are whatever an earlier test left."""
  return AutoFusionNeck(SPECS, 2, 5, search=True, num_filters=WIDTH)


@pytest.fixture(scope="module")
def head_supernet():
  head = AutoHead(NUM_CLASSES, search=True, num_filters=WIDTH)
  head.build(ROI_SHAPE)
  return head


def _neck_features(seed=0):
  rng = np.random.default_rng(seed)
  return {k: tf.constant(rng.normal(size=(2,) + s[1:]), tf.float32)
          for k, s in SPECS.items()}


def _rois(seed=1):
  return tf.constant(np.random.default_rng(seed).normal(size=ROI_SHAPE),
                     tf.float32)


def _one_hot_alpha(names, ops):
  """A large constant on the chosen operation: softmax is exactly one-hot in
  float32 (exp(-1e4) underflows to 0), so the mixture is the operation."""
  alpha = np.zeros((len(names), len(ops)), np.float32)
  alpha[np.arange(len(names)), [ops.index(op) for op in names]] = 1e4
  return alpha


def _reset(supernet, seed=5):
  """Architecture weights as initialised, N(0, 1e-3): away from one-hot
  weights, where the softmax saturates and the gradients vanish."""
  supernet.alpha.assign(1e-3 * np.random.default_rng(seed).normal(
      size=supernet.alpha.shape))
  return supernet


def _copy_layer(source, target):
  target.set_weights(source.get_weights())


def test_space_sizes_are_the_papers(neck_supernet, head_supernet):
  # Sec. 4.1: 7.9e28 paths for Auto-fusion, 1.9e25 for Auto-head.
  assert neck_space_size(4, 2) == 8 ** 32
  assert f"{float(neck_space_size(4, 2)):.1e}" == "7.9e+28"
  assert head_space_size(2) == 8 ** 28
  assert f"{float(head_space_size(2)):.1e}" == "1.9e+25"
  # The super-networks have one alpha row per link or edge: 32 links for
  # C2..C5 of a ResNet (9 for this file's 3 levels), 28 edges for 2 cells.
  assert len(link_names(range(2, 6), 2)) == 32
  assert tuple(neck_supernet.alpha.shape) == (2 * 3 ** 2, len(NECK_OPS))
  assert neck_supernet.link_names == link_names(range(2, 5), 2)
  assert len(edge_names(2)) == 2 * EDGES_PER_CELL == 28
  assert tuple(head_supernet.alpha.shape) == (28, len(HEAD_OPS)) == (28, 8)


def test_neck_super_network_with_one_hot_weights_is_the_discrete_neck(
    neck_supernet):
  supernet = neck_supernet
  chosen = [op for layer in NECK_GENOTYPE for node in layer for op in node]
  supernet.alpha.assign(_one_hot_alpha(chosen, NECK_OPS))
  assert supernet.decode() == NECK_GENOTYPE
  discrete = AutoFusionNeck(SPECS, 2, 5, genotype=NECK_GENOTYPE,
                            num_filters=WIDTH, use_batch_norm=False)
  built = [link for link in discrete.links if link is not None]
  # 18 links, 7 of them none, 2 more into the unread layer-1 node 2.
  assert len(built) == 18 - 7 - 2
  for link in built:
    source = getattr(supernet, link.name)
    _copy_layer(source.project, link.project)
    _copy_layer(source.operation.candidates[link.ops[0]], link.operation)
  features = _neck_features()
  expected = supernet(features)
  got = discrete(features)
  assert sorted(got) == ["2", "3", "4", "5"]
  for level in got:
    assert got[level].shape == expected[level].shape
    np.testing.assert_allclose(got[level], expected[level], atol=1e-5,
                               rtol=1e-5)
    assert np.abs(got[level].numpy()).max() > 1e-2
  assert tuple(got["5"].shape) == (2, 1, 1, WIDTH)


@pytest.mark.parametrize("genotype", [HEAD_GENOTYPE, HEAD_GENOTYPE_DEAD_CELL])
def test_head_super_network_with_one_hot_weights_is_the_discrete_head(
    head_supernet, genotype):
  rois = _rois()
  supernet = head_supernet
  chosen = [op for cell in genotype for node in cell for op in node]
  supernet.alpha.assign(_one_hot_alpha(chosen, HEAD_OPS))
  assert supernet.decode() == genotype
  discrete = AutoHead(NUM_CLASSES, genotype=genotype, num_filters=WIDTH,
                      use_batch_norm=False)
  discrete(rois)
  for m, cell in enumerate(discrete.cells):
    if cell is None:
      continue
    source = supernet.cells[m]
    for s, conv in enumerate(cell.preprocess):
      if conv is not None:
        _copy_layer(source.preprocess[s], conv)
    for e, edge in enumerate(cell.edges):
      if edge is not None:
        _copy_layer(source.edges[e].candidates[cell.edge_ops[e][0]], edge)
  # Predictions get weights large enough for the logits to show any error.
  for name in ("class_predict", "box_predict"):
    layer = getattr(supernet, name)
    layer.set_weights([np.random.default_rng(2).normal(size=w.shape)
                       for w in layer.get_weights()])
    _copy_layer(layer, getattr(discrete, name))
  expected = supernet(rois)
  got = discrete(rois)
  for g, e in zip(got, expected):
    assert g.dtype == tf.float32 and g.shape == e.shape
    np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5)
  assert tuple(got[0].shape) == (2, 3, NUM_CLASSES)
  assert tuple(got[1].shape) == (2, 3, 4 * NUM_CLASSES)
  assert np.abs(got[0].numpy()).max() > 1e-2
  assert (discrete.cells[0] is None) == (genotype is HEAD_GENOTYPE_DEAD_CELL)


def test_decoding_keeps_one_input_per_node():
  # Two levels, one layer: node 0 (level 2) reads links 0 (from 2) and 1
  # (from 3), node 1 reads links 2 and 3.
  mixing = np.full((4, 8), 0.01)
  mixing[0, NECK_OPS.index("none")] = 0.80
  mixing[0, NECK_OPS.index("skip")] = 0.05
  mixing[1, NECK_OPS.index("none")] = 0.55
  mixing[1, NECK_OPS.index("sep_conv_3x3")] = 0.30
  mixing[2, NECK_OPS.index("dil_conv_5x5_r3")] = 0.60
  mixing[3, NECK_OPS.index("none")] = 0.70
  # Node 0 decodes to none on both links: it keeps the largest weight among
  # the other operations of its links (sep_conv_3x3 on link 1, 0.30 > 0.05);
  # link 0 stays none. Node 1 has an input already: plain arg-max.
  assert decode_neck(mixing, num_levels=2, num_layers=1) == [
      [["none", "sep_conv_3x3"], ["dil_conv_5x5_r3", "none"]]]
  # The same rule for a head node: cell 0 node 0 (edges 0, 1) all none.
  mixing = np.full((14, 8), 0.01)
  mixing[:, HEAD_OPS.index("skip")] = 0.5
  mixing[0, HEAD_OPS.index("none")] = 0.9
  mixing[0, HEAD_OPS.index("skip")] = 0.01
  mixing[0, HEAD_OPS.index("conv_5x5")] = 0.2
  mixing[1, HEAD_OPS.index("none")] = 0.9
  genotype = decode_head(mixing, num_cells=1)
  assert genotype[0][0] == ["none", "skip"]  # skip 0.5 on edge 1 beats 0.2.
  assert all(op == "skip" for node in genotype[0][1:] for op in node)
  # A genotype with an empty node is refused, naming it.
  bad = [[["none", "none", "none"]] + NECK_GENOTYPE[0][1:], NECK_GENOTYPE[1]]
  with pytest.raises(ValueError, match="layer 1, output node 0 has only "
                     "'none' links"):
    check_neck_genotype(bad, 3, 2)


def test_decoded_genotype_is_json_and_builds_through_the_registry(
    neck_supernet, head_supernet):
  neck_supernet.alpha.assign(
      np.random.default_rng(3).normal(size=neck_supernet.alpha.shape))
  genotype = json.loads(json.dumps(neck_supernet.decode()))
  neck = DECODERS["auto_fpn"](SPECS, min_level=2, max_level=4,
                              genotype=genotype, num_filters=WIDTH)
  assert neck.output_specs == {"2": (None, 8, 8, WIDTH),
                               "3": (None, 4, 4, WIDTH),
                               "4": (None, 2, 2, WIDTH)}
  outputs = neck(_neck_features(), training=True)
  assert {k: tuple(v.shape[1:]) for k, v in outputs.items()} == {
      k: v[1:] for k, v in neck.output_specs.items()}
  head_supernet.alpha.assign(
      np.random.default_rng(4).normal(size=head_supernet.alpha.shape))
  genotype = json.loads(json.dumps(head_supernet.decode()))
  assert HEADS["auto_head"](NUM_CLASSES, genotype=genotype,
                            num_filters=WIDTH)(_rois())[1].shape == (2, 3, 16)


def test_skip_and_none_shares():
  shares = auto_fpn_ops.op_shares(NECK_GENOTYPE, NECK_OPS)
  assert shares["none"] == 7 / 18 and shares["skip"] == 3 / 18
  assert sum(shares.values()) == pytest.approx(1.0)
  shares = auto_fpn_ops.op_shares(HEAD_GENOTYPE, HEAD_OPS)
  assert shares["none"] == 13 / 28 and shares["skip"] == 5 / 28
  with pytest.raises(ValueError, match=r"\['conv_3x3', 'conv_5x5'\] are "
                     "not in"):
    auto_fpn_ops.op_shares(HEAD_GENOTYPE, NECK_OPS)


@pytest.mark.parametrize("use_batch_norm", [False, True])
def test_analytic_parameter_counts(use_batch_norm):
  neck = auto_fpn(SPECS, min_level=2, max_level=5, genotype=NECK_GENOTYPE,
                  num_filters=WIDTH, use_batch_norm=use_batch_norm)
  assert neck.count_params() == neck_parameter_count(
      NECK_GENOTYPE, SPECS, 2, 5, WIDTH, use_batch_norm)
  for genotype in (HEAD_GENOTYPE, HEAD_GENOTYPE_DEAD_CELL):
    head = AutoHead(NUM_CLASSES, genotype=genotype, num_filters=WIDTH,
                    use_batch_norm=use_batch_norm)
    head.build(ROI_SHAPE)
    assert head.count_params() == head_parameter_count(
        genotype, ROI_SHAPE[-1], NUM_CLASSES, WIDTH,
        use_batch_norm=use_batch_norm)
  # By hand: one level, one layer, a 3x3 rate-2 dilated link on 8 channels.
  specs = {"3": (None, 4, 4, 8)}
  one = [[["dil_conv_3x3_r2"]]]
  # 1x1 8->16 + bias; depthwise 9*16, pointwise 16*16, bias 16.
  assert neck_parameter_count(one, specs, 3, 3, 16, False) == 144 + 416
  # Biases dropped, batch norm (4 per channel) after each of the two convs.
  assert neck_parameter_count(one, specs, 3, 3, 16, True) == 192 + 464
  assert AutoFusionNeck(specs, 3, 3, genotype=one, num_filters=16,
                        num_layers=1).count_params() == 656


def test_resource_cost_is_differentiable_and_counts_the_decoded_network(
    neck_supernet, head_supernet):
  supernet = neck_supernet
  _reset(supernet)
  with tf.GradientTape() as tape:
    auto_fpn_ops.watch_architecture(tape, supernet.architecture_weights)
    cost = supernet.resource_cost()
  grad = tape.gradient(cost, supernet.architecture_weights)[0]
  assert grad is not None and np.all(np.isfinite(grad))
  assert np.abs(grad.numpy()).max() > 1e-3
  assert 0.0 < float(cost) < 3.0
  # At one-hot weights the parameter term counts the decoded network (this
  # genotype prunes nothing once layer-1 node 2 is read).
  genotype = [NECK_GENOTYPE[0],
              [NECK_GENOTYPE[1][0], NECK_GENOTYPE[1][1],
               ["skip", "none", "dil_conv_3x3_r2"]]]
  chosen = [NECK_OPS.index(op) for l in genotype for n in l for op in n]
  params = supernet.cost_counts()["params"]
  assert params[np.arange(18), chosen].sum() == neck_parameter_count(
      genotype, SPECS, 2, 5, WIDTH, use_batch_norm=False)
  table = supernet.cost_table()
  supernet.alpha.assign(_one_hot_alpha(
      [NECK_OPS[k] for k in chosen], NECK_OPS))
  assert float(supernet.resource_cost()) == pytest.approx(
      table[np.arange(18), chosen].sum(), rel=1e-6)
  # The sizes of a 32 px image give the same counts as the static specs.
  np.testing.assert_array_equal(supernet.cost_counts((IMAGE, IMAGE))["flops"],
                                supernet.cost_counts()["flops"])
  # MAC alone tells skip from none (Sec. 3.5), for a head edge.
  head = _reset(head_supernet)
  counts = head.cost_counts()
  skip, none = HEAD_OPS.index("skip"), HEAD_OPS.index("none")
  assert counts["params"][0, skip] == counts["flops"][0, skip] == 0
  assert counts["mac"][0, skip] == 2 * 7 * 7 * 4 > counts["mac"][0, none] == 0
  with tf.GradientTape() as tape:
    auto_fpn_ops.watch_architecture(tape, head.architecture_weights)
    cost = head.resource_cost()
  assert np.abs(tape.gradient(cost, head.alpha).numpy()).max() > 1e-3


def test_architecture_weights_are_apart_from_the_network_weights():
  specs = {"3": SPECS["3"], "4": SPECS["4"]}
  neck = AutoFusionNeck(specs, 3, 4, search=True, num_filters=8,
                        num_layers=1)
  alpha = neck.alpha
  assert neck.architecture_weights == [alpha]
  assert all(w is not alpha for w in neck.trainable_variables)
  assert len(neck.network_weights) == len(neck.trainable_variables) > 0
  before = alpha.numpy().copy()
  features = {k: v for k, v in _neck_features().items() if k in specs}
  with tf.GradientTape(persistent=True) as tape:
    auto_fpn_ops.watch_architecture(tape, neck.architecture_weights)
    loss = sum(tf.reduce_sum(v ** 2) for v in neck(features).values())
  network_grads = tape.gradient(loss, neck.network_weights)
  assert all(np.abs(g.numpy()).max() > 0 for g in network_grads)
  keras.optimizers.SGD(0.01).apply(network_grads, neck.network_weights)
  np.testing.assert_array_equal(alpha.numpy(), before)
  grads = tape.gradient(loss, neck.architecture_weights)
  assert np.abs(grads[0].numpy()).max() > 0
  keras.optimizers.Adam(0.003).apply(grads, neck.architecture_weights)
  assert np.abs(alpha.numpy() - before).max() > 1e-4
  discrete = AutoFusionNeck(SPECS, 2, 4, genotype=NECK_GENOTYPE,
                            num_filters=WIDTH)
  assert discrete.architecture_weights == []
  with pytest.raises(ValueError, match="discrete neck"):
    discrete.decode()


def test_config_round_trip_and_argument_errors():
  neck = AutoFusionNeck(SPECS, 2, 5, genotype=NECK_GENOTYPE,
                        num_filters=WIDTH)
  clone = AutoFusionNeck.from_config(neck.get_config())
  clone.set_weights(neck.get_weights())
  features = _neck_features()
  for level, value in neck(features).items():
    np.testing.assert_allclose(clone(features)[level], value, atol=1e-6)
  head = AutoHead(NUM_CLASSES, genotype=HEAD_GENOTYPE, num_filters=WIDTH)
  head.build(ROI_SHAPE)
  clone = AutoHead.from_config(head.get_config())
  clone.build(ROI_SHAPE)
  clone.set_weights(head.get_weights())
  np.testing.assert_allclose(clone(_rois())[0], head(_rois())[0], atol=1e-6)
  with pytest.raises(ValueError, match="not both nor neither"):
    AutoFusionNeck(SPECS, 2, 4, genotype=NECK_GENOTYPE, search=True)
  with pytest.raises(ValueError, match="not both nor neither"):
    AutoHead(NUM_CLASSES)
  with pytest.raises(ValueError, match=r"layer 2, output node 1: unknown "
                     r"operations \['conv_3x3'\]"):
    AutoFusionNeck(SPECS, 2, 4, genotype=[NECK_GENOTYPE[0], [
        NECK_GENOTYPE[1][0], ["conv_3x3", "skip", "none"],
        NECK_GENOTYPE[1][2]]])
  with pytest.raises(ValueError, match="cell 1, node 2 must list 4"):
    AutoHead(NUM_CLASSES, genotype=[HEAD_GENOTYPE[0], [
        HEAD_GENOTYPE[1][0], HEAD_GENOTYPE[1][1], ["skip"],
        HEAD_GENOTYPE[1][3]]])
  with pytest.raises(ValueError, match="num_filters must be a positive "
                     "multiple of 4"):
    AutoHead(NUM_CLASSES, search=True, num_filters=18)
  with pytest.raises(ValueError, match="missing"):
    AutoFusionNeck(SPECS, 1, 4, search=True)


def test_checkpoints_hold_every_weight_and_bfloat16_runs():
  # Sublayers are attributes (modeling/layers/tracking.py), the architecture
  # weights included: a search resumes with them.
  small = AutoFusionNeck({"3": (None, 4, 4, 8)}, 3, 3, search=True,
                         num_filters=8, num_layers=1)
  assert small.alpha in small.weights
  assert_checkpoint_covers(
      small, lambda: AutoFusionNeck({"3": (None, 4, 4, 8)}, 3, 3,
                                    search=True, num_filters=8, num_layers=1))
  make_neck = lambda: AutoFusionNeck(SPECS, 2, 5, genotype=NECK_GENOTYPE,
                                     num_filters=WIDTH)
  assert_checkpoint_covers(make_neck(), make_neck)

  def make_head():
    head = AutoHead(NUM_CLASSES, genotype=HEAD_GENOTYPE_DEAD_CELL,
                    num_filters=WIDTH)
    head.build(ROI_SHAPE)
    return head
  assert_checkpoint_covers(make_head(), make_head)
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    features = {k: tf.cast(v, tf.bfloat16)
                for k, v in _neck_features().items()}
    for value in make_neck()(features, training=True).values():
      assert value.dtype == tf.bfloat16
      assert np.all(np.isfinite(tf.cast(value, tf.float32)))
    outputs = make_head()(tf.cast(_rois(), tf.bfloat16), training=True)
    assert all(o.dtype == tf.float32 and np.all(np.isfinite(o))
               for o in outputs)
  finally:
    keras.mixed_precision.set_global_policy("float32")


def _projection(outputs):
  """A fixed random linear function of the outputs (a scalar)."""
  total = tf.constant(0.0)
  for i, tensor in enumerate(tf.nest.flatten(outputs)):
    total += tf.reduce_sum(tf.cast(tensor, tf.float32) *
                           tf.random.stateless_normal(tf.shape(tensor), [7, i]))
  return total


def test_every_weight_of_a_pruned_discrete_network_gets_a_gradient():
  # What is not read is not built (live_links, cell_usage), so no weight is
  # left without gradient; batch norm in training mode included.
  neck = AutoFusionNeck(SPECS, 2, 5, genotype=NECK_GENOTYPE,
                        num_filters=WIDTH)
  head = AutoHead(NUM_CLASSES, genotype=HEAD_GENOTYPE_DEAD_CELL,
                  num_filters=WIDTH)
  for network, inputs in ((neck, _neck_features()), (head, _rois())):
    with tf.GradientTape() as tape:
      loss = _projection(network(inputs, training=True))
    grads = tape.gradient(loss, network.trainable_weights)
    without = [w.path for w, g in zip(network.trainable_weights, grads)
               if g is None or not np.any(g.numpy())]
    assert not without, f"{network.name}: no gradient for {without}"


def test_a_gin_binding_of_the_decoded_genotype_builds_the_discrete_neck(
    no_gin_bindings):
  del no_gin_bindings
  import gin  # pylint: disable=import-outside-toplevel
  from official.core import registry  # pylint: disable=import-outside-toplevel
  gin.parse_config(f"""
      auto_fpn.genotype = {json.dumps(NECK_GENOTYPE)}
      auto_fpn.min_level = 2
      auto_fpn.max_level = 5
      auto_fpn.num_filters = {WIDTH}
  """)
  neck = registry.DECODERS["auto_fpn"](input_specs=SPECS)
  assert not neck.search and neck.genotype == NECK_GENOTYPE
  assert neck.count_params() == neck_parameter_count(NECK_GENOTYPE, SPECS, 2,
                                                     5, WIDTH)
