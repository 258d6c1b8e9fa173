"""Surrogate rewards: check a controller's learning in seconds, no training.

A real trial trains a network for minutes (digits) to hours (the SpineNet
paper's §5.1 proxy: 5 epochs on COCO at 512 px), so the algorithms are
checked on rewards that know the answer:

- SpineNet spaces: the share of decisions equal to the encoding of the
  space's reference architecture (SpineNet-49 in the spinenet49 and mini
  spaces, its nearest member in R0-SP53 and R0-SP53+, the ablation file's
  order in hourglass and fish: the first of known_architectures()).
- Resource space: closeness of the widths to the published Eff-SpineNet-D0
  widths (Eff-SpineNet paper Table 1, EFF_SPINENET_D0_FILTERS in
  modeling/backbones/eff_spinenet.py): 1 - mean_i |c_i - c*_i| / c*_i over
  the 18 blocks, 1 for D0's widths (negative for far ones: a 152-wide block
  where D0 has 40 alone costs 2.8 / 18).
Both plus N(0, noise_std^2) noise, as a proxy reward is noisy (0.02 by
default, about the spread of a short proxy training's AP).
"""

import numpy as np

from modeling.backbones import eff_spinenet as eff_lib
from official.search.spaces import resource_space

NOISE_STD = 0.02


class SurrogateReward:
  """reward(decisions) -> float for one space.

  Args:
    space: a SearchSpace from official.search.spaces.
    seed: seed of the noise.
    noise_std: standard deviation of the Gaussian noise.
    target: the reference architecture (default: the first known one, or
      the D0 widths for the resource space).
  """

  def __init__(self, space, seed=0, noise_std=NOISE_STD, target=None):
    self.space = space
    self.noise_std = noise_std
    self._rng = np.random.default_rng(seed)
    self._resource = isinstance(space, resource_space.ResourceSpace)
    if self._resource:
      self._target = np.array(
          eff_lib.EFF_SPINENET_D0_FILTERS if target is None else target,
          dtype=float)
    else:
      if target is None:
        target = next(iter(space.known_architectures().values()))
      self._target = np.array(space.encode(target))

  def exact(self, decisions):
    """The reward without noise."""
    if self._resource:
      widths = np.array(self.space.decode(decisions)["widths"], dtype=float)
      return float(1.0 - np.mean(np.abs(widths - self._target) /
                                 self._target))
    decisions = np.asarray(decisions)
    return float(np.mean(decisions == self._target))

  def __call__(self, decisions):
    return self.exact(decisions) + float(self._rng.normal(0.0,
                                                          self.noise_std))
