"""Tests for the SP-NAS backbone: the encodings and morphisms as data
(modeling/backbones/spnet_spec.py) and the Keras network
(modeling/backbones/spnet.py).

Networks here are ResNet-18-like (8 blocks) at 32-64 px, base width 8 for BB
and BNB and 64 for XB (whose 2n channels must split into 32 groups).
"""

import ast
import re

import keras
import numpy as np
import pytest

from modeling.backbones import spnet_spec as S
from modeling.backbones.registry import BACKBONES
from modeling.backbones.spnet import SPNet, SPNetUpsample, spnet
from modeling.layers.blocks import ResidualBlock
from tests.modeling.layer_harness import check_layer

RESNET18 = S.KNOWN_SERIAL["resnet18"]
LAYER_NAME = re.compile(
    r"^(images|stem_conv[12]|block\d+|sub\d_block\d+|"
    r"sub\d_stage\d_(up|upsample|add))$")


# ------------------------------------------------------------------ helpers


@pytest.fixture
def bfloat16_policy():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


def randomize(model, seed):
  """Random non-zero weights, batch-norm statistics included."""
  rng = np.random.default_rng(seed)
  for v in model.weights:
    shape, leaf = tuple(v.shape), v.path.rsplit("/", 1)[-1]
    if leaf in ("gamma", "moving_variance"):
      value = rng.uniform(0.5, 1.5, shape)
    elif leaf in ("beta", "moving_mean", "bias"):
      value = rng.normal(0.0, 0.1, shape)
    else:
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
    v.assign(value.astype("float32"))


def alias(name):
  for pattern, replacement in S.INHERITANCE_ALIASES:
    name = re.sub(pattern, replacement, name)
  return name


def inherit(child, parent, use_aliases=False):
  """Copies weights into every layer of `child` whose name (or, with
  use_aliases, its alias) is a layer of `parent`; returns the copied names."""
  parent_layers = {layer.name: layer for layer in parent.layers}
  copied = []
  for layer in child.layers:
    source = parent_layers.get(layer.name)
    if source is None and use_aliases:
      source = parent_layers.get(alias(layer.name))
    if source is not None and source.weights:
      layer.set_weights(source.get_weights())
      copied.append(layer.name)
  return copied


def images(size, seed=0, batch=2):
  return np.random.default_rng(seed).normal(
      size=(batch, size, size, 3)).astype("float32")


def run(model, x):
  return {k: np.asarray(v) for k, v in model(x, training=False).items()}


# ------------------------------------------------------- encodings as data


def test_known_codes_round_trip():
  for name, code in S.KNOWN_SERIAL.items():
    spec = S.parse_serial(code)
    assert spec.code == str(spec) == code, name
    assert S.parse_serial(spec.code, spec.block_ids) == spec, name
  # ResNet-50 is 3-4-6-3 bottlenecks with 256..2048 output channels.
  spec = S.parse_serial(S.KNOWN_SERIAL["resnet50"])
  assert [len(s) for s in spec.stages] == [3, 4, 6, 3]
  assert spec.levels == (2, 3, 4, 5)
  assert spec.level_channels() == {"2": 256, "3": 512, "4": 1024, "5": 2048}
  assert spec.block_ids == tuple(range(16))
  assert S.parse_serial(S.KNOWN_SERIAL["resnet101"]).num_blocks == 33
  # Table 7 as printed (spaces after commas) is the same network.
  voc = S.parse_serial("BB(11d, 1111, d11111111, d111, 1, 1111)")
  assert voc == S.parse_serial(S.KNOWN_SERIAL["serialnet_voc"])
  assert voc.levels == (2, 3, 4, 5, 6, 7)
  assert voc.block_channels(64) == (64, 64, 128) + (128,) * 4 + (256,) * 9 + (
      512,) * 4 + (512,) + (512,) * 4
  # Sec. 3.1's example code, and ids that survive a round trip.
  example = S.parse_serial("BNB(11,1d1,111,1d11,11d1)")
  assert example.level_channels(16) == {"2": 64, "3": 128, "4": 128,
                                        "5": 256, "6": 512}
  ids = tuple(range(30, 46))
  assert S.parse_serial(example.code, ids).block_ids == ids
  assert S.parse_serial(example.code, np.arange(30, 46)).block_ids == ids
  for name, (serial, counts) in S.KNOWN_PARALLEL.items():
    assert len(counts) == S.parse_serial(S.KNOWN_SERIAL[serial]).num_stages
    assert S.known_parallel(name).subnets == counts


def test_block_infos_follow_table_2_and_the_shortcut_rule():
  spec = S.parse_serial("BNB(11d,1111,d1,d1)")
  infos = spec.blocks(16)
  assert [(b.stage, b.strides, b.filters, b.in_channels, b.out_channels,
           b.use_projection) for b in infos[:5]] == [
               (1, 1, 16, 16, 64, True),    # Stem 16 -> 4n.
               (1, 1, 16, 64, 64, False),
               (1, 1, 32, 64, 128, True),   # "d": n doubles, stride 1.
               (2, 2, 32, 128, 128, False),  # Strided, same channels.
               (2, 1, 32, 128, 128, False)]


@pytest.mark.parametrize("code,block_ids,message", [
    ("BNX(11,d1,d1,d1)", None, "unknown block type 'BNX'"),
    ("BB(11,d2,d1,d1)", None,
     r"symbol '2' at position 7 \(stage 2, symbol 2\)"),
    ("BB(11, d1,d1,dx)", None,
     r"symbol 'x' at position 14 \(stage 4, symbol 2\)"),
    ("BB(11,,d1,d1,d1)", None, "stage 2 .*is empty"),
    ("BB(11;d1;d1;d1)", None, "separated by ','"),
    ("BB 11,d1,d1,d1", None, "expected the form 'TYPE"),
    ("BB(111,d11,d11)", None, r"has 3 stages; expected 4\.\.6"),
    ("BB(11,d1,d1,d1,1,1,1)", None, r"has 7 stages; expected 4\.\.6"),
    ("BB(1,d1,d1,d1)", None, r"has 7 blocks; expected 8\.\.60"),
    ("BB(1111111111111111111111111111111111111111111111111111111111,d,d,d)",
     None, r"has 61 blocks; expected 8\.\.60"),
    ("BB(11,d1,d1,d1)", (0, 1, 2), "block_ids has 3 entries but the code "
     "has 8 blocks"),
    ("BB(11,d1,d1,d1)", (0, 1, 2, 3, 4, 5, 6, 2),
     r"block id 2 is repeated \(blocks 2 and 7\)"),
])
def test_bad_codes_are_named(code, block_ids, message):
  with pytest.raises(ValueError, match=message) as error:
    S.parse_serial(code, block_ids)
  assert repr(code) in str(error.value)


# ---------------------------------------------------------------- morphisms


def test_expand_inserts_a_plain_block_with_a_new_id():
  spec = S.parse_serial(RESNET18)
  child = S.expand(spec, 2)
  assert child.code == "BB(11,d11,d1,d1)"
  assert child.block_ids == (0, 1, 2, 8, 3, 4, 5, 6, 7)
  grandchild = S.expand(child, 1, new_id=20)  # Last block of stage 1.
  assert grandchild.code == "BB(111,d11,d1,d1)"
  assert grandchild.block_ids == (0, 1, 20, 2, 8, 3, 4, 5, 6, 7)
  assert spec.code == RESNET18  # Never mutated.
  with pytest.raises(ValueError, match=r"after_block=8; expected an int in "
                     r"0\.\.7"):
    S.expand(spec, 8)
  with pytest.raises(ValueError, match="new_id=3 is already the id of block "
                     "3"):
    S.expand(spec, 0, new_id=3)
  full = S.SerialSpec("BB", ("1" * 57, "d", "d", "d"))
  with pytest.raises(ValueError, match="61 blocks; at most 60"):
    S.expand(full, 0)


def test_swap_moves_a_boundary_and_keeps_blocks():
  spec = S.parse_serial(S.KNOWN_SERIAL["resnet50"])
  child = S.swap(spec, 2, -2)
  assert child.code == "BNB(111,d1,11d11111,d11)"
  assert child.block_ids == spec.block_ids
  assert S.swap(spec, 1, 3).code == "BNB(111d11,1,d11111,d11)"
  # Channels of every block are unchanged; only strides move.
  assert child.block_channels() == spec.block_channels()
  assert [b.strides for b in child.blocks()] == [
      1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1]
  with pytest.raises(ValueError, match=r"would empty stage 4 \(3 blocks\)"):
    S.swap(spec, 3, 3)
  with pytest.raises(ValueError, match=r"would empty stage 1 \(3 blocks\)"):
    S.swap(spec, 1, -3)
  with pytest.raises(ValueError, match=r"shift=0; expected one of"):
    S.swap(spec, 1, 0)
  with pytest.raises(ValueError, match=r"boundary=4; expected an int in "
                     r"1\.\.3"):
    S.swap(spec, 4, 1)


def test_add_stage_appends_one_strided_block():
  spec = S.parse_serial(S.KNOWN_SERIAL["resnet50"])
  child = S.add_stage(spec)
  assert child.code == "BNB(111,d111,d11111,d11,1)"
  assert child.block_ids == tuple(range(17))
  assert child.level_channels()["6"] == 2048
  six = S.add_stage(child, new_id=40)
  assert six.block_ids[-1] == 40 and six.num_stages == 6
  with pytest.raises(ValueError, match="7 stages; at most 6"):
    S.add_stage(six)


def test_random_modifications_are_valid_and_keep_the_blocks():
  rng = np.random.default_rng(0)
  kinds = set()
  description = re.compile(r"^(expand after block (\d+) \(stage (\d+)\)|"
                           r"swap stages (\d)\|(\d) by (-?[123])|"
                           r"add stage (\d))$")
  for start in ("resnet18", "resnet50", "serialnet_voc", "serialnet_ecp"):
    spec = S.parse_serial(S.KNOWN_SERIAL[start])
    for _ in range(40):
      child, descriptions = S.propose(spec, rng)
      assert len(descriptions) == 3
      grown = 0
      for text in descriptions:
        match = description.match(text)
        assert match, text
        kinds.add(text.split()[0])
        grown += not text.startswith("swap")
      assert child.num_blocks == spec.num_blocks + grown
      # Ids survive in their order: swap keeps order, expand and add_stage
      # only insert.
      kept = [i for i in child.block_ids if i in spec.block_ids]
      assert kept == list(spec.block_ids)
      assert S.parse_serial(child.code, child.block_ids) == child
      spec = child
  assert kinds == {"expand", "swap", "add"}
  # At the limits only swaps remain.
  full = S.SerialSpec("BB", ("1" * 56, "d", "d", "d"))
  moves = S.valid_moves(full, max_stages=4, max_blocks=59)
  assert moves and all(m[0] == "swap" for m in moves)
  # The moves of a spec are exactly the valid ones.
  spec = S.parse_serial(RESNET18)
  swaps = [m for m in S.valid_moves(spec) if m[0] == "swap"]
  assert swaps == [("swap", 1, -1), ("swap", 1, 1), ("swap", 2, -1),
                   ("swap", 2, 1), ("swap", 3, -1), ("swap", 3, 1)]


def test_parallel_encoding():
  assert S.check_parallel("(0, 2, 1, 1, 0)", 5) == (0, 2, 1, 1, 0)
  assert S.parallel_code((0, 2, 1, 1, 0)) == "(0,2,1,1,0)"
  spec = S.ParallelSpec(S.parse_serial(RESNET18), [1, 0, 2, 3])
  assert spec.code == (RESNET18, "(1,0,2,3)")
  assert str(spec) == RESNET18 + " (1,0,2,3)"
  with pytest.raises(ValueError, match=r"has 3 entries; expected one subnet "
                     r"count per stage \(4\)"):
    S.check_parallel((0, 1, 2), 4)
  with pytest.raises(ValueError, match=r"stage 2 has 4 subnets; expected an "
                     r"int in 0\.\.3"):
    S.check_parallel((0, 4, 0, 0), 4)
  with pytest.raises(ValueError, match=r"stage 1 has -1 subnets"):
    S.check_parallel("(-1,0,0,0)", 4)
  # Copy k reads copy k of the stage below, or its last one.
  counts = (1, 0, 2, 1)
  assert [S.feeding_copy(counts, 3, k) for k in (1, 2)] == [0, 0]
  assert [S.feeding_copy(counts, 4, k) for k in (0, 1)] == [0, 1]
  assert S.feeding_copy(counts, 1, 1) == 0


def test_inheritance_alias_names_the_serial_block():
  assert alias("sub2_block17/conv_1/conv/kernel") == "block17/conv_1/conv/kernel"
  assert alias("spnet/sub3_block4/shortcut/bn/gamma") == (
      "spnet/block4/shortcut/bn/gamma")
  assert alias("sub1_stage3_up/kernel") == "stage3_up/kernel"
  assert alias("block12/conv_2/bn/beta") == "block12/conv_2/bn/beta"


def test_serial_cost_matches_resnet_counts():
  # torchvision's ResNet-50 / ResNet-18 without their fc layers (23,508,032
  # and 11,176,512 trainable), with the 7x7 stem conv (9,408 weights)
  # replaced by the two 3x3 convs (1,728 + 36,864) and one more batch norm
  # (128).
  stem_change = -9_408 + 1_728 + 36_864 + 128
  for name, torchvision in (("resnet50", 23_508_032),
                            ("resnet18", 11_176_512)):
    cost = S.serial_cost(S.parse_serial(S.KNOWN_SERIAL[name]), 224)
    assert cost["trainable_params"] == torchvision + stem_change, name
  # Stem multiply-adds at 32 px, base 8: 16x16x(3x3x3)x8 + 8x8x(3x3x8)x8.
  cost = S.serial_cost(S.parse_serial(RESNET18), 32, base_channels=8)
  assert cost["stem"]["madds"] == 16 * 16 * 27 * 8 + 8 * 8 * 72 * 8
  assert cost["params"] == cost["stem"]["params"] + sum(
      s["params"] for s in cost["stages"])
  with_copies = S.serial_cost(S.parse_serial(RESNET18), 32, 8, (0, 1, 0, 2))
  stage4 = with_copies["stages"][3]
  # Copy of stage 4 (64 channels, 1x1) plus its up conv 64 -> 32 with bias.
  assert stage4["subnet_params"] == stage4["params"] + 64 * 32 + 32
  assert stage4["total_madds"] == stage4["madds"] + 2 * (
      stage4["madds"] + 1 * 1 * 64 * 32)
  # Sampling probability x subnet multiply-adds is the same for every stage.
  ecp = S.parse_serial(S.KNOWN_SERIAL["serialnet_ecp"])
  weights = S.subnet_sampling_weights(ecp, 64, 8)
  stages = S.serial_cost(ecp, 64, 8)["stages"]
  assert sum(weights) == pytest.approx(1.0)
  products = [w * s["subnet_madds"] for w, s in zip(weights, stages)]
  assert products == pytest.approx([products[0]] * 5)
  assert len(set(s["subnet_madds"] for s in stages)) == 5


def test_spec_module_imports_no_tensorflow():
  with open(S.__file__, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  imported = {alias.name.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, (ast.Import, ast.ImportFrom))
              for alias in (node.names if isinstance(node, ast.Import) else
                            [ast.alias(node.module or "")])}
  assert imported == {"dataclasses", "math", "numbers", "re"}


# ---------------------------------------------------------- Keras network


def test_serial_network_levels_names_and_shortcuts():
  spec = S.swap(S.parse_serial(RESNET18), 1, 1)  # BB(11d,1,d1,d1)
  model = spnet((64, 64, 3), spec, base_channels=8)
  assert model.output_specs == {"2": (None, 16, 16, 16),
                                "3": (None, 8, 8, 16),
                                "4": (None, 4, 4, 32),
                                "5": (None, 2, 2, 64)}
  assert all(LAYER_NAME.match(layer.name) for layer in model.layers), [
      layer.name for layer in model.layers]
  # Block 2 doubles (projection, stride 1); block 3 opens stage 2 without
  # changing channels (subsampling shortcut, no weights).
  assert model.get_layer("block2").use_projection
  assert model.get_layer("block2").strides == 1
  assert not model.get_layer("block3").use_projection
  assert model.get_layer("block3").strides == 2
  assert not any("block3/shortcut" in v.path for v in model.weights)
  assert model.count_params() == S.serial_cost(spec, 64, 8)["params"]
  # Every residual branch's last batch norm starts at scale 0.
  for b in range(8):
    gamma = model.get_layer(f"block{b}").branch[-1].bn.gamma
    assert not np.any(np.asarray(gamma))


def test_strided_block_without_projection_subsamples():
  block = ResidualBlock(4, strides=2, zero_init_residual=True)
  x = np.abs(images(7)[..., :1].repeat(4, axis=-1))
  np.testing.assert_array_equal(block(x, training=False), x[:, ::2, ::2, :])
  check_layer(lambda: ResidualBlock(4, strides=2, zero_init_residual=True),
              (2, 7, 7, 4), (2, 4, 4, 4))
  check_layer(lambda: SPNetUpsample(2), [(2, 3, 3, 4), (2, 5, 5, 6)],
              (2, 5, 5, 4))


@pytest.mark.parametrize("code,base,size", [
    ("BB(11,d1,d1,d1)", 8, 64),
    ("BNB(11,d1,d1,d1)", 8, 64),
    ("XB(11,d1,11,11)", 64, 32),
])
def test_expand_is_function_preserving(code, base, size):
  parent_spec = S.parse_serial(code)
  child_spec = S.expand(S.expand(parent_spec, 3), 8)  # In stages 2 and 4.
  parent = spnet((size, size, 3), parent_spec, base_channels=base)
  child = spnet((size, size, 3), child_spec, base_channels=base)
  randomize(parent, seed=1)
  copied = inherit(child, parent)
  assert sorted(copied) == sorted(
      l.name for l in parent.layers if l.weights)
  x = images(size)
  expected, actual = run(parent, x), run(child, x)
  for level in expected:
    assert np.abs(expected[level]).max() > 0.1
    np.testing.assert_allclose(actual[level], expected[level], rtol=1e-5,
                               atol=1e-5)
  assert child.count_params() == S.serial_cost(child_spec, size,
                                               base)["params"]


def test_swap_keeps_every_weight():
  parent_spec = S.parse_serial("BNB(11,d1,d1,d1)")
  child_spec = S.swap(S.swap(parent_spec, 1, 1), 3, -1)
  assert child_spec.code == "BNB(11d,1,d,1d1)"
  parent = spnet((64, 64, 3), parent_spec, base_channels=8)
  child = spnet((64, 64, 3), child_spec, base_channels=8)
  shapes = lambda m, name: [tuple(w.shape) for w in m.get_layer(name).weights]
  names = sorted(l.name for l in parent.layers)
  assert sorted(l.name for l in child.layers) == names
  for name in names:
    assert shapes(child, name) == shapes(parent, name), name
  randomize(parent, seed=2)
  inherit(child, parent)
  for p, c in zip(parent.weights, child.weights):
    assert p.path == c.path
    np.testing.assert_array_equal(np.asarray(c), np.asarray(p))
  for level, spec in parent.output_specs.items():
    assert child.output_specs[level][1:3] == spec[1:3]


def test_add_stage_keeps_the_existing_levels():
  parent_spec = S.parse_serial(RESNET18)
  parent = spnet((64, 64, 3), parent_spec, base_channels=8)
  child = spnet((64, 64, 3), S.add_stage(parent_spec), base_channels=8)
  randomize(parent, seed=3)
  inherit(child, parent)
  x = images(64)
  expected, actual = run(parent, x), run(child, x)
  assert sorted(actual) == ["2", "3", "4", "5", "6"]
  for level in expected:
    np.testing.assert_array_equal(actual[level], expected[level])
  np.testing.assert_array_equal(actual["6"], expected["5"][:, ::2, ::2, :])


def test_parallel_equals_serial_at_initialisation():
  counts = (1, 0, 2, 1)
  serial = spnet((64, 64, 3), RESNET18, base_channels=8)
  parallel = spnet((64, 64, 3), RESNET18, base_channels=8, parallel=counts)
  assert all(LAYER_NAME.match(layer.name) for layer in parallel.layers)
  randomize(serial, seed=4)
  copied = inherit(parallel, serial, use_aliases=True)
  assert "sub2_block4" in copied and "sub1_block0" in copied
  # Every variable is the serial one's, by name or alias, but the up convs.
  serial_paths = {v.path for v in serial.weights}
  for v in parallel.weights:
    assert (v.path in serial_paths or alias(v.path) in serial_paths or
            re.match(r"sub\d_stage\d_up/", v.path)), v.path
  x = images(64)
  expected, actual = run(serial, x), run(parallel, x)
  for level in expected:
    np.testing.assert_allclose(actual[level], expected[level], rtol=1e-5,
                               atol=1e-5)
  assert parallel.count_params() == S.serial_cost(
      S.parse_serial(RESNET18), 64, 8, counts)["params"]
  # The copies are wired as the recurrence says. Copy 1 of stage 3 feeds
  # copy 2 of stage 3 only through its (zero) up conv, and copy 1 of stage 4:
  # a non-zero sub1_stage3_up changes level 5 alone.
  def perturb(name):
    up = parallel.get_layer(name)
    up.set_weights([np.full(w.shape, 0.05, "float32")
                    for w in up.get_weights()])
    return run(parallel, x)
  changed = perturb("sub1_stage3_up")
  assert [level for level in expected
          if not np.allclose(changed[level], expected[level], rtol=1e-5,
                             atol=1e-5)] == ["5"]
  # ... and the up conv into copy 2 changes level 4 (the last copy's output).
  changed_again = perturb("sub2_stage3_up")
  assert np.abs(changed_again["4"] - changed["4"]).max() > 1e-3
  np.testing.assert_array_equal(changed_again["3"], expected["3"])


def test_parallel_copies_of_a_table_7_backbone():
  # SPNet-VOC's shape (6 stages, one copy of the last) at a tiny width.
  name, counts = S.KNOWN_PARALLEL["spnet_voc"]
  model = spnet((64, 64, 3), name, base_channels=8, parallel=counts,
                min_level=3)
  spec = S.parse_serial(S.KNOWN_SERIAL[name])
  assert sorted(model.output_specs) == ["3", "4", "5", "6", "7"]
  assert model.output_specs["7"] == (None, 1, 1, 64)
  assert model.count_params() == S.serial_cost(spec, 64, 8, counts)["params"]
  copies = [l.name for l in model.layers if l.name.startswith("sub")]
  assert copies == ["sub1_stage6_up", "sub1_stage6_upsample",
                    "sub1_stage6_add", "sub1_block21", "sub1_block22",
                    "sub1_block23", "sub1_block24"]


def test_unknown_and_odd_input_sizes(bfloat16_policy):
  # Odd sides: the up path crops its 2x upsampling (level 4 is 3x4, level 3
  # 5x7), under mixed precision.
  model = spnet((None, None, 3), RESNET18, base_channels=8,
                parallel=(1, 1, 1, 1))
  x = np.random.default_rng(5).normal(size=(1, 40, 56, 3)).astype("float32")
  outputs = model(x, training=False)
  assert {k: tuple(v.shape) for k, v in outputs.items()} == {
      "2": (1, 10, 14, 8), "3": (1, 5, 7, 16), "4": (1, 3, 4, 32),
      "5": (1, 2, 2, 64)}
  assert all(v.dtype == "bfloat16" for v in outputs.values())


def test_madds_match_the_convolutions_run(monkeypatch):
  counts = (0, 1, 0, 1)
  spec = S.swap(S.parse_serial("BNB(11,d1,d1,d1)"), 2, 1)
  model = spnet((48, 48, 3), spec, base_channels=8, parallel=counts)
  seen = []
  original = keras.layers.Conv2D.call

  def call(layer, inputs):
    outputs = original(layer, inputs)
    seen.append(int(np.prod(outputs.shape[1:3])) *
                int(np.prod(layer.kernel.shape)))
    return outputs

  monkeypatch.setattr(keras.layers.Conv2D, "call", call)
  model(images(48, batch=1), training=False)
  assert sum(seen) == S.serial_cost(spec, 48, 8, counts)["madds"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(serial="BB(11,d1,d1,x1)"), r"symbol 'x' at position 12"),
    (dict(parallel=(0, 1, 0)), r"parallel=\(0, 1, 0\) has 3 entries"),
    (dict(parallel=(0, 1, 4, 0)), r"stage 3 has 4 subnets; expected an int "
     r"in 0\.\.3"),
    (dict(serial="XB(11,d1,d1,d1)"), r"base_channels=8 with XB blocks.*"
     r"multiple of 16"),
    (dict(min_level=1), r"min_level=1, max_level=5.*levels 2\.\.5"),
    (dict(max_level=6), r"min_level=2, max_level=6.*levels 2\.\.5"),
    (dict(min_level=4, max_level=3), r"need 2 <= min_level <= max_level <= 5"),
    (dict(block_ids=(0, 1, 2)), "block_ids has 3 entries"),
])
def test_bad_arguments_are_named(kwargs, message):
  arguments = dict(input_shape=(32, 32, 3), serial=RESNET18, base_channels=8)
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    spnet(**arguments)


def test_config_round_trip_and_registry():
  assert BACKBONES["spnet"] is spnet
  model = spnet((32, 32, 3), "resnet18", block_ids=range(10, 18),
                base_channels=8, parallel="(0,1,0,0)", min_level=3,
                init_stochastic_depth_rate=0.2, dropblock_keep_prob=0.9)
  config = model.get_config()
  assert config["serial"] == RESNET18 and config["parallel"] == [0, 1, 0, 0]
  assert config["block_ids"] == list(range(10, 18))
  assert config["max_level"] == 5
  # Stochastic depth ramps over the serial blocks; copies share the rate.
  assert model.get_layer("block17").stochastic_depth_rate == pytest.approx(0.2)
  assert model.get_layer("sub1_block12").stochastic_depth_rate == (
      model.get_layer("block12").stochastic_depth_rate) == pytest.approx(
          0.2 * 3 / 8)
  assert model.get_layer("block13").dropblock_keep_prob is None  # Level 3.
  assert model.get_layer("block14").dropblock_keep_prob == 0.9  # Level 4.
  clone = SPNet.from_config(config)
  assert clone.get_config() == config
  clone.set_weights(model.get_weights())
  x = images(32)
  expected, actual = run(model, x), run(clone, x)
  for level in expected:
    np.testing.assert_allclose(actual[level], expected[level], rtol=1e-5,
                               atol=1e-5)
  outputs = model(x, training=True)
  assert all(np.isfinite(np.asarray(v)).all() for v in outputs.values())
