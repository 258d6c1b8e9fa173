"""Uniform random search: every decision uniform over its valid options."""

from official.search import base
from official.search.controllers import common


class RandomController(base.Controller):
  """Draws each decision uniformly among the options the space allows given
  the earlier ones (so architectures are not uniform over the space: a step
  with fewer valid options weighs its choices more). Learns nothing.

  Args:
    space: a SearchSpace.
    seed: int; equal seeds give equal suggestions.
  """

  def __init__(self, space, seed=0):
    self.space = space
    self._rng = common.make_rng(seed)
    self._num_updates = 0

  def suggest(self):
    return common.sample_uniform(self.space, self._rng)

  def update(self, decisions, reward):
    del decisions, reward
    self._num_updates += 1

  def get_state(self):
    return {"rng": common.rng_state(self._rng),
            "num_updates": self._num_updates}

  def set_state(self, state):
    common.set_rng_state(self._rng, state["rng"])
    self._num_updates = state["num_updates"]
