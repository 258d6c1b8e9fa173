"""The SP-NAS search space: serial ResNet-style backbones, then parallel
sub-networks per stage (SP-NAS §3.1-3.2, Table 7).

An SP-NAS candidate is not a point of a fixed decision list: the serial phase
grows the network by morphisms of the best one so far (expand, swap, add a
stage), so its size changes during the search (8 to 60 blocks, 4 to 6 block
stages). The SP-NAS controller (official/search/controllers/sp_nas.py) gives
each trial its architecture; this space renders an architecture as gin
bindings of the `spnet` backbone (modeling/backbones/spnet.py), describes it
with a short decision summary that Vizier stores as the trial's parameters
(trial role, number of stages, number of blocks, sub-networks per stage), and
counts the space.

An architecture is a JSON dict:
  role: "pretrain" (classification pre-training of the start network, θ_0
    of Algorithm 1), "start" (the start network on detection), "serial" (a
    morphed candidate), "reignite" (classification retraining of the best
    serial network), "parallel_base" (the SerialNet with reignited weights,
    the parallel phase's first best) or "parallel" (a sub-network sample).
  serial: the block code, e.g. "BNB(111,d111,d11111,d11)" (Table 7 notation).
  block_ids: the blocks' stable ids (layer names block<id>, kept by every
    morphism so weights are inherited by name).
  parallel: sub-networks per stage (k_l in 0..3), or None (serial network).
  parent_trial, modifications, proposal: where the candidate came from.
"""

import math

from official.search import base

ROLES = ("pretrain", "start", "serial", "reignite", "parallel_base",
         "parallel")
MAX_SUBNETS = 3  # K (SP-NAS §4.1).
# Trials trained on the classification (pre-training) proxy.
CLASSIFICATION_ROLES = ("pretrain", "reignite")
# FPN P2..P6 of the two-stage detector (Lin et al. 2017 §4.1).
DETECTOR_MAX_LEVEL = 6
# Summary decisions: role, number of block stages (index = stages - 4),
# number of blocks (index = blocks - 8), then k_l for up to six stages.
_MIN_STAGES, _MAX_STAGES = 4, 6
_MIN_BLOCKS, _MAX_BLOCKS = 8, 60


def _spec_module():
  # pylint: disable=g-import-not-at-top
  from modeling.backbones import spnet_spec
  return spnet_spec


class SPNASSpace(base.SearchSpace):
  """SP-NAS's serial-then-parallel backbone space (see module docstring)."""

  name = "sp_nas"
  # Its candidates come from Algorithm 1, not from decision lists.
  controllers = ("sp_nas",)

  def num_decisions(self):
    return 3 + _MAX_STAGES

  def num_options(self, step):
    if step == 0:
      return len(ROLES)
    if step == 1:
      return _MAX_STAGES - _MIN_STAGES + 1
    if step == 2:
      return _MAX_BLOCKS - _MIN_BLOCKS + 1
    return MAX_SUBNETS + 1

  def valid_options(self, prefix):
    step = len(prefix)
    if step >= 3:
      stages = _MIN_STAGES + prefix[1]
      if step - 3 >= stages:
        return [0]  # No such stage.
    return list(range(self.num_options(step)))

  def decode(self, decisions):
    raise ValueError(
        "An SP-NAS trial is given by its architecture (the controller morphs "
        "the best network so far); its decisions only summarise it "
        f"({list(decisions)}) and cannot be decoded.")

  def encode(self, architecture):
    """The decision summary of an architecture (see the module docstring)."""
    spec = self.serial_spec(architecture)
    role = architecture.get("role", "serial")
    if role not in ROLES:
      raise ValueError(f"Unknown SP-NAS trial role {role!r}; expected one of "
                       f"{ROLES}.")
    parallel = list(architecture.get("parallel") or [])
    counts = parallel + [0] * (_MAX_STAGES - len(parallel))
    return ([ROLES.index(role), spec.num_stages - _MIN_STAGES,
             spec.num_blocks - _MIN_BLOCKS] + [int(k) for k in counts])

  def spec_module(self):
    """modeling/backbones/spnet_spec.py (imported on first use)."""
    return _spec_module()

  def serial_spec(self, architecture):
    """The SerialSpec of an architecture dict (raises ValueError if bad)."""
    if not isinstance(architecture, dict) or "serial" not in architecture:
      raise ValueError(f"An SP-NAS architecture is a dict with 'serial' (and "
                       f"'block_ids', 'parallel'); got {architecture!r}.")
    spec_lib = _spec_module()
    return spec_lib.parse_serial(architecture["serial"],
                                 architecture.get("block_ids"))

  def gin_bindings(self, architecture):
    """Bindings that make a trial train this architecture.

    The spnet backbone's serial code, block ids and sub-network counts, and
    the levels the proxy reads from it: a classification proxy (roles
    pretrain and reignite) pools the top stage, like a ResNet classifier; a
    detection proxy (a FasterRCNNTask with an fpn decoder, as in
    configs/search/sp_nas_*.gin) has FPN levels P2..P6 (SP-NAS §4: FPN [19])
    and, when the network grows a sixth stage, P2..P7, so that every stage
    feeds the detector (Table 7's six-stage SPNet_VOC has sub-networks on
    its sixth stage).
    """
    spec = self.serial_spec(architecture)
    parallel = architecture.get("parallel")
    if parallel is not None and len(parallel) != spec.num_stages:
      raise ValueError(f"parallel {parallel} has {len(parallel)} entries; "
                       f"the serial network {spec.code} has "
                       f"{spec.num_stages} stages.")
    top = spec.num_stages + 1
    bindings = [
        f"spnet.serial = '{spec.code}'",
        f"spnet.block_ids = {tuple(int(i) for i in spec.block_ids)!r}",
        "spnet.parallel = " + (
            "None" if parallel is None else repr(tuple(int(k)
                                                       for k in parallel))),
    ]
    if architecture.get("role") in CLASSIFICATION_ROLES:
      bindings.append(f"ClassificationTask.head_levels = ({top},)")
    else:
      detector_top = max(DETECTOR_MAX_LEVEL, top)
      bindings += [f"fpn.max_level = {detector_top}",
                   f"FasterRCNNTask.max_level = {detector_top}"]
    return bindings

  def known_architectures(self):
    """The start networks (SP-NAS §4.1) and the legible Table 7 results."""
    spec_lib = _spec_module()
    known = {}
    for name, code in spec_lib.KNOWN_SERIAL.items():
      spec = spec_lib.parse_serial(code)
      known[name] = {"role": "start", "serial": spec.code,
                     "block_ids": list(spec.block_ids), "parallel": None}
    for name, (serial_name, counts) in spec_lib.KNOWN_PARALLEL.items():
      arch = dict(known[serial_name])
      arch.update(role="parallel", parallel=list(counts))
      known[name] = arch
    return known

  def log10_size(self):
    """log10 of the number of serial networks times the parallel choices.

    Serial: 3 block types x every sequence of 8..60 '1'/'d' blocks split
    into 4..6 non-empty stages; parallel: (K + 1)^L sub-network counts for
    L stages (SP-NAS §3.2). The paper states "more than 10^20" (§4.1).
    """
    total = 0
    for blocks in range(_MIN_BLOCKS, _MAX_BLOCKS + 1):
      for stages in range(_MIN_STAGES, _MAX_STAGES + 1):
        total += (2 ** blocks * math.comb(blocks - 1, stages - 1) *
                  (MAX_SUBNETS + 1) ** stages)
    return math.log10(3 * total)
