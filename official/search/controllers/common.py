"""Pieces every controller shares: seeded randomness with a JSON state, and
the rule for infeasible trials."""

import numpy as np


def make_rng(seed):
  """A numpy Generator (PCG64) for `seed` (an int, or None for entropy)."""
  return np.random.Generator(np.random.PCG64(seed))


def rng_state(rng):
  """The generator's state as a JSON-serialisable dict (Python ints)."""
  return rng.bit_generator.state


def set_rng_state(rng, state):
  rng.bit_generator.state = state


def sample_uniform(space, rng, prefix=()):
  """Completes `prefix` with uniform draws among the valid options of each
  step (the masks of the space, so every result is valid)."""
  decisions = [int(d) for d in prefix]
  for _ in range(len(decisions), space.num_decisions()):
    options = space.valid_options(decisions)
    decisions.append(int(options[rng.integers(len(options))]))
  return decisions


class RewardFloor:
  """Turns reward None (an infeasible trial: NaN loss, out of memory, out of
  the FLOPs budget) into the worst finite reward seen so far, 0.0 before any
  (accuracy- and AP-like rewards are >= 0). A failed architecture so counts
  as the poorest outcome the controller knows, not as a missing sample."""

  def __init__(self):
    self.worst = None

  def __call__(self, reward):
    if reward is None or not np.isfinite(reward):
      return 0.0 if self.worst is None else self.worst
    reward = float(reward)
    self.worst = reward if self.worst is None else min(self.worst, reward)
    return reward

  def get_state(self):
    return {"worst": self.worst}

  def set_state(self, state):
    self.worst = state["worst"]


def sample_uniform_batch(space, rng, num_samples):
  """`num_samples` decision lists drawn as `sample_uniform` draws them (each
  step uniform over its valid options), vectorised over the samples with the
  space's `valid_mask`: int array [num_samples, num_decisions]."""
  decisions = np.zeros((num_samples, space.num_decisions()), dtype=np.int64)
  for step in range(space.num_decisions()):
    mask = space.valid_mask(decisions[:, :step])
    counts = mask.sum(axis=1)
    # The k-th valid option, k uniform in [0, count).
    k = np.floor(rng.random(num_samples) * counts).astype(np.int64)
    decisions[:, step] = np.argmax(np.cumsum(mask, axis=1) > k[:, None],
                                   axis=1)
  return decisions
