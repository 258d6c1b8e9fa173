"""SP-NAS controller and space: Algorithm 1's phases on scripted rewards, the
parallel sampler, the decision summary and how a worker runs a proposal."""

import numpy as np
import pytest

from modeling.backbones import spnet_spec
from official.search import base
from official.search import worker
from official.search.controllers import sp_nas
from official.search.spaces import sp_nas_space


def _controller(**options):
  space = sp_nas_space.SPNASSpace()
  controller = sp_nas.SPNASController(space, seed=3, **options)
  controller.use_study_settings({"pretrain_gin_files": ["p.gin"]})
  return controller


class _Study:
  """Runs proposals one at a time as trials 1, 2, ... with scripted rewards."""

  def __init__(self, controller):
    self.controller = controller
    self.trials = []

  def propose(self):
    proposal = self.controller.propose()
    if proposal is None:
      return None
    trial_id = len(self.trials) + 1
    view = base.TrialView(trial_id=trial_id, decisions=proposal.decisions,
                          reward=None, active=True,
                          info={"architecture": proposal.architecture,
                                "run": proposal.run})
    self.trials.append((view, proposal))
    self.controller.observe_active([view])
    return trial_id, proposal

  def finish(self, trial_id, reward):
    view, _ = self.trials[trial_id - 1]
    self.controller.learn(base.TrialView(
        trial_id=trial_id, decisions=view.decisions, reward=reward,
        info=view.info))

  def step(self, reward):
    trial_id, proposal = self.propose()
    self.finish(trial_id, reward)
    return trial_id, proposal


def test_scripted_rewards_drive_stuck_reignition_and_parallel_phase():
  """Paper settings: n_stuck 20, n_r 2 (SP-NAS §4.1), a scripted sequence."""
  study = _Study(_controller(start_backbone="resnet18"))
  pretrain_id, p = study.step(0.9)
  assert p.architecture["role"] == "pretrain"
  assert p.run == {"save_weights": True, "auxiliary": True,
                   "gin_files": "pretrain"}
  assert p.architecture["serial"] == "BB(11,d1,d1,d1)"
  start_id, p = study.step(0.30)
  assert p.architecture["role"] == "start"
  assert p.run["inherit_from_trials"] == [pretrain_id]
  assert p.run["wait_for_trials"] == [pretrain_id]
  # Three improvements: each becomes the parent of the next candidate.
  best_id = start_id
  for reward in (0.31, 0.32, 0.33):
    trial_id, p = study.step(reward)
    assert p.architecture["role"] == "serial"
    assert p.architecture["parent_trial"] == best_id
    assert p.run["inherit_from_trials"] == [best_id]
    assert len(p.architecture["modifications"]) == 3
    best_id = trial_id
  # 19 candidates without improvement: still serial, all from the best.
  for _ in range(19):
    _, p = study.step(0.1)
    assert p.architecture["role"] == "serial"
    assert p.architecture["parent_trial"] == best_id
  assert study.controller.phase == "serial"
  _, p = study.step(None)  # The 20th: a failed candidate counts as stuck.
  assert study.controller.phase == "reignite"
  reignite_id, p = study.step(0.95)
  assert p.architecture["role"] == "reignite"
  assert p.architecture["serial"] == (
      study.trials[best_id - 1][1].architecture["serial"])
  assert p.run["inherit_from_trials"] == [best_id]
  assert p.run["gin_files"] == "pretrain" and p.run["auxiliary"]
  # Round 2: backbone from the reignition first, then the best's weights.
  _, p = study.step(0.2)
  assert p.run["inherit_from_trials"] == [reignite_id, best_id]
  for _ in range(19):
    study.step(0.2)
  assert study.controller.phase == "reignite"
  reignite2_id, p = study.step(0.96)
  assert p.architecture["role"] == "reignite"
  # n_r = 2 reignitions done: the parallel phase starts from the SerialNet.
  base_id, p = study.step(0.34)
  assert p.architecture["role"] == "parallel_base"
  assert p.architecture["parallel"] == [0, 0, 0, 0]
  assert p.run["inherit_from_trials"] == [reignite2_id, best_id]
  trial_id, p = study.step(0.40)
  assert p.architecture["role"] == "parallel"
  assert p.run["inherit_from_trials"] == [base_id]
  assert sum(p.architecture["parallel"]) >= 1
  assert max(p.architecture["parallel"]) <= 3
  parallel_best = trial_id
  for i in range(20):
    _, p = study.step(0.39)
    assert p.run["inherit_from_trials"] == [parallel_best]
  assert study.controller.propose() is None
  assert "n_stuck_parallel" in study.controller.done_reason
  assert len(study.trials) == 2 + 3 + 20 + 1 + 20 + 1 + 1 + 1 + 20


def test_without_pretraining_proxy_no_reignition():
  controller = sp_nas.SPNASController(sp_nas_space.SPNASSpace(),
                                      start_backbone="resnet18", n_stuck=2)
  controller.use_study_settings({})
  study = _Study(controller)
  start_id, p = study.step(0.3)
  assert p.architecture["role"] == "start" and "inherit_from_trials" not in (
      p.run)
  study.step(0.1)
  study.step(0.1)
  _, p = study.step(0.3)
  assert p.architecture["role"] == "parallel_base"
  assert p.run["inherit_from_trials"] == [start_id]


def test_running_parent_is_waited_for():
  """With several workers, a candidate may be proposed before its parent
  finished: it names the parent's trial and waits for it."""
  study = _Study(_controller(start_backbone="resnet18"))
  pretrain_id, _ = study.propose()
  start_id, p = study.propose()
  assert p.run["wait_for_trials"] == [pretrain_id]
  _, p = study.propose()
  assert p.architecture["role"] == "serial"
  assert p.run["wait_for_trials"] == [start_id]


def test_state_round_trip_continues_identically():
  first = _Study(_controller(start_backbone="resnet18", n_stuck=3))
  for reward in (0.9, 0.3, 0.35, 0.1):
    first.step(reward)
  state = first.controller.get_state()
  second = _controller(start_backbone="resnet18", n_stuck=3)
  second.set_state(state)
  a, b = first.controller.propose(), second.propose()
  assert a.architecture == b.architecture and a.run == b.run


def test_sampler_orders_subnet_counts_inversely_to_stage_flops():
  """10,000 draws: the mean count of a stage falls as its FLOPs rise."""
  spec = spnet_spec.parse_serial(spnet_spec.KNOWN_SERIAL["serialnet_voc"])
  flops = [s["subnet_madds"] for s in
           spnet_spec.serial_cost(spec, 640)["stages"]]
  rng = np.random.Generator(np.random.PCG64(0))
  weights = spnet_spec.subnet_sampling_weights(spec, 640)
  draws = np.array([sp_nas.sample_subnet_counts(weights, rng)
                    for _ in range(10_000)])
  assert draws.min() >= 0 and draws.max() <= 3
  assert (draws.sum(axis=1) >= 1).all()
  means = draws.mean(axis=0)
  order_by_flops = np.argsort(flops)
  assert len(set(flops)) == len(flops)
  assert np.all(np.diff(means[order_by_flops]) < 0), (flops, means)


def test_space_summary_bindings_and_size():
  space = sp_nas_space.SPNASSpace()
  arch = space.known_architectures()["spnet_ecp"]
  assert arch["serial"] == "BNB(111d1111,d1111,11d,1111,1111)"
  decisions = space.encode(arch)
  assert decisions == [sp_nas_space.ROLES.index("parallel"), 1, 16,
                       0, 2, 1, 1, 0, 0]
  assert len(decisions) == space.num_decisions()
  for step, d in enumerate(decisions):
    assert d in space.valid_options(decisions[:step])
  assert space.gin_bindings(arch) == [
      "spnet.serial = 'BNB(111d1111,d1111,11d,1111,1111)'",
      f"spnet.block_ids = {tuple(range(24))!r}",
      "spnet.parallel = (0, 2, 1, 1, 0)",
      "fpn.max_level = 6", "FasterRCNNTask.max_level = 6"]
  six_stages = space.known_architectures()["serialnet_voc"]
  assert space.gin_bindings(six_stages)[-2:] == [
      "fpn.max_level = 7", "FasterRCNNTask.max_level = 7"]
  assert space.gin_bindings(dict(six_stages, role="reignite"))[-1] == (
      "ClassificationTask.head_levels = (7,)")
  assert space.log10_size() > 20  # "more than 10^20" (SP-NAS §4.1).
  with pytest.raises(ValueError, match="cannot be decoded"):
    space.decode(decisions)
  with pytest.raises(ValueError, match="stages"):
    space.gin_bindings(dict(arch, parallel=[0, 1]))


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="Unknown sp_nas search option 'nstuck'"):
    sp_nas.parse_options({"nstuck": "3"})
  with pytest.raises(ValueError, match="expected an integer"):
    sp_nas.parse_options({"n_stuck": "many"})
  with pytest.raises(ValueError, match="start_backbone='resnet7'"):
    sp_nas.SPNASController(sp_nas_space.SPNASSpace(),
                           start_backbone="resnet7")


def test_worker_runs_a_proposal_with_its_proxy_and_parents(tmp_path):
  settings = {"gin_files": ["det.gin"], "pretrain_gin_files": ["cls.gin"],
              "gin_params": [], "metric": "auto", "trainer": "official.train"}
  info = {"gin_bindings": ["spnet.serial = 'BB(11,d1,d1,d1)'"],
          "run": {"save_weights": True, "inherit_from_trials": [4, 2],
                  "gin_files": "pretrain"}}
  run_settings, bindings = worker.run_settings(str(tmp_path), settings, info)
  assert run_settings["gin_files"] == ["cls.gin"]
  assert settings["gin_files"] == ["det.gin"]  # Not modified.
  assert bindings[:2] == ["spnet.serial = 'BB(11,d1,d1,d1)'",
                          "Trainer.save_inheritable_weights = True"]
  assert bindings[2] == "Trainer.inherit_weights_from = " + repr(
      [str(tmp_path / "trials" / "4"), str(tmp_path / "trials" / "2")])
