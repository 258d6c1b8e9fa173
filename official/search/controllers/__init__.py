"""Controllers by name: random, evolution, reinforce, ppo."""

from official.search.controllers import evolution
from official.search.controllers import policy_gradient
from official.search.controllers import random_search

CONTROLLERS = ("random", "evolution", "reinforce", "ppo")


def get_controller(name, space, seed=0):
  """The controller `name` (one of CONTROLLERS) over `space`, seeded.

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  if name == "random":
    return random_search.RandomController(space, seed)
  if name == "evolution":
    return evolution.EvolutionController(space, seed)
  if name in ("reinforce", "ppo"):
    return policy_gradient.PolicyGradientController(space, seed,
                                                    algorithm=name)
  raise ValueError(f"Unknown controller {name!r}; expected one of "
                   f"{list(CONTROLLERS)}.")
