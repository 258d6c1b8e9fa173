"""Controllers by name: random, evolution, reinforce, ppo, sp_nas."""

from official.search.controllers import evolution
from official.search.controllers import policy_gradient
from official.search.controllers import random_search
from official.search.controllers import sp_nas

# Controllers of decision-list spaces (SpineNet, resource) and SP-NAS's own
# (its space is grown by morphisms, official/search/spaces/sp_nas_space.py).
DECISION_CONTROLLERS = ("random", "evolution", "reinforce", "ppo")
CONTROLLERS = DECISION_CONTROLLERS + ("sp_nas",)


def get_controller(name, space, seed=0, options=None):
  """The controller `name` (one of CONTROLLERS) over `space`, seeded.

  options: dict str -> str (--search_options); only SP-NAS takes any.

  Raises:
    ValueError: an unknown name, listing the known ones, or options the
      controller does not take.
  """
  options = dict(options or {})
  if name == "sp_nas":
    return sp_nas.SPNASController(space, seed, **sp_nas.parse_options(options))
  if options:
    raise ValueError(f"Controller {name!r} takes no --search_options (got "
                     f"{sorted(options)}); only sp_nas does.")
  if name == "random":
    return random_search.RandomController(space, seed)
  if name == "evolution":
    return evolution.EvolutionController(space, seed)
  if name in ("reinforce", "ppo"):
    return policy_gradient.PolicyGradientController(space, seed,
                                                    algorithm=name)
  raise ValueError(f"Unknown controller {name!r}; expected one of "
                   f"{list(CONTROLLERS)}.")
