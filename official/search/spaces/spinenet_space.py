"""SpineNet search spaces (SpineNet paper §3.1, §3.3, §5.1, §5.5 / Table 7).

An architecture is a tuple of SpineNet block specs, exactly the format of
`modeling.backbones.spinenet.SPINENET_BLOCK_SPECS`: one (level, block_fn,
parent offsets, is_output) per scale-permuted block, offsets indexing
[stem block 0, stem block 1, block 1, block 2, ...]. The backbone builds from
these specs; which blocks stay unconsumed (and feed the output block of their
level) is the builder's rule in modeling/backbones/spinenet.py, so search and
training agree by construction and nothing here re-implements it.

Decisions, block by block (block k = 1..N, net offset k + 1):
  level      which level the k-th block of its group (intermediate blocks
             first, then the 5 output blocks) takes from what is left of the
             group's level multiset: permuting the intermediate and the output
             blocks separately (§3.1) without counting equal blocks twice.
             Option l - 2 is level l (2..7).
  adjust     intermediate blocks only: level adjustment -1, 0, +1, +2
             (options 0..3), masked so the level stays in 2..7 (§3.1).
  parent1,   two distinct parents (offsets; option o is offset o), parent1 <
  parent2    parent2, so each unordered pair is one decision list. An
             intermediate block chooses among the last 5 blocks built (the
             stem blocks count as built blocks, so blocks 1-5 may take them),
             an output block among all earlier blocks (§5.1).
  type       bottleneck (0) or residual (1) (§3.1).

Presets (`SPACE_PRESETS`):
  R0-SP53    permutation of R0-SP53's blocks (Table 1: intermediate
             {1 L2, 3 L3, 5 L4, 1 L5}, one output per L3..L7) + connections;
             all bottleneck (Table 3).
  R0-SP53+   + level adjustment (Table 3).
  spinenet49 + block type: the space SpineNet-49 was found in.
  hourglass, fish   the fixed orders of Table 7 (the level order and outputs
             of configs/backbones/ablations/hourglass.gin and fish.gin),
             searching only the connections (§5.5).
  mini       see MiniSpace below.

SpineNet-49 itself (2 L7 blocks, residual blocks) is outside R0-SP53 (its
level multiset has 1 L7 block) and outside R0-SP53+ (bottleneck blocks only),
so encoding it there raises a ValueError naming the reason; their known
architectures are its nearest members instead ("spinenet49_bottleneck": its
levels and connections with bottleneck blocks; "spinenet49_unadjusted": the
same with each intermediate level replaced by the R0-SP53 level it was
adjusted from).

With level adjustment several (level, adjust) decision lists give the same
levels; `encode` returns the canonical one: block by block, the smallest
adjustment in the order 0, -1, +1, +2 that still lets the remaining blocks be
matched.
"""

import ast
import math
import os

import numpy as np

from official.search import base

# parse_block_specs and SPINENET_BLOCK_SPECS are the builder's own; another
# module may hold them, spinenet.py keeps both names importable.
from modeling.backbones.spinenet import parse_block_specs  # pylint: disable=g-bad-import-order
from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS

LEVELS = (2, 3, 4, 5, 6, 7)
ADJUSTMENTS = (-1, 0, 1, 2)
BLOCK_TYPES = ("bottleneck", "residual")
OUTPUT_LEVELS = (3, 4, 5, 6, 7)
NUM_INIT_BLOCKS = 2
# §5.1: intermediate blocks search parents within the last 5 blocks built.
PARENT_WINDOW = 5
# Table 1, R0-SP53: the scale-permuted network's 15 blocks per level
# {L2: 1, L3: 4, L4: 6, L5: 2, L6: 1, L7: 1}, less one output per L3..L7.
R0_SP53_INTERMEDIATE = (2, 3, 3, 3, 4, 4, 4, 4, 4, 5)
# Canonical-encoding preference among adjustments (see module docstring).
_ADJUST_ORDER = (0, -1, 1, 2)

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
ABLATIONS_DIR = os.path.join(_REPO, "configs", "backbones", "ablations")


def load_ablation_specs(name):
  """Block specs bound to `spinenet.block_specs` in an ablation gin file.

  Args:
    name: file stem in configs/backbones/ablations (e.g. "hourglass").
  Returns:
    tuple of (level, block_fn, offsets tuple, is_output).
  """
  path = os.path.join(ABLATIONS_DIR, f"{name}.gin")
  with open(path) as f:
    lines = [l.split("#")[0] for l in f]
  text = "".join(lines)
  key = "spinenet.block_specs"
  if key not in text:
    raise ValueError(f"{path} binds no {key}.")
  value = ast.literal_eval(text.split(key, 1)[1].split("=", 1)[1].strip())
  return normalize_specs(value)


def normalize_specs(architecture):
  """A list of spec entries (lists or tuples, e.g. read back from JSON) as a
  tuple of (level, block_fn, offsets tuple, is_output)."""
  if isinstance(architecture, dict) or not isinstance(
      architecture, (list, tuple)):
    raise ValueError(f"Expected a list of SpineNet block specs, got "
                     f"{type(architecture).__name__}.")
  out = []
  for i, entry in enumerate(architecture):
    if not isinstance(entry, (list, tuple)) or len(entry) != 4:
      raise ValueError(f"block_specs[{i}] {entry!r}: expected (level, "
                       "block_fn, parent offsets, is_output).")
    level, block_fn, offsets, is_output = entry
    offsets = tuple(offsets) if isinstance(offsets, (list, tuple)) else (
        offsets,)
    out.append((level, block_fn, offsets, is_output))
  return tuple(out)


def format_gin(architecture):
  """`spinenet.block_specs = [...]` in the layout of the ablation gin files."""
  rows = [f"    ({level}, {block_fn!r}, ({', '.join(map(str, offsets))}"
          f"{',' if len(offsets) == 1 else ''}), {bool(is_output)}),"
          for level, block_fn, offsets, is_output in architecture]
  return "spinenet.block_specs = [\n" + "\n".join(rows) + "\n]"


def _matchable(bases, targets):
  """Whether the base levels can be assigned to the target levels with
  adjustments in ADJUSTMENTS (sorted pairing decides it: the admissible bases
  of a target form an interval moving up with the target)."""
  return all(ADJUSTMENTS[0] <= t - b <= ADJUSTMENTS[-1]
             for b, t in zip(sorted(bases), sorted(targets)))


def _validate(architecture):
  parse_block_specs(architecture, NUM_INIT_BLOCKS, 3, 7)


class ScalePermutedSpace(base.SearchSpace):
  """A SpineNet space; see the module docstring for the decisions.

  Args:
    name: preset name.
    intermediate_levels: the intermediate blocks' levels: a multiset to
      permute, or the fixed order when `fixed_order` is given.
    fixed_order: None, or (intermediate levels, output levels) in block order
      (no permutation decisions).
    search_adjustment: level adjustment decisions for intermediate blocks.
    search_type: block type decisions for every block.
    known: dict name -> block specs in this space (checked by encode).
  """

  def __init__(self, name, intermediate_levels=R0_SP53_INTERMEDIATE,
               fixed_order=None, search_adjustment=False, search_type=False,
               known=None):
    self.name = name
    self._fixed = fixed_order
    if fixed_order is not None:
      intermediate_levels = tuple(fixed_order[0])
      if sorted(fixed_order[1]) != list(OUTPUT_LEVELS):
        raise ValueError(f"{name}: output levels {fixed_order[1]} must be a "
                         f"permutation of {OUTPUT_LEVELS}.")
    self._inter = tuple(sorted(intermediate_levels))
    self._num_inter = len(self._inter)
    self._num_blocks = self._num_inter + len(OUTPUT_LEVELS)
    self._adjust = search_adjustment
    self._types = search_type
    group_counts = {
        "intermediate": np.array([self._inter.count(l) for l in LEVELS]),
        "output": np.array([OUTPUT_LEVELS.count(l) for l in LEVELS])}
    # One entry per step: (kind, block, extra); extra is the group's base
    # counts and earlier level steps (level), the block's level step
    # (adjust), or the parent1 step (parent2).
    self._steps = []
    level_steps = {"intermediate": [], "output": []}
    self._block_steps = []
    for k in range(1, self._num_blocks + 1):
      group = "output" if k > self._num_inter else "intermediate"
      steps = {}
      if fixed_order is None:
        steps["level"] = len(self._steps)
        self._steps.append(("level", k, (group_counts[group],
                                         tuple(level_steps[group]))))
        level_steps[group].append(steps["level"])
      if search_adjustment and group == "intermediate":
        steps["adjust"] = len(self._steps)
        self._steps.append(("adjust", k, steps.get("level")))
      steps["parent1"] = len(self._steps)
      self._steps.append(("parent1", k, None))
      steps["parent2"] = len(self._steps)
      self._steps.append(("parent2", k, steps["parent1"]))
      if search_type:
        steps["type"] = len(self._steps)
        self._steps.append(("type", k, None))
      self._block_steps.append(steps)
    self._level_steps = level_steps
    self._known = {}
    for known_name, specs in (known or {}).items():
      specs = normalize_specs(specs)
      self.encode(specs)  # Raises if a preset's seed is not in its space.
      self._known[known_name] = specs

  # -- Helpers -----------------------------------------------------------

  def _is_output(self, k):
    return k > self._num_inter

  def _fixed_level(self, k):
    if self._is_output(k):
      return self._fixed[1][k - self._num_inter - 1]
    return self._fixed[0][k - 1]

  def _parent_low(self, k):
    # Block k is built after offsets 0..k; intermediate blocks see the last
    # PARENT_WINDOW of them, output blocks all.
    return 0 if self._is_output(k) else max(0, k + 1 - PARENT_WINDOW)

  # -- SearchSpace ---------------------------------------------------------

  def num_decisions(self):
    return len(self._steps)

  def num_options(self, step):
    kind, k, _ = self._steps[step]
    if kind == "level":
      return len(LEVELS)
    if kind == "adjust":
      return len(ADJUSTMENTS)
    if kind == "type":
      return len(BLOCK_TYPES)
    return k + 1

  def valid_options(self, prefix):
    step = len(prefix)
    if not 0 <= step < len(self._steps):
      raise ValueError(f"{self.name}: no decision {step}; the space has "
                       f"{len(self._steps)}.")
    kind, k, extra = self._steps[step]
    if kind == "level":
      counts, earlier = extra
      counts = counts.copy()
      for s in earlier:
        counts[prefix[s]] -= 1
      return [i for i, c in enumerate(counts) if c > 0]
    if kind == "adjust":
      level = (prefix[extra] + LEVELS[0] if extra is not None
               else self._fixed_level(k))
      return [i for i, a in enumerate(ADJUSTMENTS)
              if LEVELS[0] <= level + a <= LEVELS[-1]]
    if kind == "parent1":
      return list(range(self._parent_low(k), k))
    if kind == "parent2":
      return list(range(prefix[extra] + 1, k + 1))
    return list(range(len(BLOCK_TYPES)))

  def valid_mask(self, prefixes):
    prefixes = np.asarray(prefixes, dtype=np.int64)
    batch, step = prefixes.shape
    kind, k, extra = self._steps[step]
    if kind == "level":
      counts, earlier = extra
      used = (prefixes[:, list(earlier), None] == np.arange(len(LEVELS))).sum(
          axis=1)
      return counts[None, :] - used > 0
    if kind == "adjust":
      level = (prefixes[:, extra] + LEVELS[0] if extra is not None
               else np.full(batch, self._fixed_level(k)))
      new = level[:, None] + np.array(ADJUSTMENTS)[None, :]
      return (new >= LEVELS[0]) & (new <= LEVELS[-1])
    options = np.arange(self.num_options(step))[None, :]
    if kind == "parent1":
      return np.repeat((options >= self._parent_low(k)) & (options < k),
                       batch, axis=0)
    if kind == "parent2":
      return options > prefixes[:, extra][:, None]
    return np.ones((batch, len(BLOCK_TYPES)), dtype=bool)

  def decode(self, decisions):
    decisions = [int(d) for d in decisions]
    if len(decisions) != len(self._steps):
      raise ValueError(f"{self.name}: {len(decisions)} decisions; the space "
                       f"has {len(self._steps)}.")
    # The masks' rules as membership tests, one pass (valid_options builds
    # lists and recounts the prefix: 70 calls cost ~100x more); the error
    # lists the options from valid_options itself.
    left = {id(counts): counts.copy() for kind, _, extra in self._steps
            if kind == "level" for counts in (extra[0],)}
    for step, d in enumerate(decisions):
      kind, k, extra = self._steps[step]
      if kind == "level":
        counts = left[id(extra[0])]
        ok = 0 <= d < len(LEVELS) and counts[d] > 0
        if ok:
          counts[d] -= 1
      elif kind == "adjust":
        level = (decisions[extra] + LEVELS[0] if extra is not None
                 else self._fixed_level(k))
        ok = (0 <= d < len(ADJUSTMENTS) and
              LEVELS[0] <= level + ADJUSTMENTS[d] <= LEVELS[-1])
      elif kind == "parent1":
        ok = self._parent_low(k) <= d < k
      elif kind == "parent2":
        ok = decisions[extra] < d <= k
      else:
        ok = 0 <= d < len(BLOCK_TYPES)
      if not ok:
        raise ValueError(
            f"{self.name}: decision {step} ({kind} of block {k}) is {d}; "
            f"valid options there are "
            f"{self.valid_options(decisions[:step])}.")
    specs = []
    for k, steps in enumerate(self._block_steps, start=1):
      level = (decisions[steps["level"]] + LEVELS[0] if "level" in steps
               else self._fixed_level(k))
      if "adjust" in steps:
        level += ADJUSTMENTS[decisions[steps["adjust"]]]
      block_fn = BLOCK_TYPES[decisions[steps["type"]]] if "type" in steps else (
          BLOCK_TYPES[0])
      specs.append((level, block_fn, (decisions[steps["parent1"]],
                                      decisions[steps["parent2"]]),
                    self._is_output(k)))
    return tuple(specs)

  def encode(self, architecture):
    specs = normalize_specs(architecture)
    name = self.name
    if len(specs) != self._num_blocks:
      raise ValueError(f"{name}: {len(specs)} blocks; the space has "
                       f"{self._num_blocks} ({self._num_inter} intermediate, "
                       f"{len(OUTPUT_LEVELS)} output).")
    _validate(specs)
    for k, (level, block_fn, offsets, is_output) in enumerate(specs, start=1):
      if level not in LEVELS:
        raise ValueError(f"{name}: block {k} has level {level}; the space's "
                         f"blocks have levels {LEVELS[0]}..{LEVELS[-1]}.")
      if bool(is_output) != self._is_output(k):
        raise ValueError(
            f"{name}: block {k} has is_output={is_output}; the space's "
            f"output blocks are the last {len(OUTPUT_LEVELS)} (blocks "
            f"{self._num_inter + 1}..{self._num_blocks}).")
      if block_fn not in BLOCK_TYPES or (not self._types and
                                         block_fn != BLOCK_TYPES[0]):
        allowed = BLOCK_TYPES if self._types else BLOCK_TYPES[:1]
        raise ValueError(f"{name}: block {k} is a {block_fn!r} block; the "
                         f"space has only {list(allowed)} blocks.")
      if len(offsets) != 2 or offsets[0] >= offsets[1]:
        raise ValueError(
            f"{name}: block {k} has parents {offsets}; the space gives every "
            "block two distinct parents in increasing order.")
      low = self._parent_low(k)
      if offsets[0] < low:
        raise ValueError(
            f"{name}: block {k} takes parent offset {offsets[0]}; an "
            f"intermediate block chooses among the last {PARENT_WINDOW} "
            f"blocks built (offsets {low}..{k}).")
    levels = [spec[0] for spec in specs]
    inter, outputs = levels[:self._num_inter], levels[self._num_inter:]
    if self._fixed is not None:
      if tuple(outputs) != tuple(self._fixed[1]) or (
          not self._adjust and tuple(inter) != tuple(self._fixed[0])):
        raise ValueError(f"{name}: levels {levels} differ from the fixed "
                         f"order {list(self._fixed[0]) + list(self._fixed[1])}.")
    if sorted(outputs) != list(OUTPUT_LEVELS):
      raise ValueError(f"{name}: output levels {outputs} are not one block "
                       f"per level {list(OUTPUT_LEVELS)}.")
    base_levels = self._base_levels(inter)
    decisions = []
    for k, steps in enumerate(self._block_steps, start=1):
      spec = specs[k - 1]
      for kind in ("level", "adjust", "parent1", "parent2", "type"):
        if kind not in steps:
          continue
        if kind == "level":
          value = (base_levels[k - 1] if k <= self._num_inter
                   else spec[0]) - LEVELS[0]
        elif kind == "adjust":
          base_level = (base_levels[k - 1] if self._fixed is None
                        else self._fixed_level(k))
          value = ADJUSTMENTS.index(spec[0] - base_level)
        elif kind == "parent1":
          value = spec[2][0]
        elif kind == "parent2":
          value = spec[2][1]
        else:
          value = BLOCK_TYPES.index(spec[1])
        decisions.append(value)
    decoded = self.decode(decisions)
    if decoded != tuple((int(l), f, tuple(o), bool(x))
                        for l, f, o, x in specs):
      raise ValueError(f"{name}: the architecture does not round-trip "
                       f"(decoded {decoded}).")
    return decisions

  def _base_levels(self, inter):
    """The base (pre-adjustment) level of each intermediate block."""
    if self._fixed is not None:
      base_levels = list(self._fixed[0])
      if self._adjust:
        for k, (b, t) in enumerate(zip(base_levels, inter), start=1):
          if t - b not in ADJUSTMENTS:
            raise ValueError(f"{self.name}: block {k} has level {t}; its "
                             f"fixed level {b} adjusts only by {ADJUSTMENTS}.")
      return base_levels
    remaining = list(self._inter)
    if not self._adjust:
      if sorted(inter) != remaining:
        raise ValueError(
            f"{self.name}: intermediate levels {sorted(inter)} are not a "
            f"permutation of the space's {remaining}.")
      return list(inter)
    if not _matchable(remaining, inter):
      raise ValueError(
          f"{self.name}: intermediate levels {list(inter)} cannot be reached "
          f"from the levels {remaining} with adjustments {ADJUSTMENTS}.")
    base_levels = []
    for i, target in enumerate(inter):
      for a in _ADJUST_ORDER:
        b = target - a
        if b in remaining:
          rest = list(remaining)
          rest.remove(b)
          if _matchable(rest, inter[i + 1:]):
            break
      base_levels.append(b)
      remaining.remove(b)
    return base_levels

  def gin_bindings(self, architecture):
    return [format_gin(normalize_specs(architecture))]

  def log10_size(self):
    count = 1
    if self._fixed is None:
      count *= math.factorial(self._num_inter)
      for level in set(self._inter):
        count //= math.factorial(self._inter.count(level))
      count *= math.factorial(len(OUTPUT_LEVELS))
    if self._adjust:
      bases = self._inter if self._fixed is None else self._fixed[0]
      for b in bases:
        count *= sum(LEVELS[0] <= b + a <= LEVELS[-1] for a in ADJUSTMENTS)
    for k in range(1, self._num_blocks + 1):
      count *= math.comb(k + 1 - self._parent_low(k), 2)
    if self._types:
      count *= len(BLOCK_TYPES) ** self._num_blocks
    return math.log10(count)

  def known_architectures(self):
    return dict(self._known)

  def mutation_groups(self):
    groups = []
    if self._fixed is None:
      groups.append(("permutation", list(self._level_steps["intermediate"])))
      groups.append(("permutation", list(self._level_steps["output"])))
    for steps in self._block_steps:
      if "adjust" in steps:
        groups.append(("resample", [steps["adjust"]]))
      groups.append(("resample", [steps["parent1"], steps["parent2"]]))
      if "type" in steps:
        groups.append(("resample", [steps["type"]]))
    return groups

  def validate(self, architecture):
    """Raises ValueError unless the builder accepts the block specs
    (modeling.backbones.spinenet.parse_block_specs, levels 3..7)."""
    _validate(normalize_specs(architecture))


class MiniSpace(base.SearchSpace):
  """A small space for CPU searches: SpineNet-49 rewired.

  SpineNet-49's levels, block types and outputs stay; each of its 15 blocks
  chooses its parents among three options:
    0 "sequential": its predecessor only (offset k for block k), one parent;
    1 "two predecessors": offsets (k - 1, k);
    2 "spinenet49": SpineNet-49's own pair.
  Option 1 is masked where it equals option 2 (blocks 1, 3, 7, 9). The space
  holds SpineNet-49 (all 2) and the graph-damaged sequential network of
  configs/backbones/ablations/spinenet49_sequential.gin (all 0: SpineNet
  paper §5.5, damage (3), one parent per block), which the connection
  decisions of the full spaces cannot express (they give two parents):
  a search here asks, block by block, whether the learned cross-scale
  connections pay for themselves. 3^11 * 2^4 = 2,834,352 architectures.
  """

  name = "mini"
  OPTIONS = ("sequential", "two_predecessors", "spinenet49")

  def __init__(self):
    self._base = normalize_specs(SPINENET_BLOCK_SPECS)
    self._choices = []
    for k, spec in enumerate(self._base, start=1):
      self._choices.append(((k,), (k - 1, k), tuple(spec[2])))
    self._masks = [[i for i, c in enumerate(choices)
                    if i != 1 or c != choices[2]]
                   for choices in self._choices]
    self._known = {"spinenet49": self._base,
                   "sequential": load_ablation_specs("spinenet49_sequential")}
    for specs in self._known.values():
      self.encode(specs)

  def num_decisions(self):
    return len(self._base)

  def num_options(self, step):
    return len(self.OPTIONS)

  def valid_options(self, prefix):
    step = len(prefix)
    if not 0 <= step < len(self._base):
      raise ValueError(f"mini: no decision {step}; the space has "
                       f"{len(self._base)}.")
    return list(self._masks[step])

  def valid_mask(self, prefixes):
    prefixes = np.asarray(prefixes)
    mask = np.zeros((prefixes.shape[0], len(self.OPTIONS)), dtype=bool)
    mask[:, self._masks[prefixes.shape[1]]] = True
    return mask

  def decode(self, decisions):
    decisions = [int(d) for d in decisions]
    if len(decisions) != len(self._base):
      raise ValueError(f"mini: {len(decisions)} decisions; the space has "
                       f"{len(self._base)}.")
    specs = []
    for k, (d, spec) in enumerate(zip(decisions, self._base), start=1):
      if d not in self._masks[k - 1]:
        raise ValueError(f"mini: decision {k - 1} (parents of block {k}) is "
                         f"{d}; valid options are {self._masks[k - 1]}.")
      specs.append((spec[0], spec[1], self._choices[k - 1][d], spec[3]))
    return tuple(specs)

  def encode(self, architecture):
    specs = normalize_specs(architecture)
    if len(specs) != len(self._base):
      raise ValueError(f"mini: {len(specs)} blocks; the space has "
                       f"{len(self._base)} (SpineNet-49's).")
    _validate(specs)
    decisions = []
    for k, (spec, ref) in enumerate(zip(specs, self._base), start=1):
      if (spec[0], spec[1], bool(spec[3])) != (ref[0], ref[1], ref[3]):
        raise ValueError(
            f"mini: block {k} is (level {spec[0]}, {spec[1]!r}, is_output="
            f"{spec[3]}); the space keeps SpineNet-49's (level {ref[0]}, "
            f"{ref[1]!r}, is_output={ref[3]}).")
      choices = self._choices[k - 1]
      matches = [i for i in self._masks[k - 1] if choices[i] == spec[2]]
      if not matches:
        raise ValueError(
            f"mini: block {k} has parents {spec[2]}; the space offers "
            f"{[choices[i] for i in self._masks[k - 1]]} "
            f"({', '.join(self.OPTIONS[i] for i in self._masks[k - 1])}).")
      decisions.append(matches[0])
    return decisions

  def gin_bindings(self, architecture):
    return [format_gin(normalize_specs(architecture))]

  def log10_size(self):
    return sum(math.log10(len(m)) for m in self._masks)

  def known_architectures(self):
    return dict(self._known)

  def validate(self, architecture):
    """Raises ValueError unless the builder accepts the block specs."""
    _validate(normalize_specs(architecture))


def _spinenet49_variants():
  """SpineNet-49 with bottleneck blocks only, and the same with each
  intermediate level replaced by the R0-SP53 level it adjusts (canonical
  encoding), for the presets that cannot hold SpineNet-49 itself."""
  bottleneck = tuple((l, BLOCK_TYPES[0], o, x)
                     for l, _, o, x in normalize_specs(SPINENET_BLOCK_SPECS))
  plus = ScalePermutedSpace("R0-SP53+", search_adjustment=True)
  num_inter = len(R0_SP53_INTERMEDIATE)
  base_levels = plus._base_levels([s[0] for s in bottleneck[:num_inter]])  # pylint: disable=protected-access
  unadjusted = tuple(
      (base_levels[i], f, o, x) if i < num_inter else (l, f, o, x)
      for i, (l, f, o, x) in enumerate(bottleneck))
  return bottleneck, unadjusted


def _fixed_order(specs):
  levels = [s[0] for s in specs]
  n = len(specs) - len(OUTPUT_LEVELS)
  if any(s[3] for s in specs[:n]) or not all(s[3] for s in specs[n:]):
    raise ValueError("A fixed-order ablation must end with its 5 outputs.")
  return tuple(levels[:n]), tuple(levels[n:])


def spinenet_space(name):
  """The SpineNet space preset `name` (see the module docstring)."""
  spinenet49 = normalize_specs(SPINENET_BLOCK_SPECS)
  if name == "spinenet49":
    return ScalePermutedSpace(name, search_adjustment=True, search_type=True,
                              known={"spinenet49": spinenet49})
  if name in ("R0-SP53", "R0-SP53+"):
    bottleneck, unadjusted = _spinenet49_variants()
    if name == "R0-SP53":
      return ScalePermutedSpace(name,
                                known={"spinenet49_unadjusted": unadjusted})
    return ScalePermutedSpace(name, search_adjustment=True,
                              known={"spinenet49_bottleneck": bottleneck})
  if name in ("hourglass", "fish"):
    specs = load_ablation_specs(name)
    return ScalePermutedSpace(name, fixed_order=_fixed_order(specs),
                              known={name: specs})
  if name == "mini":
    return MiniSpace()
  raise ValueError(f"Unknown SpineNet space {name!r}; expected one of "
                   f"{list(SPACE_PRESETS)}.")


SPACE_PRESETS = ("R0-SP53", "R0-SP53+", "spinenet49", "hourglass", "fish",
                 "mini")
