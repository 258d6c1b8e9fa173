"""Controllers: the algorithm check on surrogate rewards, state round trips,
determinism, masks and infeasible trials.

The algorithm check is the search issue's "Done means": on the surrogate
reward over the real spinenet49 space (SpineNet paper §3.1, 70 decisions)
and over the Eff-SpineNet resource space (§3.3), 10 seeds x 500 trials per
controller; every RL and evolution seed's best beats the best random seed's
best, and its mean reward over the last 100 trials is >= 1.5x random's.
"""

import json
import time

import numpy as np
import pytest

from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS
from official.search.controllers import DECISION_CONTROLLERS as CONTROLLERS
from official.search.controllers import get_controller
from official.search.spaces import get_space
from official.search.surrogate import SurrogateReward

NUM_SEEDS = 10
NUM_TRIALS = 500
LEARNERS = ("evolution", "reinforce", "ppo")


def _run(space, name, seed, num_trials=NUM_TRIALS):
  controller = get_controller(name, space, seed)
  reward = SurrogateReward(space, seed=1000 + seed)
  rewards = []
  for _ in range(num_trials):
    decisions = controller.suggest()
    rewards.append(reward(decisions))
    controller.update(decisions, rewards[-1])
  return rewards


@pytest.mark.parametrize("space_name", ["spinenet49", "resource"])
def test_learning_controllers_beat_random_search(space_name):
  space = get_space(space_name)
  figures = {}
  for name in CONTROLLERS:
    start = time.perf_counter()
    runs = [_run(space, name, seed) for seed in range(NUM_SEEDS)]
    figures[name] = dict(
        best=[max(r) for r in runs],
        last=[float(np.mean(r[-100:])) for r in runs],
        seconds=time.perf_counter() - start)
  for name, f in figures.items():
    print(f"{space_name} {name}: best {min(f['best']):.3f}.."
          f"{max(f['best']):.3f}, last-100 mean {min(f['last']):.3f}.."
          f"{max(f['last']):.3f} ({f['seconds']:.1f} s)")
  random_best = max(figures["random"]["best"])
  random_last = float(np.mean(figures["random"]["last"]))
  for name in LEARNERS:
    assert min(figures[name]["best"]) > random_best, name
    assert min(figures[name]["last"]) >= 1.5 * random_last, name


@pytest.mark.parametrize("num_before", [20, 13])  # 13: mid-batch for RL.
@pytest.mark.parametrize("space_name", ["spinenet49", "resource", "mini"])
@pytest.mark.parametrize("name", CONTROLLERS)
def test_state_round_trip_continues_identically(space_name, name, num_before):
  space = get_space(space_name)
  reward = SurrogateReward(space, noise_std=0.0).exact

  def step(controller):
    decisions = controller.suggest()
    controller.update(decisions, reward(decisions))
    return decisions

  controller = get_controller(name, space, seed=7)
  for _ in range(num_before):
    step(controller)
  state = json.loads(json.dumps(controller.get_state()))
  expected = [step(controller) for _ in range(10)]
  restored = get_controller(name, space, seed=123)
  restored.set_state(state)
  assert [step(restored) for _ in range(10)] == expected


@pytest.mark.parametrize("name", CONTROLLERS)
def test_equal_seeds_suggest_equally_and_stay_in_the_space(name):
  for space_name in ("R0-SP53", "R0-SP53+", "spinenet49", "hourglass",
                     "fish", "mini", "resource"):
    space = get_space(space_name)
    reward = SurrogateReward(space, noise_std=0.0).exact
    runs = []
    for _ in range(2):
      controller = get_controller(name, space, seed=3)
      suggestions = []
      for _ in range(30):
        decisions = controller.suggest()
        space.decode(decisions)  # Raises on an invalid decision.
        controller.update(decisions, reward(decisions))
        suggestions.append(decisions)
      runs.append(suggestions)
    assert runs[0] == runs[1], space_name
    other = get_controller(name, space, seed=4)
    assert [other.suggest() for _ in range(3)] != runs[0][:3], space_name


def test_unknown_controller_lists_the_names():
  with pytest.raises(ValueError, match="'nope'.*random.*evolution.*ppo"):
    get_controller("nope", get_space("mini"))


@pytest.mark.parametrize("name", CONTROLLERS)
def test_seeded_and_infeasible_trials_are_accepted(name):
  """A search is seeded with known architectures the controller never
  suggested, and failed trials report reward None."""
  space = get_space("spinenet49")
  controller = get_controller(name, space, seed=0)
  controller.update(space.encode(SPINENET_BLOCK_SPECS), 0.4)
  for i in range(25):
    decisions = controller.suggest()
    controller.update(decisions, None if i % 3 == 0 else 0.1 + 0.01 * i)
  json.dumps(controller.get_state())


def test_infeasible_trials_count_as_the_worst_reward_seen():
  space = get_space("mini")
  controller = get_controller("evolution", space, seed=0)
  controller.update([2] * 15, None)  # Nothing seen yet: 0.0.
  controller.update([0] * 15, 0.5)
  controller.update([0] + [2] * 14, 0.3)
  controller.update([2, 0] + [2] * 13, None)
  assert [r for _, r in controller.get_state()["population"]] == [
      0.0, 0.5, 0.3, 0.3]


def test_evolution_mutates_one_group_and_keeps_the_population_aged():
  space = get_space("spinenet49")
  controller = get_controller("evolution", space, seed=1)
  seed = space.encode(SPINENET_BLOCK_SPECS)
  population = controller.population_size
  for i in range(population):
    controller.suggest()
    controller.update(seed, 1.0 if i == 0 else 0.0)
  # Every member is SpineNet-49: each child is one mutation of it.
  groups = space.mutation_groups()
  for _ in range(20):
    child = controller.suggest()
    changed = {s for s in range(len(seed)) if child[s] != seed[s]}
    assert changed
    # A swap or a re-drawn group, plus re-drawn adjustments it invalidated.
    assert any(changed <= set(steps) or (kind == "permutation" and len(
        changed & set(steps)) == 2) for kind, steps in groups)
  controller.update(seed, 0.5)
  state = controller.get_state()
  assert len(state["population"]) == population
  assert state["population"][0][1] == 0.0  # The first (1.0) aged out.
