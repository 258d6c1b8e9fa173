"""SP-NAS's serial-to-parallel search (SP-NAS Algorithm 1, §3.1-3.2, §4.1).

The search, as trials of the study (roles of official/search/spaces/
sp_nas_space.py):

1. pretrain: the start network f_0 trained as a classifier on the
   --pretrain_gin_file proxy (θ_0, "ImageNet pretrained weight"; digits on a
   CPU). Skipped without a pre-training proxy (θ_0 is then the initialiser).
2. start: f_0 on the detection proxy from θ_0: acc_best, θ_best.
3. serial: candidates = num_modifications (3) random morphisms (expand, swap,
   add a stage) of the best serial network, each trained from the best's
   weights (matching variables by name, the inserted block an identity).
   A candidate better than the best becomes the best; after n_stuck (20)
   candidates in a row without improvement the round ends.
4. reignite: the best serial network retrained as a classifier on the
   pre-training proxy, from its own weights; later candidates take their
   backbone weights from it (the rest from the best detection trial).
   Rounds 3-4 run n_reignite (2) times; the last reignition leads to:
5. parallel_base: the SerialNet (all k_l = 0) trained from the reignited
   weights: the parallel phase's first best (Algorithm 1: p_best <-
   init(f_best), train_eval(p_best, θ_best)).
6. parallel: random sub-network counts k_l in 0..K (K = 3), drawn with
   each added sub-network's probability inversely proportional to its FLOPs
   (§3.2), trained from the best parallel network's weights (new copies of a
   stage inherit that stage's weights, §3.2). After n_stuck_parallel
   candidates without improvement the controller proposes nothing more and
   the search ends.

Where the paper is silent or contradicts itself (written down as the
project's choice):
- Algorithm 1 never increments its counters: the stuck counter counts
  finished candidates since the last improvement (a failed candidate counts
  as no improvement), and the reignition counter counts reignitions.
- Candidates run in parallel (§4.1 trains them on 4 nodes): each proposal
  morphs the best network known when it is proposed; results that arrive
  later are compared with the best at that time.
- Reignition retrains the best network from its own weights (the paper says
  "pre-training the ImageNet for the current stuck architecture again" and
  gives no initialisation; its inserted blocks have never seen the
  classification data, the others start where the search left them).
- The number of sub-networks a parallel sample adds is uniform in 1..ceil(K
  L / 2) (the paper gives only the per-subnetwork probability; Table 7's
  searched networks add 1 to 6); each addition goes to stage l with
  probability proportional to 1 / FLOPs(stage l), among stages below K.
- "add stage" is implied by Table 7 (4 stages grow to 5-6) and never
  described: see modeling/backbones/spnet_spec.py add_stage.
"""

import json
import math

import numpy as np

from official.search import base
from official.search.controllers import common

# The paper's settings (SP-NAS §4.1): n_stuck = 20, n_r = 2, 3 modifications
# per proposal, K = 3. n_stuck_P is not given; it takes n_stuck's value.
PAPER_OPTIONS = {
    "start_backbone": "resnet50",
    "n_stuck": 20,
    "n_stuck_parallel": 20,
    "n_reignite": 2,
    "num_modifications": 3,
    "max_subnets": 3,
}
# Input side at which stage costs are compared (SP-NAS §4.2 trains COCO at
# 800 x 1333; any size gives the same ratios up to rounding).
_COST_INPUT_SIZE = 640
_INT_OPTIONS = ("n_stuck", "n_stuck_parallel", "n_reignite",
                "num_modifications", "max_subnets")


def parse_options(options):
  """Typed keyword arguments of SPNASController from --search_options.

  Raises:
    ValueError: an unknown key (listing the known ones) or a bad value.
  """
  kwargs = {}
  for key, value in dict(options or {}).items():
    if key not in PAPER_OPTIONS:
      raise ValueError(f"Unknown sp_nas search option {key!r}; expected some "
                       f"of {sorted(PAPER_OPTIONS)} (paper values: "
                       f"{PAPER_OPTIONS}).")
    if key in _INT_OPTIONS:
      try:
        kwargs[key] = int(value)
      except (TypeError, ValueError):
        raise ValueError(f"sp_nas search option {key}={value!r}: expected an "
                         "integer.") from None
    else:
      kwargs[key] = str(value)
  return kwargs


def sample_subnet_counts(stage_weights, rng, max_subnets=3):
  """Sub-networks per stage for one parallel sample (SP-NAS §3.2).

  Args:
    stage_weights: list of positive floats, one per stage, proportional to
      the probability of adding a sub-network there: the inverse of its
      FLOPs (modeling/backbones/spnet_spec.py subnet_sampling_weights).
    rng: numpy Generator.
    max_subnets: K, the most copies of one stage.
  Returns:
    list of int k_l in 0..K, at least one > 0: additions uniform in
    1..ceil(K L / 2), each to stage l with probability proportional to
    stage_weights[l] among the stages that are not full.
  """
  weights = np.asarray(stage_weights, dtype=np.float64)
  if weights.ndim != 1 or not len(weights) or np.any(weights <= 0):
    raise ValueError(f"stage_weights must be positive numbers, one per "
                     f"stage; got {stage_weights!r}.")
  num_stages = len(weights)
  counts = np.zeros(num_stages, dtype=np.int64)
  additions = int(rng.integers(1, math.ceil(max_subnets * num_stages / 2) + 1))
  for _ in range(additions):
    open_stages = counts < max_subnets
    if not open_stages.any():
      break
    p = np.where(open_stages, weights, 0.0)
    counts[rng.choice(num_stages, p=p / p.sum())] += 1
  return [int(k) for k in counts]


class SPNASController(base.Controller):
  """Algorithm 1 of SP-NAS as a controller of the trial engine.

  Proposals carry their architecture and how they run (base.Proposal):
  which finished (or running) trials' weights they inherit and must wait
  for, whether they train on the pre-training proxy, and that every trial
  saves its weights for the next candidates.

  Args:
    space: the SPNASSpace.
    seed: int.
    start_backbone: f_0, a name of space.known_architectures() (ResNet-18 for
      VOC, ResNet-50 for COCO/BDD/ECP, ResNeXt-101 for COCO: §4.1).
    n_stuck, n_stuck_parallel, n_reignite, num_modifications, max_subnets:
      see the module docstring (paper values in PAPER_OPTIONS).
  Raises:
    ValueError: an unknown start backbone or a non-positive setting.
  """

  # The start network is a controller setting; Vizier seed trials would
  # bypass Algorithm 1.
  accepts_seed_trials = False

  def __init__(self, space, seed=0, start_backbone="resnet50", n_stuck=20,
               n_stuck_parallel=20, n_reignite=2, num_modifications=3,
               max_subnets=3):
    if getattr(space, "name", None) != "sp_nas":
      raise ValueError(f"The sp_nas controller runs on --space=sp_nas, not "
                       f"'{getattr(space, 'name', space)}'.")
    self.space = space
    known = space.known_architectures()
    starts = sorted(n for n, a in known.items() if a.get("parallel") is None)
    if start_backbone not in starts:
      raise ValueError(f"sp_nas start_backbone={start_backbone!r} is not "
                       f"known; expected one of {starts}.")
    for name, value in (("n_stuck", n_stuck), ("n_stuck_parallel",
                                                n_stuck_parallel),
                        ("num_modifications", num_modifications),
                        ("max_subnets", max_subnets)):
      if value < 1:
        raise ValueError(f"sp_nas {name}={value}: expected >= 1.")
    if n_reignite < 0:
      raise ValueError(f"sp_nas n_reignite={n_reignite}: expected >= 0.")
    self.start_backbone = start_backbone
    self.n_stuck = n_stuck
    self.n_stuck_parallel = n_stuck_parallel
    self.n_reignite = n_reignite
    self.num_modifications = num_modifications
    self.max_subnets = max_subnets
    self.pretrain = False  # Set from the study (use_study_settings).
    self._rng = common.make_rng(seed)
    self._state = {
        "phase": "pretrain", "next_proposal": 0,
        # proposal number -> trial id, once the trial is seen.
        "trial_of": {},
        # Proposal numbers (as str keys) of the pending prerequisites.
        "pretrain_proposal": None, "start_proposal": None,
        "reignite_proposal": None, "parallel_base_proposal": None,
        # Completed trials the next candidates build on.
        "serial_best": None, "parallel_best": None,
        # Proposal number of a reignition newer than the best: its backbone
        # weights take precedence over the best's.
        "backbone_from": None,
        "stuck": 0, "stuck_parallel": 0, "reignitions": 0,
        "done_reason": None, "history": [],
    }

  # --- Study settings -----------------------------------------------------------

  def use_study_settings(self, settings):
    """Reads what the controller needs from the study settings: whether a
    pre-training proxy (--pretrain_gin_file) exists."""
    self.pretrain = bool(settings.get("pretrain_gin_files"))

  # --- Controller interface -----------------------------------------------------

  def get_state(self):
    # A copy through JSON: what the study stores, never an alias of ours.
    return json.loads(json.dumps({
        "rng": common.rng_state(self._rng), "state": self._state,
        "pretrain": self.pretrain}))

  def set_state(self, state):
    state = json.loads(json.dumps(state))
    common.set_rng_state(self._rng, state["rng"])
    self._state = state["state"]
    self.pretrain = state["pretrain"]

  @property
  def phase(self):
    return self._state["phase"]

  @property
  def done_reason(self):
    return self._state["done_reason"]

  def observe_active(self, trials):
    for trial in trials:
      self._note_trial(trial)

  def learn(self, trial):
    self._note_trial(trial)
    arch = trial.info.get("architecture") or {}
    role = arch.get("role")
    state = self._state
    reward = trial.reward
    entry = {"trial_id": trial.trial_id, "reward": reward,
             "architecture": arch}
    state["history"].append([trial.trial_id, role, reward])
    if role == "pretrain":
      if reward is None:
        # No θ_0: the start network trains from its initialiser.
        state["pretrain_proposal"] = None
    elif role == "reignite":
      if reward is None and state["backbone_from"] == arch.get("proposal"):
        # Its weights are unusable: later candidates use the best's alone.
        state["backbone_from"] = None
    elif role == "start":
      if reward is None:
        state["phase"] = "done"
        state["done_reason"] = (
            f"the start network failed in trial {trial.trial_id}: nothing to "
            "morph (see its log).")
      else:
        state["serial_best"] = entry
    elif role == "serial":
      best = state["serial_best"]
      if reward is not None and (best is None or reward > best["reward"]):
        state["serial_best"] = entry
        state["stuck"] = 0
        # Its backbone weights now include whatever reignition it started
        # from; it is the one source again.
        state["backbone_from"] = None
      else:
        state["stuck"] += 1
        if state["stuck"] >= self.n_stuck and state["phase"] == "serial":
          state["phase"] = ("reignite" if self.pretrain and
                            state["reignitions"] < self.n_reignite
                            else "parallel_base")
    elif role == "parallel_base":
      if reward is None:
        state["phase"] = "done"
        state["done_reason"] = (f"the SerialNet failed in the parallel phase "
                                f"(trial {trial.trial_id}).")
      else:
        state["parallel_best"] = entry
    elif role == "parallel":
      best = state["parallel_best"]
      if reward is not None and (best is None or reward > best["reward"]):
        state["parallel_best"] = entry
        state["stuck_parallel"] = 0
      else:
        state["stuck_parallel"] += 1
        if state["stuck_parallel"] >= self.n_stuck_parallel:
          state["phase"] = "done"
          state["done_reason"] = (
              f"{self.n_stuck_parallel} parallel candidates without "
              "improvement (n_stuck_parallel).")

  def propose(self):
    state = self._state
    phase = state["phase"]
    if phase == "done":
      return None
    if phase == "pretrain":
      if self.pretrain:
        start = self._start_architecture()
        state["phase"] = "start"
        return self._proposal(dict(start, role="pretrain"),
                              auxiliary=True, pretrain=True,
                              key="pretrain_proposal")
      state["phase"] = "start"
      phase = "start"
    if phase == "start":
      state["phase"] = "serial"
      sources = self._trials_of([state["pretrain_proposal"]])
      return self._proposal(self._start_architecture(), inherit=sources,
                            key="start_proposal")
    if phase == "serial":
      return self._serial_candidate()
    if phase == "reignite":
      best = state["serial_best"]
      state["reignitions"] += 1
      state["stuck"] = 0
      state["phase"] = ("serial" if state["reignitions"] < self.n_reignite
                        else "parallel_base")
      proposal = self._proposal(
          dict(best["architecture"], role="reignite",
               parent_trial=best["trial_id"], modifications=[]),
          inherit=[best["trial_id"]], auxiliary=True, pretrain=True,
          key="reignite_proposal")
      state["backbone_from"] = state["reignite_proposal"]
      return proposal
    if phase == "parallel_base":
      best = state["serial_best"]
      state["phase"] = "parallel"
      spec = self.space.serial_spec(best["architecture"])
      return self._proposal(
          dict(best["architecture"], role="parallel_base",
               parallel=[0] * spec.num_stages, parent_trial=best["trial_id"],
               modifications=[]),
          inherit=self._serial_sources(), key="parallel_base_proposal")
    if phase == "parallel":
      return self._parallel_candidate()
    raise ValueError(f"Unknown SP-NAS phase {phase!r} in the saved state.")

  # --- Helpers --------------------------------------------------------------------

  def _start_architecture(self):
    arch = dict(self.space.known_architectures()[self.start_backbone])
    arch.update(role="start", parallel=None, parent_trial=None,
                modifications=[])
    return arch

  def _note_trial(self, trial):
    arch = trial.info.get("architecture") or {}
    if "proposal" in arch:
      self._state["trial_of"][str(arch["proposal"])] = trial.trial_id

  def _trials_of(self, proposals):
    """Trial ids of proposal numbers (None entries skipped).

    A proposal's trial exists once the worker that asked for it got it, which
    is before the next proposal (the engine shows the controller the running
    trials first), so every earlier proposal has its id.
    """
    out = []
    for number in proposals:
      if number is None:
        continue
      trial_id = self._state["trial_of"].get(str(number))
      if trial_id is None:
        raise ValueError(f"SP-NAS proposal {number} has no trial yet; the "
                         "engine must show running trials before proposing.")
      out.append(trial_id)
    return out

  def _serial_sources(self):
    """Weights of the next serial candidate: a newer reignition's backbone
    first, then the best serial trial (or the start trial while it runs)."""
    state = self._state
    sources = []
    sources += self._trials_of([state["backbone_from"]])
    if state["serial_best"] is not None:
      sources.append(state["serial_best"]["trial_id"])
    else:
      sources += self._trials_of([state["start_proposal"]])
    return sources

  def _serial_candidate(self):
    state = self._state
    best = state["serial_best"]
    if best is None:
      parent_arch = self._start_architecture()
      parent_trial = self._trials_of([state["start_proposal"]])[0]
    else:
      parent_arch, parent_trial = best["architecture"], best["trial_id"]
    spec_lib = self.space.spec_module()
    spec = self.space.serial_spec(parent_arch)
    child, descriptions = spec_lib.propose(
        spec, self._rng, num_modifications=self.num_modifications)
    arch = {"role": "serial", "serial": child.code,
            "block_ids": [int(i) for i in child.block_ids], "parallel": None,
            "parent_trial": parent_trial, "modifications": descriptions}
    return self._proposal(arch, inherit=self._serial_sources())

  def _parallel_candidate(self):
    state = self._state
    best = state["parallel_best"]
    serial = state["serial_best"]["architecture"]
    spec_lib = self.space.spec_module()
    spec = self.space.serial_spec(serial)
    # One sub-network of stage l costs a copy of the stage and its up conv;
    # the ratios between stages do not depend on the input size or width.
    weights = spec_lib.subnet_sampling_weights(spec, _COST_INPUT_SIZE)
    counts = sample_subnet_counts(weights, self._rng, self.max_subnets)
    if best is None:
      sources = self._trials_of([state["parallel_base_proposal"]])
    else:
      sources = [best["trial_id"]]
    arch = dict(serial, role="parallel", parallel=counts,
                parent_trial=sources[0],
                modifications=[f"sub-networks per stage {tuple(counts)}"])
    return self._proposal(arch, inherit=sources)

  def _proposal(self, arch, inherit=(), auxiliary=False, pretrain=False,
                key=None):
    state = self._state
    number = state["next_proposal"]
    state["next_proposal"] += 1
    arch = dict(arch, proposal=number)
    if key is not None:
      state[key] = number
    run = {"save_weights": True}
    inherit = [int(t) for t in inherit]
    if inherit:
      run["inherit_from_trials"] = inherit
      run["wait_for_trials"] = inherit
    if auxiliary:
      run["auxiliary"] = True
    if pretrain:
      run["gin_files"] = "pretrain"
    return base.Proposal(decisions=self.space.encode(arch), architecture=arch,
                         run=run)
