"""Search spaces: SpineNet presets and the Eff-SpineNet resource space.

SpineNet paper §3.1 and §5.1 (the space), §5.5 / Table 7 (fixed orders);
Eff-SpineNet paper §3.3 (resource distribution, eq. 2-4).
"""

import math
import os
import time

import gin
import numpy as np
import pytest

from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS
from modeling.backbones.spinenet import parse_block_specs
from official.search.controllers import common
from official.search.spaces import get_space
from official.search.spaces import resource_space
from official.search.spaces import spinenet_space
from official.search.spaces import SPACES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PRESETS = spinenet_space.SPACE_PRESETS
# 100,000 samples per SpineNet preset: 3-11 s each on one core (block-spec
# validation formats its error text only when it raises). The resource
# space's samples each solve eq. 2-4 (~1.7 ms), so it checks 2,000 unless
# SEARCH_FULL_VALIDITY=1.
FULL = os.environ.get("SEARCH_FULL_VALIDITY") == "1"
NUM_SAMPLES = 100_000
NUM_RESOURCE_SAMPLES = 100_000 if FULL else 2_000


def _gin_block(name):
  """The `spinenet.block_specs = [...]` text of an ablation gin file."""
  with open(os.path.join(REPO, "configs", "backbones", "ablations",
                         f"{name}.gin")) as f:
    text = f.read()
  start = text.index("spinenet.block_specs")
  return text[start:text.index("]\n", start) + 1]


def test_registry_lists_names_for_an_unknown_space():
  assert set(SPACES) == set(PRESETS) | {"resource", "sp_nas"}
  with pytest.raises(ValueError, match="'nope'.*spinenet49.*resource"):
    get_space("nope")


@pytest.mark.parametrize("name", ["spinenet49", "mini"])
def test_spinenet49_round_trips_exactly(name):
  space = get_space(name)
  decisions = space.encode(SPINENET_BLOCK_SPECS)
  assert len(decisions) == space.num_decisions()
  assert space.decode(decisions) == SPINENET_BLOCK_SPECS
  assert space.known_architectures()["spinenet49"] == SPINENET_BLOCK_SPECS
  # JSON turns tuples into lists; they encode the same.
  as_lists = [[l, f, list(o), x] for l, f, o, x in SPINENET_BLOCK_SPECS]
  assert space.encode(as_lists) == decisions


def test_spinenet49_encoding_in_the_full_space():
  """Canonical encoding: per block level, adjustment, parents, type."""
  space = get_space("spinenet49")
  d = space.encode(SPINENET_BLOCK_SPECS)
  assert space.num_decisions() == 10 * 5 + 5 * 4 == 70
  # Block 1: level 2 (option 0), adjustment 0 (option 1), parents (0, 1),
  # bottleneck. Block 8: level 7 from R0-SP53's only L5 block, +2.
  assert d[:5] == [0, 1, 0, 1, 0]
  assert d[35:40] == [3, 3, 6, 8, 1]
  # Outputs: level 4 first (option 2), parents (5, 10), bottleneck.
  assert d[50:54] == [2, 5, 10, 0]


@pytest.mark.parametrize("name", ["hourglass", "fish"])
def test_fixed_orders_round_trip_and_render_their_gin_file(name):
  space = get_space(name)
  specs = spinenet_space.load_ablation_specs(name)
  assert space.known_architectures() == {name: specs}
  assert space.decode(space.encode(specs)) == specs
  # The rendering is the ablation file's own block, character for character.
  assert space.gin_bindings(specs) == [_gin_block(name)]
  # Connections only: 15 blocks x 2 parents.
  assert space.num_decisions() == 30


def test_mini_holds_spinenet49_and_the_sequential_network():
  space = get_space("mini")
  sequential = spinenet_space.load_ablation_specs("spinenet49_sequential")
  assert space.known_architectures()["sequential"] == sequential
  assert space.encode(sequential) == [0] * 15
  assert space.encode(SPINENET_BLOCK_SPECS) == [2] * 15
  assert space.decode([0] * 15) == sequential
  assert space.gin_bindings(sequential) == [_gin_block(
      "spinenet49_sequential")]
  # Option 1 (two predecessors) is masked where it is SpineNet-49's pair.
  assert space.valid_options([]) == [0, 2]
  assert space.valid_options([0]) == [0, 1, 2]
  assert space.log10_size() == pytest.approx(math.log10(3 ** 11 * 2 ** 4))


@pytest.mark.parametrize("name", ["R0-SP53", "R0-SP53+"])
def test_r0_sp53_presets_say_why_spinenet49_is_outside(name):
  space = get_space(name)
  with pytest.raises(ValueError, match="block 2 is a 'residual' block"):
    space.encode(SPINENET_BLOCK_SPECS)
  (known, specs), = space.known_architectures().items()
  assert space.decode(space.encode(specs)) == specs
  # SpineNet-49's connections and outputs, bottleneck blocks only.
  assert [s[2] for s in specs] == [s[2] for s in SPINENET_BLOCK_SPECS]
  assert {s[1] for s in specs} == {"bottleneck"}
  if known == "spinenet49_bottleneck":
    assert [s[0] for s in specs] == [s[0] for s in SPINENET_BLOCK_SPECS]
  else:  # Table 1: R0-SP53 intermediate levels {L2: 1, L3: 3, L4: 5, L5: 1}.
    assert sorted(s[0] for s in specs[:10]) == [2, 3, 3, 3, 4, 4, 4, 4, 4, 5]


def test_r0_sp53_rejects_levels_outside_its_multiset():
  space = get_space("R0-SP53")
  specs = list(space.known_architectures()["spinenet49_unadjusted"])
  specs[0] = (3,) + specs[0][1:]
  with pytest.raises(ValueError, match="not a permutation"):
    space.encode(specs)


def _replace(specs, block, **fields):
  specs = [list(s) for s in specs]
  index = {"level": 0, "block_fn": 1, "offsets": 2, "is_output": 3}
  for key, value in fields.items():
    specs[block - 1][index[key]] = value
  return specs


@pytest.mark.parametrize("block,fields,message", [
    (10, dict(offsets=(0, 10)), r"last 5 blocks built \(offsets 6..10\)"),
    (3, dict(offsets=(3,)), "two distinct parents"),
    (3, dict(offsets=(3, 2)), "increasing order"),
    (11, dict(is_output=False), "duplicate|no output block|is_output"),
    (2, dict(level=1), "block 2 has level 1; the space's blocks have levels 2..7"),
])
def test_out_of_space_architectures_name_the_reason(block, fields, message):
  with pytest.raises(ValueError, match=message):
    get_space("spinenet49").encode(_replace(SPINENET_BLOCK_SPECS, block,
                                            **fields))


def test_fixed_order_and_mini_errors_name_the_reason():
  hourglass = spinenet_space.load_ablation_specs("hourglass")
  swapped = _replace(_replace(hourglass, 1, level=3), 2, level=2)
  with pytest.raises(ValueError, match="fixed order"):
    get_space("hourglass").encode(swapped)
  with pytest.raises(ValueError, match="block 5 has parents .*offers"):
    get_space("mini").encode(_replace(SPINENET_BLOCK_SPECS, 5,
                                      offsets=(2, 4)))
  with pytest.raises(ValueError, match="keeps SpineNet-49's"):
    get_space("mini").encode(_replace(SPINENET_BLOCK_SPECS, 2,
                                      block_fn="bottleneck"))


def test_decode_names_the_invalid_step():
  space = get_space("spinenet49")
  decisions = space.encode(SPINENET_BLOCK_SPECS)
  decisions[2] = 1  # Block 1's first parent must be 0 (parent2 must follow).
  with pytest.raises(ValueError, match=r"decision 2 \(parent1 of block 1\)"):
    space.decode(decisions)
  with pytest.raises(ValueError, match="69 decisions; the space has 70"):
    space.decode(decisions[:-1])


def test_space_sizes_count_the_decision_lists():
  """R0-SP53: multiset permutations of the intermediate blocks, 5! output
  orders and the parent pairs of each block (counted from the masks)."""
  space = get_space("R0-SP53")
  pairs = 1
  for k in range(1, 16):
    step = 3 * (k - 1) + 1  # Level, parent1, parent2 per block.
    prefix = [0] * step
    count = 0
    for p1 in space.valid_options(prefix):
      count += len(space.valid_options(prefix + [p1]))
    pairs *= count
  orders = math.factorial(10) // (math.factorial(3) * math.factorial(5))
  assert space.log10_size() == pytest.approx(
      math.log10(orders * math.factorial(5) * pairs))
  # §3.1: adjustments multiply by 4 per block (3 for the L2 block: no L1),
  # block types by 2^15.
  assert get_space("R0-SP53+").log10_size() == pytest.approx(
      space.log10_size() + math.log10(3 * 4 ** 9))
  assert get_space("spinenet49").log10_size() == pytest.approx(
      get_space("R0-SP53+").log10_size() + 15 * math.log10(2))


def test_valid_mask_agrees_with_valid_options():
  rng = np.random.default_rng(0)
  for name in PRESETS:
    space = get_space(name)
    batch = common.sample_uniform_batch(space, rng, 20)
    for step in range(space.num_decisions()):
      mask = space.valid_mask(batch[:, :step])
      for row in range(len(batch)):
        options = space.valid_options(list(batch[row, :step]))
        assert list(np.flatnonzero(mask[row])) == options, (name, step)


@pytest.mark.parametrize("name", PRESETS)
def test_random_samples_pass_the_builders_validation(name):
  space = get_space(name)
  start = time.perf_counter()
  batch = common.sample_uniform_batch(space, np.random.default_rng(1),
                                      NUM_SAMPLES)
  distinct = set()
  for decisions in batch:
    specs = space.decode(decisions)
    parse_block_specs(specs, 2, 3, 7)
    distinct.add(specs)
  # Samples differ; mini's 2.8M architectures (non-uniformly drawn) repeat
  # about 1.7% of 100,000 samples.
  assert len(distinct) >= (0.95 if name == "mini" else 0.999) * NUM_SAMPLES
  print(f"{name}: {NUM_SAMPLES} samples in "
        f"{time.perf_counter() - start:.1f} s")


def test_gin_binding_loads_after_the_spinenet49_file():
  from official import registry  # pylint: disable=g-import-not-at-top,unused-import
  space = get_space("spinenet49")
  specs = common.sample_uniform_batch(space, np.random.default_rng(2), 1)[0]
  specs = space.decode(specs)
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(REPO, "configs", "backbones", "spinenet49.gin")],
      space.gin_bindings(specs) + ["spinenet.model_id = '96'"])
  assert gin.query_parameter("spinenet.block_specs") == list(specs)
  assert gin.query_parameter("spinenet.model_id") == "96"
  gin.clear_config()


def test_resource_space_widths_and_gin():
  space = get_space("resource")
  assert space.num_decisions() == 18 and space.num_options(0) == 5
  assert space.log10_size() == pytest.approx(18 * math.log10(5))
  b0 = space.known_architectures()["sp_efficientnet_b0"]
  assert b0["widths"] == list(eff_lib.SP_EFFICIENTNET_B0_FILTERS)
  assert space.decode([3] * 18)["widths"] == b0["widths"]  # Equal betas.
  arch = space.decode([0, 4] * 9)
  assert arch["betas"] == [1, 20] * 9
  assert space.encode(arch) == [0, 4] * 9
  assert space.gin_bindings(arch) == [
      f"eff_spinenet.block_filters = {arch['widths']}"]
  wrong = dict(arch, widths=[w + 8 for w in arch["widths"]])
  with pytest.raises(ValueError, match="not what eq. 2-4 give"):
    space.encode(wrong)
  with pytest.raises(ValueError, match=r"beta of block 3 is 7"):
    space.encode(dict(betas=[1, 1, 7] + [1] * 15))


def test_resource_samples_outside_the_budget_are_reported():
  space = get_space("resource")
  arch = space.decode([1] * 18)
  assert space.infeasibility(arch) is None
  over = dict(arch, relative_flops=1.12)
  under = dict(arch, relative_flops=0.85)
  reason = space.infeasibility(over)
  assert "x1.120" in reason and "+-10%" in reason
  assert resource_space.out_of_budget(space, [arch, over, arch, under]) == [
      (1, 1.12), (3, 0.85)]


def test_random_resource_samples_are_valid_and_within_budget():
  space = get_space("resource")
  batch = common.sample_uniform_batch(space, np.random.default_rng(3),
                                      NUM_RESOURCE_SAMPLES)
  archs = [space.decode(d) for d in batch]
  for arch in archs:
    space.validate(arch)
  # Eff-SpineNet §5.1.5: sampled FLOPs fall within +-10% of the target.
  assert resource_space.out_of_budget(space, archs) == []
