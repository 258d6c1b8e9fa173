"""Learned resource distribution of Eff-SpineNet (paper Sec. 3.3, eq. 2-4).

Block i (of the 18, Table 1 order) with width c_i costs
  F_i = repeats_i * H_i * W_i * (2 * r * c_i^2 + k^2 * r * c_i)   (eq. 2)
multiply-adds (expand and project 1x1 convs, depthwise kxk), ~ C_i * c_i^2.
A sample draws beta_i from BETAS, sets
  alpha_i = F_t * beta_i / sum_k(beta_k * F_k)                     (eq. 4)
with F_t = sum_i F_i (eq. 3: total FLOPs preserved), and new widths
c_i' = sqrt(alpha_i) * c_i, rounded to the nearest multiple of `divisor`
(8, the usual accelerator-friendly width), at least `divisor`.

Rounding: plain rounding to multiples of 8 moves a block's FLOPs by up to
~2 x divisor / c_i' (25% of width for a 16-wide level-1 block), and 1000
D0 samples then span 0.82..1.13 of F_t. So every ideal width is first
multiplied by one common factor s, chosen on a grid in [0.8, 1.25] so that
the rounded total is closest to F_t (the relative distribution is kept up
to rounding), then single blocks move one step of `divisor` while that
brings the total closer; the sampled totals then stay within +-10% of F_t
(tests/modeling/test_resource_distribution.py checks 100 samples). Resampling convs, fusion and endpoints are not in F_i
(as in the paper), so a measured model's total moves a little more than F_i.

Plain Python and numpy: no gin, no I/O; official/resource_distribution.py is
the command-line tool.
"""

import math

import numpy as np

BETAS = (1, 5, 10, 15, 20)


def block_levels(block_specs, stem_levels=(1, 2)):
  """Levels of all blocks: the stem blocks, then each spec's level."""
  return list(stem_levels) + [int(spec[0]) for spec in block_specs]


def block_flops(widths, levels, image_size, repeats=1, expand_ratio=6,
                kernel_size=3):
  """Per-block multiply-adds of eq. 2 (without the c-independent terms).

  Args:
    widths: block widths c_i.
    levels: block levels (feature side = ceil(image_size / 2^level)).
    image_size: square input side in pixels.
    repeats: int or per-block repeats.
    expand_ratio, kernel_size: MBConv r and k.
  Returns:
    list of floats, F_i.
  """
  if isinstance(repeats, int):
    repeats = [repeats] * len(widths)
  if not len(widths) == len(levels) == len(repeats):
    raise ValueError(f"widths ({len(widths)}), levels ({len(levels)}) and "
                     f"repeats ({len(repeats)}) must have one entry per block.")
  flops = []
  for c, level, rep in zip(widths, levels, repeats):
    side = -(-int(image_size) // 2 ** level)
    flops.append(rep * side * side * (2.0 * expand_ratio * c * c +
                                      kernel_size ** 2 * expand_ratio * c))
  return flops


def distribute(widths, flops, betas, divisor=8):
  """New widths for given betas (eq. 3-4), rounded to multiples of divisor.

  Returns:
    (new_widths, alphas).
  """
  if len(betas) != len(widths):
    raise ValueError(f"{len(betas)} betas for {len(widths)} blocks.")
  target = float(sum(flops))
  weighted = float(sum(b * f for b, f in zip(betas, flops)))
  alphas = [target * b / weighted for b in betas]
  ideal = np.array([math.sqrt(a) * c for a, c in zip(alphas, widths)])
  levels_free = np.array([f / (c * c) for f, c in zip(flops, widths)])  # ~C_i

  def totals(candidates):
    # Summed left to right (cumsum), as Python's sum would, so ties and
    # near-ties between candidate roundings resolve the same on every run.
    return np.cumsum(levels_free * candidates * candidates, axis=-1)[..., -1]

  # Rounding alone can move the total by more than 10% (a level-1 block of
  # width 16 rounds by up to 25%); a common factor on the ideal widths,
  # searched on a grid, picks the rounding whose total is closest to F_t.
  scales = np.linspace(0.8, 1.25, 91)[:, None]
  grid = np.maximum(divisor, np.round(scales * ideal / divisor) * divisor)
  best = grid[int(np.argmin(np.abs(totals(grid) - target)))]
  # Then single blocks move by one divisor step while that brings the total
  # closer (the steps of a wide block are fine enough to land near F_t).
  # Moves are ordered by block, then by new width, so the first of equally
  # good moves is taken.
  steps = np.array([-divisor, divisor], dtype=float)
  eye = np.repeat(np.eye(len(widths)), 2, axis=0)
  while True:
    error = abs(float(totals(best)) - target)
    moves = best + eye * np.tile(steps, len(widths))[:, None]
    allowed = (moves >= divisor).all(axis=1)
    errors = np.where(allowed, np.abs(totals(moves) - target), np.inf)
    move = int(np.argmin(errors))
    if errors[move] >= error:
      return [int(c) for c in best], alphas
    best = moves[move]


def sample(widths, levels, image_size, repeats=1, num_samples=1, seed=None,
           betas=BETAS, divisor=8, expand_ratio=6, kernel_size=3):
  """Draws `num_samples` architectures with the FLOPs of `widths`.

  Returns:
    list of dicts: widths, betas, alphas, flops (analytic total),
    relative_flops (to the target).
  """
  rng = np.random.default_rng(seed)
  base = block_flops(widths, levels, image_size, repeats, expand_ratio,
                     kernel_size)
  target = sum(base)
  samples = []
  for _ in range(num_samples):
    chosen = [int(b) for b in rng.choice(betas, size=len(widths))]
    new_widths, alphas = distribute(widths, base, chosen, divisor)
    total = sum(block_flops(new_widths, levels, image_size, repeats,
                            expand_ratio, kernel_size))
    samples.append(dict(widths=new_widths, betas=chosen, alphas=alphas,
                        flops=total, relative_flops=total / target))
  return samples
