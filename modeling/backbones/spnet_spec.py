"""SP-NAS serial and parallel backbone encodings as data (Jiang et al. 2020).

Pure Python: no TensorFlow, no Keras, not even numpy (the random
morphisms take a numpy Generator from the caller), so a search can parse,
mutate and price thousands of architectures without building one. (Importing
it as modeling.backbones.spnet_spec still runs the package's __init__, which
imports the Keras backbones.) modeling/backbones/spnet.py builds the
Keras network from these specs.

Serial encoding (SP-NAS Sec. 3.1, "Search Space"): "BNB(111,d111,d11111,d11)"
is a block type of Table 2 (BB basic, BNB bottleneck, XB ResNeXt) and one
group of symbols per stage. "1" is a block that keeps the base channel count
n, "d" a block that doubles it (n starts at the stem's output width, 64 by
default). The stem (two 3x3 stride-2 convs) brings the input to 1/4, so
stage s (1-based) is at level s + 1, stride 2^(s + 1); the first block of
every stage but the first has stride 2. Output channels of a block: n for
BB, 4n for BNB and XB (Table 2).

Every block carries a stable integer id that survives the morphisms (expand
inserts a block with a new id, swap and add_stage keep all ids): the Keras
layer of block id b is named "block<b>" (modeling/backbones/spnet.py), and
weight inheritance matches layers by name, so a child network finds its
parent's weights wherever its blocks moved.

Morphisms (Sec. 3.1, "Swap-Expand-Reignite"): expand inserts a plain block
that starts as an identity (IdMorph); swap moves a stage boundary and only
changes which blocks are strided; add_stage (not described in the paper, see
its docstring) appends a stage. Each returns a new spec.

Parallel encoding (Sec. 3.2): one count k_l in 0..K (K = 3) of subnet copies
per stage, e.g. (0, 2, 1, 1, 0).

Sizes: serial_cost gives per-stage parameters and multiply-adds, so a search
can weight subnets by their cost (Sec. 3.2, "resource-constraint sampling").
"""

import dataclasses
import math
import numbers
import re

BLOCK_TYPES = ("BB", "BNB", "XB")

# Output channels of a block as a multiple of the current base n (Table 2).
BLOCK_EXPANSION = {"BB": 1, "BNB": 4, "XB": 4}

# ResNeXt blocks: the 3x3 conv has 2n channels in 32 groups (Table 2,
# "group=32"), so 2n must divide by 32.
XB_GROUPS = 32

REGULAR, DOUBLE = "1", "d"

# Sec. 3.1: "The number of blocks in the backbone varies from 8 to 60."
MIN_BLOCKS, MAX_BLOCKS = 8, 60
# Sec. 3.1: "The number of stages can be chosen from 5 to 7". That count
# includes the stem as a stage: the search starts from ResNet-50, stem + 4
# block stages ("BNB(111,d111,d1111,d11)", Sec. 3.1), and the searched
# backbones of Table 7 have 5 and 6 block stages. So 4..6 block stages.
MIN_STAGES, MAX_STAGES = 4, 6

# Swap moves a stage boundary by at most 3 blocks either way. The paper's
# Figure 2 moves one boundary by two blocks (ResNet-18's second stage grows
# from 2 to 4 blocks) and gives no bound; 3 keeps a single move local.
SWAP_SHIFTS = (-3, -2, -1, 1, 2, 3)

# Sec. 3.2 and 4.1: at most K = 3 subnets per stage.
MAX_SUBNETS = 3

# Weight inheritance (Sec. 3.2: "we also copy the weight parameters from
# s_l"): a variable key of a child network not found in its parent is looked
# up again after these (pattern, replacement) rewrites. Parallel copy k of
# block b is the layer "sub<k>_block<b>" (modeling/backbones/spnet.py), so
# dropping the "sub<k>_" prefix names the serial block it copies. The up
# convs "sub<k>_stage<l>_up" map to "stage<l>_up", which no network has:
# they keep their zero initialisation.
INHERITANCE_ALIASES = ((r"(^|/)sub[0-9]+_", r"\1"),)


@dataclasses.dataclass(frozen=True)
class BlockInfo:
  """One block of a serial spec at a given base width.

  Attributes:
    index: 0-based position in network order.
    block_id: the stable id (the Keras layer is "block<block_id>").
    stage: 1-based stage.
    level: the stage's level (stage + 1; output stride 2^level).
    symbol: "1" or "d".
    strides: 2 for the first block of stages 2..L, else 1.
    filters: the base n of this block (after its own doubling for "d").
    in_channels, out_channels: channels entering and leaving the block.
  """
  index: int
  block_id: int
  stage: int
  level: int
  symbol: str
  strides: int
  filters: int
  in_channels: int
  out_channels: int

  @property
  def use_projection(self):
    """True when the shortcut needs a 1x1 conv (channels change).

    A strided block whose channels do not change has a weightless
    subsampling shortcut instead (modeling/layers/blocks.py), so a block's
    variables never depend on its stride and swap keeps every weight.
    """
    return self.in_channels != self.out_channels


def _check_fields(block_type, stages, block_ids, code):
  """Raises ValueError for an invalid spec; `code` names it in messages."""
  if block_type not in BLOCK_TYPES:
    raise ValueError(f"serial code {code!r}: unknown block type "
                     f"{block_type!r}; expected one of {list(BLOCK_TYPES)} "
                     f"(SP-NAS Table 2).")
  for s, stage in enumerate(stages, start=1):
    if not isinstance(stage, str):
      raise ValueError(f"serial code {code!r}: stage {s} is {stage!r}; "
                       f"expected a str of '1' and 'd' symbols.")
    if not stage:
      raise ValueError(f"serial code {code!r}: stage {s} is empty; every "
                       f"stage needs at least one '1' or 'd' block.")
    for j, symbol in enumerate(stage, start=1):
      if symbol not in (REGULAR, DOUBLE):
        raise ValueError(f"serial code {code!r}: stage {s}, symbol {j} is "
                         f"{symbol!r}; expected '1' or 'd'.")
  if not MIN_STAGES <= len(stages) <= MAX_STAGES:
    raise ValueError(
        f"serial code {code!r} has {len(stages)} stages; expected "
        f"{MIN_STAGES}..{MAX_STAGES} block stages (SP-NAS Sec. 3.1: 5 to 7 "
        f"stages counting the stem).")
  num_blocks = sum(len(stage) for stage in stages)
  if not MIN_BLOCKS <= num_blocks <= MAX_BLOCKS:
    raise ValueError(
        f"serial code {code!r} has {num_blocks} blocks; expected "
        f"{MIN_BLOCKS}..{MAX_BLOCKS} (SP-NAS Sec. 3.1).")
  if block_ids is not None:
    if len(block_ids) != num_blocks:
      raise ValueError(
          f"serial code {code!r}: block_ids has {len(block_ids)} entries "
          f"but the code has {num_blocks} blocks; expected one id per block.")
    for i, block_id in enumerate(block_ids):
      if (isinstance(block_id, bool) or
          not isinstance(block_id, numbers.Integral) or block_id < 0):
        raise ValueError(
            f"serial code {code!r}: block_ids[{i}] = {block_id!r}; expected "
            f"a non-negative int.")
    seen = {}
    for i, block_id in enumerate(block_ids):
      if block_id in seen:
        raise ValueError(
            f"serial code {code!r}: block id {block_id} is repeated (blocks "
            f"{seen[block_id]} and {i}); ids must be unique.")
      seen[block_id] = i


def _format_code(block_type, stages):
  return f"{block_type}({','.join(stages)})"


@dataclasses.dataclass(frozen=True)
class SerialSpec:
  """A SerialNet: block type, symbols per stage and stable block ids.

  Attributes:
    block_type: "BB", "BNB" or "XB" (SP-NAS Table 2).
    stages: one str of '1'/'d' symbols per stage, e.g. ("111", "d111",
      "d11111", "d11") for ResNet-50.
    block_ids: one int per block in network order (default 0..n-1).
  Raises:
    ValueError: unknown block type, empty stage or bad symbol, block or stage
      count outside 8..60 / 4..6, block_ids of the wrong length, negative or
      repeated.
  """
  block_type: str
  stages: tuple
  block_ids: tuple = None

  def __post_init__(self):
    stages = tuple(self.stages)
    object.__setattr__(self, "stages", stages)
    code = (_format_code(self.block_type, stages)
            if all(isinstance(s, str) for s in stages) else repr(stages))
    block_ids = self.block_ids
    if block_ids is not None:
      block_ids = tuple(block_ids)
    _check_fields(self.block_type, stages, block_ids, code)
    if block_ids is not None:
      block_ids = tuple(int(i) for i in block_ids)  # numpy ints -> int.
    else:
      block_ids = tuple(range(sum(len(s) for s in stages)))
    object.__setattr__(self, "block_ids", block_ids)

  @property
  def code(self):
    """The canonical code, e.g. "BNB(111,d111,d11111,d11)" (no spaces)."""
    return _format_code(self.block_type, self.stages)

  def __str__(self):
    return self.code

  @property
  def num_blocks(self):
    return sum(len(stage) for stage in self.stages)

  @property
  def num_stages(self):
    return len(self.stages)

  @property
  def levels(self):
    """Levels of the stages' outputs: stage s is at level s + 1."""
    return tuple(range(2, self.num_stages + 2))

  @property
  def symbols(self):
    """All symbols in network order, e.g. "111d111d11111d11"."""
    return "".join(self.stages)

  @property
  def block_stages(self):
    """The 1-based stage of every block, in network order."""
    return tuple(s for s, stage in enumerate(self.stages, start=1)
                 for _ in stage)

  def stage_slice(self, stage):
    """slice of the block indices of `stage` (1-based)."""
    if not 1 <= stage <= self.num_stages:
      raise ValueError(f"{self.code}: stage {stage} does not exist; expected "
                       f"1..{self.num_stages}.")
    start = sum(len(s) for s in self.stages[:stage - 1])
    return slice(start, start + len(self.stages[stage - 1]))

  def blocks(self, base_channels=64):
    """BlockInfo of every block in network order.

    Args:
      base_channels: the stem's output width, the first base n.
    Returns:
      tuple of BlockInfo.
    Raises:
      ValueError: base_channels is not a positive int.
    """
    _check_base_channels(base_channels)
    expansion = BLOCK_EXPANSION[self.block_type]
    infos = []
    n, channels, index = base_channels, base_channels, 0
    for s, stage in enumerate(self.stages, start=1):
      for j, symbol in enumerate(stage):
        if symbol == DOUBLE:
          n *= 2
        infos.append(BlockInfo(
            index=index, block_id=self.block_ids[index], stage=s, level=s + 1,
            symbol=symbol, strides=2 if (j == 0 and s > 1) else 1, filters=n,
            in_channels=channels, out_channels=n * expansion))
        channels = n * expansion
        index += 1
    return tuple(infos)

  def block_channels(self, base_channels=64):
    """Output channels of every block in network order (tuple of ints)."""
    return tuple(b.out_channels for b in self.blocks(base_channels))

  def level_channels(self, base_channels=64):
    """dict str(level) -> output channels of that stage's last block."""
    channels = self.block_channels(base_channels)
    return {str(s + 1): channels[self.stage_slice(s).stop - 1]
            for s in range(1, self.num_stages + 1)}


def _check_base_channels(base_channels):
  if (isinstance(base_channels, bool) or not isinstance(base_channels, int) or
      base_channels < 1):
    raise ValueError(f"base_channels={base_channels!r}; expected a positive "
                     f"int (the stem's output width, SP-NAS Sec. 3.1).")


_CODE = re.compile(r"^\s*([A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.DOTALL)


def parse_serial(code, block_ids=None):
  """Parses "BNB(111,d111,d11111,d11)" into a SerialSpec.

  Spaces around the commas are accepted (Table 7 writes
  "(11d, 1111, d11111111, d111, 1, 1111)").

  Args:
    code: the serial code.
    block_ids: one int per block in network order, or None for 0..n-1.
  Returns:
    SerialSpec with parse_serial(spec.code, spec.block_ids) == spec.
  Raises:
    ValueError: quoting `code` and saying what is wrong and where: no
      "TYPE(...)" shape, unknown block type, a symbol other than '1'/'d' at a
      given position (0-based offset into `code`, with its stage and
      1-based place in the stage), an empty stage, block or stage count out
      of range, block_ids of the wrong length or repeated.
  """
  if not isinstance(code, str):
    raise ValueError(f"serial code {code!r}: expected a str such as "
                     f"'BNB(111,d111,d11111,d11)'.")
  match = _CODE.match(code)
  if not match:
    raise ValueError(f"serial code {code!r}: expected the form "
                     f"'TYPE(stage,stage,...)', e.g. 'BNB(111,d111,d11111,"
                     f"d11)' (SP-NAS Sec. 3.1).")
  block_type = match.group(1)
  if block_type not in BLOCK_TYPES:
    raise ValueError(f"serial code {code!r}: unknown block type "
                     f"{block_type!r}; expected one of {list(BLOCK_TYPES)} "
                     f"(SP-NAS Table 2).")
  body_start = match.start(2)
  stages = []
  offset = body_start
  for s, raw in enumerate(match.group(2).split(","), start=1):
    stage = raw.strip()
    if not stage:
      raise ValueError(f"serial code {code!r}: stage {s} (at position "
                       f"{offset}) is empty; every stage needs at least one "
                       f"'1' or 'd' block.")
    lead = len(raw) - len(raw.lstrip())
    for j, symbol in enumerate(stage):
      if symbol not in (REGULAR, DOUBLE):
        raise ValueError(
            f"serial code {code!r}: symbol {symbol!r} at position "
            f"{offset + lead + j} (stage {s}, symbol {j + 1}) is not '1' or "
            f"'d'; stages are separated by ','.")
    stages.append(stage)
    offset += len(raw) + 1
  if block_ids is not None:
    block_ids = tuple(block_ids)
  _check_fields(block_type, tuple(stages), block_ids, code)
  return SerialSpec(block_type, tuple(stages), block_ids)


def as_serial_spec(serial, block_ids=None):
  """A SerialSpec from a code or a spec (with block_ids None).

  Raises:
    ValueError: as parse_serial, or block_ids given with a SerialSpec.
  """
  if isinstance(serial, SerialSpec):
    if block_ids is not None and tuple(block_ids) != serial.block_ids:
      raise ValueError(
          f"serial={serial.code!r} is a SerialSpec with block_ids "
          f"{serial.block_ids}; block_ids={tuple(block_ids)} disagrees. Pass "
          f"block_ids with a code string only.")
    return serial
  return parse_serial(serial, block_ids)


def _resnet_code(block_type, counts):
  return _format_code(block_type, tuple(
      ("d" if s else "1") + "1" * (count - 1) for s, count in enumerate(counts)))


# Name -> serial code. ResNets (He et al. 2016; ResNeXt, Xie et al. 2017) are
# the start points of the search (Sec. 4.1). Sec. 3.1 encodes ResNet-50 as
# "BNB(111,d111,d1111,d11)", a typo: ResNet-50 has 3-4-6-3 blocks, as Table 7's
# start backbone "(111, d111, d11111, d11)" writes. Table 7's ResNeXt-101 start
# "(111, d111, d11111111111111111111111, d11)" has 24 blocks in its third
# stage, one more than ResNeXt-101's 23; the 3-4-23-3 network is listed here.
# The serialnet_* entries are Table 7's searched serial backbones that our
# copy of the paper prints in full: VOC (BB), ECP (BNB), COCO (XB). The BDD
# and COCO (BNB) rows are cut off in our copy and are left out.
KNOWN_SERIAL = {
    "resnet18": "BB(11,d1,d1,d1)",
    "resnet34": "BB(111,d1111,d111111,d11)",
    "resnet50": "BNB(111,d111,d11111,d11)",
    "resnet101": _resnet_code("BNB", (3, 4, 23, 3)),
    "resnext101_32x4d": _resnet_code("XB", (3, 4, 23, 3)),
    "serialnet_voc": "BB(11d,1111,d11111111,d111,1,1111)",
    "serialnet_ecp": "BNB(111d1111,d1111,11d,1111,1111)",
    "serialnet_coco_xb": "XB(1111,d1111,d111111111111111111111,d11,1)",
}

# Name -> (KNOWN_SERIAL name, subnets per stage): Table 7's SPNets.
KNOWN_PARALLEL = {
    "spnet_voc": ("serialnet_voc", (0, 0, 0, 0, 0, 1)),
    "spnet_ecp": ("serialnet_ecp", (0, 2, 1, 1, 0)),
    "spnet_coco_xb": ("serialnet_coco_xb", (1, 0, 2, 1, 2)),
}


# ---------------------------------------------------------------- morphisms


def _check_index(value, name, low, high, spec):
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
      low <= value <= high):
    raise ValueError(f"{spec.code}: {name}={value!r}; expected an int in "
                     f"{low}..{high}.")


def _new_id(spec, new_id):
  if new_id is None:
    return max(spec.block_ids) + 1
  if (isinstance(new_id, bool) or not isinstance(new_id, numbers.Integral) or
      new_id < 0):
    raise ValueError(f"{spec.code}: new_id={new_id!r}; expected a "
                     f"non-negative int.")
  if new_id in spec.block_ids:
    raise ValueError(f"{spec.code}: new_id={new_id} is already the id of "
                     f"block {spec.block_ids.index(new_id)}; ids must be "
                     f"unique.")
  return int(new_id)


def expand(spec, after_block, new_id=None):
  """Inserts a plain '1' block right after block `after_block` (Sec. 3.1).

  The new block is in the stage of block `after_block`, never its first
  block, so it has stride 1 and as many input as output channels: with the
  last batch norm of its residual branch starting at scale 0 it computes
  the identity (IdMorph, Wei et al. 2016, as SP-NAS Sec. 3.1 uses it), for
  activations that are the identity on the previous block's output (ReLU).

  Args:
    spec: SerialSpec.
    after_block: 0-based block index in network order.
    new_id: id of the new block (default max(id) + 1).
  Returns:
    a new SerialSpec with one more block.
  Raises:
    ValueError: after_block out of 0..num_blocks-1, new_id already used, or
      the result would exceed 60 blocks.
  """
  _check_index(after_block, "after_block", 0, spec.num_blocks - 1, spec)
  new_id = _new_id(spec, new_id)
  if spec.num_blocks + 1 > MAX_BLOCKS:
    raise ValueError(f"{spec.code}: expand would make {spec.num_blocks + 1} "
                     f"blocks; at most {MAX_BLOCKS} (SP-NAS Sec. 3.1).")
  stage = spec.block_stages[after_block]
  within = after_block - spec.stage_slice(stage).start
  stages = list(spec.stages)
  old = stages[stage - 1]
  stages[stage - 1] = old[:within + 1] + REGULAR + old[within + 1:]
  ids = list(spec.block_ids)
  ids.insert(after_block + 1, new_id)
  return SerialSpec(spec.block_type, tuple(stages), tuple(ids))


def swap(spec, boundary, shift):
  """Moves the boundary between stages `boundary` and `boundary + 1`.

  SP-NAS Sec. 3.1 and Figure 2: "interchange the stride of the neighbouring
  block while keeping the weight unchanged". Blocks keep their order, ids and
  symbols (so their channels); only which block opens a stage, hence is
  strided, changes.

  Args:
    spec: SerialSpec.
    boundary: 1-based stage whose end moves, 1..num_stages-1.
    shift: one of -3..3 except 0; positive: stage `boundary` takes the first
      `shift` blocks of stage `boundary + 1`; negative: stage `boundary + 1`
      takes the last -shift blocks of stage `boundary`.
  Returns:
    a new SerialSpec.
  Raises:
    ValueError: boundary or shift out of range, or a stage would be left
      with no block.
  """
  _check_index(boundary, "boundary", 1, spec.num_stages - 1, spec)
  if isinstance(shift, bool) or shift not in SWAP_SHIFTS:
    raise ValueError(f"{spec.code}: shift={shift!r}; expected one of "
                     f"{list(SWAP_SHIFTS)}.")
  left, right = spec.stages[boundary - 1], spec.stages[boundary]
  if shift > 0 and shift >= len(right):
    raise ValueError(
        f"{spec.code}: swap stages {boundary}|{boundary + 1} by {shift} would "
        f"empty stage {boundary + 1} ({len(right)} blocks); every stage keeps "
        f"at least one block.")
  if shift < 0 and -shift >= len(left):
    raise ValueError(
        f"{spec.code}: swap stages {boundary}|{boundary + 1} by {shift} would "
        f"empty stage {boundary} ({len(left)} blocks); every stage keeps at "
        f"least one block.")
  symbols = left + right
  cut = len(left) + shift
  stages = list(spec.stages)
  stages[boundary - 1], stages[boundary] = symbols[:cut], symbols[cut:]
  return SerialSpec(spec.block_type, tuple(stages), spec.block_ids)


def add_stage(spec, new_id=None):
  """Appends a stage of one '1' block (stride 2, channels unchanged).

  SP-NAS never describes how a stage is added, but its searches start from
  4-stage ResNets and end with 5 and 6 stages (Table 7). Appending keeps
  every existing level's features: the new block's shortcut is the
  weightless subsampling of the last stage's output
  (modeling/layers/blocks.py), and with its residual branch starting at zero
  the new level starts as that subsampled map.

  Args:
    spec: SerialSpec.
    new_id: id of the new block (default max(id) + 1).
  Returns:
    a new SerialSpec with one more stage.
  Raises:
    ValueError: the result would exceed 6 stages or 60 blocks, or new_id is
      already used.
  """
  new_id = _new_id(spec, new_id)
  if spec.num_stages + 1 > MAX_STAGES:
    raise ValueError(f"{spec.code}: add_stage would make "
                     f"{spec.num_stages + 1} stages; at most {MAX_STAGES}.")
  if spec.num_blocks + 1 > MAX_BLOCKS:
    raise ValueError(f"{spec.code}: add_stage would make "
                     f"{spec.num_blocks + 1} blocks; at most {MAX_BLOCKS}.")
  return SerialSpec(spec.block_type, spec.stages + (REGULAR,),
                    spec.block_ids + (new_id,))


def valid_moves(spec, max_stages=MAX_STAGES, max_blocks=MAX_BLOCKS):
  """Every single modification that yields a valid spec within the limits.

  Returns:
    list of tuples ("expand", after_block), ("swap", boundary, shift),
    ("add_stage",), in that order.
  Raises:
    ValueError: max_stages outside 4..6 or max_blocks outside 8..60.
  """
  if not MIN_STAGES <= max_stages <= MAX_STAGES:
    raise ValueError(f"max_stages={max_stages}; expected {MIN_STAGES}.."
                     f"{MAX_STAGES}.")
  if not MIN_BLOCKS <= max_blocks <= MAX_BLOCKS:
    raise ValueError(f"max_blocks={max_blocks}; expected {MIN_BLOCKS}.."
                     f"{MAX_BLOCKS}.")
  moves = []
  if spec.num_blocks < max_blocks:
    moves += [("expand", i) for i in range(spec.num_blocks)]
  for boundary in range(1, spec.num_stages):
    left = len(spec.stages[boundary - 1])
    right = len(spec.stages[boundary])
    moves += [("swap", boundary, shift) for shift in SWAP_SHIFTS
              if (shift > 0 and shift < right) or (shift < 0 and -shift < left)]
  if spec.num_stages < max_stages and spec.num_blocks < max_blocks:
    moves.append(("add_stage",))
  return moves


def apply_move(spec, move):
  """(new spec, description) for a move of valid_moves."""
  if move[0] == "expand":
    after = move[1]
    return (expand(spec, after),
            f"expand after block {after} (stage {spec.block_stages[after]})")
  if move[0] == "swap":
    _, boundary, shift = move
    return (swap(spec, boundary, shift),
            f"swap stages {boundary}|{boundary + 1} by {shift}")
  if move[0] == "add_stage":
    return add_stage(spec), f"add stage {spec.num_stages + 1}"
  raise ValueError(f"unknown move {move!r}; expected 'expand', 'swap' or "
                   f"'add_stage'.")


def random_modification(spec, rng, max_stages=MAX_STAGES,
                        max_blocks=MAX_BLOCKS):
  """One random valid modification, drawn uniformly over valid_moves.

  Uniform over single moves rather than over kinds: SP-NAS (Sec. 3.1, 4.1)
  gives no proportions, and this weighs expand and swap by how many
  placements each has (add_stage, one placement, stays rare).

  Args:
    spec: SerialSpec.
    rng: numpy.random.Generator.
    max_stages, max_blocks: limits of the search (within 4..6, 8..60).
  Returns:
    (new SerialSpec, description such as "expand after block 5 (stage 2)",
    "swap stages 2|3 by -2" or "add stage 5").
  Raises:
    ValueError: no valid move (cannot happen within the limits: a spec of
      at least 8 blocks in at most 6 stages always has a swap).
  """
  moves = valid_moves(spec, max_stages, max_blocks)
  if not moves:
    raise ValueError(f"{spec.code}: no valid modification within "
                     f"{max_stages} stages and {max_blocks} blocks.")
  return apply_move(spec, moves[int(rng.integers(len(moves)))])


def propose(spec, rng, num_modifications=3, max_stages=MAX_STAGES,
            max_blocks=MAX_BLOCKS):
  """A new architecture: `num_modifications` random modifications in a row.

  SP-NAS Sec. 4.1: "we adopt 3 random modifications ("swap" and "expand") on
  the current backbone architecture".

  Returns:
    (SerialSpec, [description of each modification]).
  """
  if isinstance(num_modifications, bool) or not isinstance(
      num_modifications, int) or num_modifications < 1:
    raise ValueError(f"num_modifications={num_modifications!r}; expected a "
                     f"positive int.")
  descriptions = []
  for _ in range(num_modifications):
    spec, description = random_modification(spec, rng, max_stages,
                                            max_blocks)
    descriptions.append(description)
  return spec, descriptions


# ----------------------------------------------------------- parallel phase


def check_parallel(parallel, num_stages, name="parallel"):
  """Subnet counts per stage as a tuple of ints, or raises ValueError.

  Args:
    parallel: a sequence of ints, or a code such as "(0, 2, 1, 1, 0)".
    num_stages: the serial spec's stage count (the length required).
    name: the argument name for messages.
  Raises:
    ValueError: not a sequence of ints, wrong length, or a count outside
      0..3 (SP-NAS Sec. 3.2, K = 3).
  """
  counts = parallel
  if isinstance(parallel, str):
    text = parallel.strip()
    if not (text.startswith("(") and text.endswith(")")):
      raise ValueError(f"{name}={parallel!r}: expected a code such as "
                       f"'(0,2,1,1,0)' or a sequence of ints.")
    try:
      counts = [int(c) for c in text[1:-1].split(",")]
    except ValueError:
      raise ValueError(f"{name}={parallel!r}: every entry must be an int "
                       f"0..{MAX_SUBNETS}.") from None
  try:
    counts = tuple(counts)
  except TypeError:
    raise ValueError(f"{name}={parallel!r}: expected a sequence of "
                     f"{num_stages} ints.") from None
  if len(counts) != num_stages:
    raise ValueError(f"{name}={parallel!r} has {len(counts)} entries; "
                     f"expected one subnet count per stage ({num_stages}).")
  for l, count in enumerate(counts, start=1):
    if (isinstance(count, bool) or not isinstance(count, numbers.Integral) or
        not 0 <= count <= MAX_SUBNETS):
      raise ValueError(f"{name}={parallel!r}: stage {l} has {count!r} "
                       f"subnets; expected an int in 0..{MAX_SUBNETS} "
                       f"(SP-NAS Sec. 3.2, K = {MAX_SUBNETS}).")
  return tuple(int(c) for c in counts)


def parallel_code(counts):
  """"(0,2,1,1,0)" for the counts (0, 2, 1, 1, 0) (Sec. 3.2's notation)."""
  return "(" + ",".join(str(int(c)) for c in counts) + ")"


def feeding_copy(counts, stage, copy):
  """Which copy of stage `stage - 1` feeds copy `copy` of stage `stage`.

  Sec. 3.2's recurrence x_l^k = p_l^k(x_{l-1}^k + up(x_l^{k-1})) reads copy k
  of the previous stage, which may have fewer copies: then its last copy,
  x_{l-1}^{k_{l-1}} (the serial x_{l-1}^0 when it has none). Stage 1 reads
  the stem, returned as 0.

  Args:
    counts: subnet counts per stage (check_parallel).
    stage: 1-based stage l.
    copy: k, 0 for the serial stage s_l itself.
  Returns:
    int, the index of the copy of stage l - 1 (0 = serial).
  """
  if stage == 1:
    return 0
  return min(copy, counts[stage - 2])


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
  """An SPNet: a SerialSpec and its subnet counts per stage (Sec. 3.2).

  Attributes:
    serial: SerialSpec.
    subnets: tuple of ints in 0..3, one per stage.
  """
  serial: SerialSpec
  subnets: tuple

  def __post_init__(self):
    if not isinstance(self.serial, SerialSpec):
      raise ValueError(f"serial={self.serial!r}; expected a SerialSpec.")
    object.__setattr__(self, "subnets",
                       check_parallel(self.subnets, self.serial.num_stages,
                                      "subnets"))

  @property
  def code(self):
    """(serial code, parallel code), e.g. ("BB(...)", "(0,0,0,0,0,1)")."""
    return self.serial.code, parallel_code(self.subnets)

  def __str__(self):
    return f"{self.serial.code} {parallel_code(self.subnets)}"


def known_parallel(name):
  """The ParallelSpec of a KNOWN_PARALLEL entry."""
  if name not in KNOWN_PARALLEL:
    raise ValueError(f"unknown parallel backbone {name!r}; expected one of "
                     f"{sorted(KNOWN_PARALLEL)}.")
  serial_name, counts = KNOWN_PARALLEL[name]
  return ParallelSpec(parse_serial(KNOWN_SERIAL[serial_name]), counts)


# ---------------------------------------------------------------- analytic size


def _side(size, stride):
  return -(-size // stride)


class _Counter:
  """Accumulates parameters (all variables, batch-norm statistics included),
  trainable parameters and multiply-adds of convolutions."""

  def __init__(self):
    self.params = self.trainable = self.madds = 0

  def conv_bn(self, cin, cout, kernel, out_hw, groups=1):
    """Conv (no bias) + batch norm (gamma, beta, moving mean, variance)."""
    weights = kernel * kernel * (cin // groups) * cout
    self.params += weights + 4 * cout
    self.trainable += weights + 2 * cout
    self.madds += out_hw[0] * out_hw[1] * weights

  def conv_bias(self, cin, cout, out_hw):
    """1x1 conv with bias, no batch norm (the parallel up conv)."""
    self.params += cin * cout + cout
    self.trainable += cin * cout + cout
    self.madds += out_hw[0] * out_hw[1] * cin * cout

  def as_dict(self):
    return dict(params=self.params, trainable_params=self.trainable,
                madds=self.madds)


def _block_cost(counter, block_type, info, in_hw):
  out_hw = (_side(in_hw[0], info.strides), _side(in_hw[1], info.strides))
  n, cin, cout = info.filters, info.in_channels, info.out_channels
  if block_type == "BB":
    counter.conv_bn(cin, n, 3, out_hw)
    counter.conv_bn(n, n, 3, out_hw)
  elif block_type == "BNB":
    counter.conv_bn(cin, n, 1, in_hw)  # Stride on the 3x3 (ResNet v1.5).
    counter.conv_bn(n, n, 3, out_hw)
    counter.conv_bn(n, cout, 1, out_hw)
  else:
    counter.conv_bn(cin, 2 * n, 1, in_hw)
    counter.conv_bn(2 * n, 2 * n, 3, out_hw, groups=XB_GROUPS)
    counter.conv_bn(2 * n, cout, 1, out_hw)
  if info.use_projection:
    counter.conv_bn(cin, cout, 1, out_hw)
  return out_hw


def serial_cost(spec, input_size, base_channels=64, parallel=None):
  """Parameters and multiply-adds of the SPNet backbone, per stage and total.

  Counts exactly the variables of modeling/backbones/spnet.py's model (so
  `params` equals its count_params()): conv kernels, batch norm gamma, beta
  and moving statistics (4 per channel; `trainable_params` counts 2), and the
  parallel up convs' kernel and bias. Multiply-adds are those of the
  convolutions (batch norm folds into them at inference; residual additions
  and nearest upsampling are not counted). Feature sides follow 'same'
  padding: ceil(side / stride).

  Args:
    spec: SerialSpec.
    input_size: int (square) or (height, width) in pixels.
    base_channels: stem width.
    parallel: None or subnet counts per stage (check_parallel).
  Returns:
    dict with "stem": {params, trainable_params, madds}; "stages": one dict
    per stage with stage, level, subnets (k_l), params, trainable_params,
    madds (the serial stage), subnet_params, subnet_trainable_params,
    subnet_madds (one copy p_l^k with its up conv) and total_params,
    total_trainable_params, total_madds (serial + k_l copies); and the
    backbone's "params", "trainable_params", "madds".
  Raises:
    ValueError: bad base_channels, input_size or parallel.
  """
  _check_base_channels(base_channels)
  if isinstance(input_size, int) and not isinstance(input_size, bool):
    input_size = (input_size, input_size)
  if (not isinstance(input_size, (tuple, list)) or len(input_size) != 2 or
      not all(isinstance(s, int) and s > 0 for s in input_size)):
    raise ValueError(f"input_size={input_size!r}; expected a positive int or "
                     f"(height, width) of positive ints.")
  counts = (check_parallel(parallel, spec.num_stages) if parallel is not None
            else (0,) * spec.num_stages)
  infos = spec.blocks(base_channels)

  stem = _Counter()
  hw = (_side(input_size[0], 2), _side(input_size[1], 2))
  stem.conv_bn(3, base_channels, 3, hw)
  hw = (_side(hw[0], 2), _side(hw[1], 2))
  stem.conv_bn(base_channels, base_channels, 3, hw)

  result = dict(stem=stem.as_dict(), stages=[])
  totals = {key: value for key, value in stem.as_dict().items()}
  prev_channels = base_channels
  for s in range(1, spec.num_stages + 1):
    serial = _Counter()
    stage_hw = hw
    for info in infos[spec.stage_slice(s)]:
      stage_hw = _block_cost(serial, spec.block_type, info, stage_hw)
    out_channels = infos[spec.stage_slice(s).stop - 1].out_channels
    subnet = _Counter()
    subnet.params, subnet.trainable, subnet.madds = (
        serial.params, serial.trainable, serial.madds)
    subnet.conv_bias(out_channels, prev_channels, stage_hw)
    k = counts[s - 1]
    entry = dict(stage=s, level=s + 1, subnets=k, **serial.as_dict())
    entry.update({f"subnet_{key}": value
                  for key, value in subnet.as_dict().items()})
    entry.update({f"total_{key}": entry[key] + k * entry[f"subnet_{key}"]
                  for key in ("params", "trainable_params", "madds")})
    result["stages"].append(entry)
    for key in totals:
      totals[key] += entry[f"total_{key}"]
    hw, prev_channels = stage_hw, out_channels
  result.update(totals)
  return result


def subnet_sampling_weights(spec, input_size, base_channels=64):
  """Per-stage probabilities of adding one subnet, inversely proportional to
  the subnet's multiply-adds (SP-NAS Sec. 3.2: "The probability of adding
  one additional subnet is proportional to the inverse of FLOPS for each
  subnet").

  Returns:
    tuple of floats, one per stage, summing to 1.
  """
  stages = serial_cost(spec, input_size, base_channels)["stages"]
  inverse = [1.0 / entry["subnet_madds"] for entry in stages]
  total = math.fsum(inverse)
  return tuple(w / total for w in inverse)
