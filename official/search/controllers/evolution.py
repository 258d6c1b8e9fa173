"""Regularized evolution (Real et al., "Regularized Evolution for Image
Classifier Architecture Search", AAAI 2019, Algorithm 1).

The first `population_size` suggestions are uniform random. After that each
suggestion samples `tournament_size` members of the population without
replacement, mutates the best of them, and every finished trial joins the
population while the oldest member leaves (aging: a member's place depends on
its age, not its reward). Trials finish in any order when several workers
run, so the population is the last `population_size` finished trials and a
suggestion made while none has finished yet is random.

Mutations (SpineNet paper §3.1 search space) come from the space's
`mutation_groups`: swap two positions of a permutation that hold different
levels, or re-draw a group (a parent pair, a block type, a level adjustment,
a beta) to a different value. A mutation can make a later decision invalid
(a swapped level leaves an adjustment out of 2..7): every such decision is
re-drawn uniformly from its mask, so a child is always valid and never
rejected.

Settings chosen here (the papers leave them to the search budget):
population 64 and tournament 16 (Real et al. keep the tournament about a
quarter of the population, 100/25 on 20k models). On the surrogate reward of
official/search/surrogate.py (10 seeds x 500 trials, mean of the last-100
means, spinenet49 / resource): 16/4 0.646 / 0.835, 32/8 0.670 / 0.862,
64/16 0.661 / 0.869, 100/25 0.661 / 0.846; the choice matters little at this
budget, and 64 leaves room for longer searches.
"""

import collections

from official.search import base
from official.search.controllers import common

POPULATION_SIZE = 64
TOURNAMENT_SIZE = 16
# A re-drawn group may land on its old value; these many draws are tried
# before the mutation moves to another group.
_REDRAWS = 8


class EvolutionController(base.Controller):
  """Regularized evolution over a space's decision lists.

  Args:
    space: a SearchSpace (mutation_groups says how to mutate).
    seed: int; equal seeds give equal suggestions for equal updates.
    population_size, tournament_size: see the module docstring.
  """

  def __init__(self, space, seed=0, population_size=POPULATION_SIZE,
               tournament_size=TOURNAMENT_SIZE):
    if not 1 <= tournament_size <= population_size:
      raise ValueError(f"tournament_size {tournament_size} must be in "
                       f"1..population_size ({population_size}).")
    self.space = space
    self.population_size = population_size
    self.tournament_size = tournament_size
    self._rng = common.make_rng(seed)
    self._floor = common.RewardFloor()
    self._population = collections.deque()
    self._num_suggested = 0
    self._groups = [(kind, list(steps))
                    for kind, steps in space.mutation_groups()]

  def suggest(self):
    self._num_suggested += 1
    if (self._num_suggested <= self.population_size or
        not self._population):
      return common.sample_uniform(self.space, self._rng)
    size = min(self.tournament_size, len(self._population))
    picks = self._rng.choice(len(self._population), size=size, replace=False)
    # The first of equal rewards wins (the older member).
    parent = max(sorted(int(p) for p in picks),
                 key=lambda p: self._population[p][1])
    return self._mutate(list(self._population[parent][0]))

  def _mutate(self, parent):
    order = self._rng.permutation(len(self._groups))
    for g in order:
      kind, steps = self._groups[int(g)]
      child = list(parent)
      if kind == "permutation":
        values = [parent[s] for s in steps]
        first = int(self._rng.integers(len(steps)))
        others = [i for i, v in enumerate(values) if v != values[first]]
        if not others:
          continue
        second = others[int(self._rng.integers(len(others)))]
        a, b = steps[first], steps[second]
        child[a], child[b] = child[b], child[a]
        start = min(a, b)
      else:
        start = steps[0]
        for _ in range(_REDRAWS):
          for s in steps:
            options = self.space.valid_options(child[:s])
            child[s] = int(options[self._rng.integers(len(options))])
          if child != parent:
            break
        if child == parent:
          continue
      return self._repair(child, start)
    return common.sample_uniform(self.space, self._rng)  # Nothing mutable.

  def _repair(self, child, start):
    """Re-draws, from its mask, every decision after `start` that the
    mutation made invalid."""
    for s in range(start, len(child)):
      options = self.space.valid_options(child[:s])
      if child[s] not in options:
        child[s] = int(options[self._rng.integers(len(options))])
    return child

  def update(self, decisions, reward):
    self._population.append(([int(d) for d in decisions],
                             self._floor(reward)))
    while len(self._population) > self.population_size:
      self._population.popleft()

  def get_state(self):
    return {"rng": common.rng_state(self._rng),
            "floor": self._floor.get_state(),
            "population": [[d, r] for d, r in self._population],
            "num_suggested": self._num_suggested}

  def set_state(self, state):
    common.set_rng_state(self._rng, state["rng"])
    self._floor.set_state(state["floor"])
    self._population = collections.deque(
        ([int(x) for x in d], float(r)) for d, r in state["population"])
    self._num_suggested = state["num_suggested"]
