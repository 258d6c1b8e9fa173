"""Search spaces by name: the SpineNet presets, the resource space, SP-NAS."""

from official.search.spaces import resource_space
from official.search.spaces import sp_nas_space
from official.search.spaces import spinenet_space

SPACES = tuple(spinenet_space.SPACE_PRESETS) + ("resource", "sp_nas")


def get_space(name):
  """The search space `name` (one of SPACES).

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  if name == "resource":
    return resource_space.ResourceSpace()
  if name == "sp_nas":
    return sp_nas_space.SPNASSpace()
  if name in spinenet_space.SPACE_PRESETS:
    return spinenet_space.spinenet_space(name)
  raise ValueError(f"Unknown search space {name!r}; expected one of "
                   f"{list(SPACES)}.")
