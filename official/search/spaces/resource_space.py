"""Eff-SpineNet resource-distribution space (Eff-SpineNet paper §3.3, §5.1.1).

One decision per block of SP-EfficientNet-B0's 18 blocks (Table 1 order,
stem blocks first): beta_i in {1, 5, 10, 15, 20} (option j is BETAS[j]).
The widths follow eq. 2-4 at equal analytic FLOPs, rounded to multiples of 8,
by modeling/backbones/resource_distribution.py (the same code as the
`official.resource_distribution` sampling tool). The FLOPs are those of the
D0-scale proxy (512 px input, one repeat per block); the distribution does not
depend on the input size beyond rounding of odd feature sizes.

An architecture is a dict: "widths" (the 18 block widths before the feature
multiplier, what `eff_spinenet.block_filters` takes, so the Table 2 scaling
trains M0-M2 and D0-D2 from them), "betas" (the 18 betas; several beta lists
give the same widths, e.g. all equal betas give SP-EfficientNet-B0's), and
"relative_flops" (the analytic eq. 2 total over the target F_t).

Samples outside +-10% of F_t (§5.1.5: the paper's samples all fall within
it) are reported, not silently trained: `infeasibility` returns the reason,
the trial engine completes such a trial as infeasible with it (controllers
then see reward None), and `out_of_budget` lists them for a set of samples.
"""

import math

import numpy as np

from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones import resource_distribution as rd
from modeling.backbones.spinenet_mbconv import MBCONV_BLOCK_SPECS
from official.search import base

FLOPS_TOLERANCE = 0.10
PROXY_IMAGE_SIZE = 512


class ResourceSpace(base.SearchSpace):
  """Betas of eq. 4 for the 18 Eff-SpineNet blocks.

  Args:
    base_widths: the 18 widths the betas redistribute (SP-EfficientNet-B0,
      Table 1).
    image_size: input side for the analytic FLOPs of eq. 2, pixels.
    divisor: widths are multiples of it.
    tolerance: relative FLOPs deviation beyond which a sample is infeasible.
  """

  name = "resource"

  def __init__(self, base_widths=eff_lib.SP_EFFICIENTNET_B0_FILTERS,
               image_size=PROXY_IMAGE_SIZE, divisor=8,
               tolerance=FLOPS_TOLERANCE):
    self.base_widths = [int(w) for w in base_widths]
    if len(self.base_widths) != eff_lib.NUM_BLOCKS:
      raise ValueError(f"base_widths has {len(self.base_widths)} entries; "
                       f"Eff-SpineNet has {eff_lib.NUM_BLOCKS} blocks.")
    self.levels = rd.block_levels(MBCONV_BLOCK_SPECS)
    self.image_size = int(image_size)
    self.divisor = int(divisor)
    self.tolerance = float(tolerance)
    self._flops = rd.block_flops(self.base_widths, self.levels,
                                 self.image_size)
    self._target = float(sum(self._flops))
    self._cache = {}

  def num_decisions(self):
    return len(self.base_widths)

  def num_options(self, step):
    return len(rd.BETAS)

  def valid_options(self, prefix):
    if not 0 <= len(prefix) < len(self.base_widths):
      raise ValueError(f"resource: no decision {len(prefix)}; the space has "
                       f"{len(self.base_widths)}.")
    return list(range(len(rd.BETAS)))

  def valid_mask(self, prefixes):
    return np.ones((np.shape(prefixes)[0], len(rd.BETAS)), dtype=bool)

  def decode(self, decisions):
    decisions = [int(d) for d in decisions]
    if len(decisions) != len(self.base_widths):
      raise ValueError(f"resource: {len(decisions)} decisions; the space has "
                       f"{len(self.base_widths)} (one beta per block).")
    for step, d in enumerate(decisions):
      if not 0 <= d < len(rd.BETAS):
        raise ValueError(f"resource: decision {step} (beta of block "
                         f"{step + 1}) is {d}; valid options are 0..."
                         f"{len(rd.BETAS) - 1} (betas {rd.BETAS}).")
    key = tuple(decisions)
    if key not in self._cache:
      betas = [rd.BETAS[d] for d in decisions]
      widths, _ = rd.distribute(self.base_widths, self._flops, betas,
                                self.divisor)
      total = sum(rd.block_flops(widths, self.levels, self.image_size))
      # Searches revisit good samples; the cache bounds nothing else.
      if len(self._cache) > 100000:
        self._cache.clear()
      self._cache[key] = dict(widths=widths, betas=betas,
                              relative_flops=total / self._target)
    arch = self._cache[key]
    return dict(widths=list(arch["widths"]), betas=list(arch["betas"]),
                relative_flops=arch["relative_flops"])

  def encode(self, architecture):
    if not isinstance(architecture, dict) or "betas" not in architecture:
      raise ValueError("resource: an architecture is a dict with 'betas' "
                       f"(and 'widths'); got {architecture!r}.")
    betas = list(architecture["betas"])
    if len(betas) != len(self.base_widths):
      raise ValueError(f"resource: {len(betas)} betas; the space has "
                       f"{len(self.base_widths)} blocks.")
    decisions = []
    for i, b in enumerate(betas):
      if b not in rd.BETAS:
        raise ValueError(f"resource: beta of block {i + 1} is {b!r}; "
                         f"expected one of {rd.BETAS}.")
      decisions.append(rd.BETAS.index(b))
    decoded = self.decode(decisions)
    if "widths" in architecture and list(architecture["widths"]) != (
        decoded["widths"]):
      raise ValueError(
          f"resource: widths {list(architecture['widths'])} are not what "
          f"eq. 2-4 give for betas {betas}: {decoded['widths']}.")
    return decisions

  def gin_bindings(self, architecture):
    widths = [int(w) for w in architecture["widths"]]
    if len(widths) != len(self.base_widths):
      raise ValueError(f"resource: {len(widths)} widths; Eff-SpineNet has "
                       f"{len(self.base_widths)} blocks.")
    return [f"eff_spinenet.block_filters = {widths}"]

  def log10_size(self):
    return len(self.base_widths) * math.log10(len(rd.BETAS))

  def known_architectures(self):
    # Equal betas keep every width (alpha_i = 1 in eq. 4).
    return {"sp_efficientnet_b0": self.decode([0] * len(self.base_widths))}

  def infeasibility(self, architecture):
    deviation = architecture["relative_flops"] - 1.0
    if abs(deviation) > self.tolerance:
      return (f"analytic FLOPs (eq. 2) x{architecture['relative_flops']:.3f} "
              f"of the target, outside +-{self.tolerance:.0%}")
    return None

  def validate(self, architecture):
    """Raises ValueError unless the widths are 18 positive multiples of the
    divisor that eq. 2-4 give for the betas."""
    widths = list(architecture["widths"])
    bad = [i for i, w in enumerate(widths)
           if isinstance(w, bool) or int(w) != w or w < self.divisor or
           w % self.divisor]
    if len(widths) != len(self.base_widths) or bad:
      raise ValueError(f"resource: widths {widths} must be "
                       f"{len(self.base_widths)} multiples of "
                       f"{self.divisor} (bad blocks {[i + 1 for i in bad]}).")
    self.encode(architecture)


def out_of_budget(space, architectures):
  """Samples outside the FLOPs tolerance.

  Args:
    space: a ResourceSpace.
    architectures: decoded architectures.
  Returns:
    list of (index, relative_flops) of those whose analytic FLOPs fall
    outside +-space.tolerance of the target.
  """
  return [(i, a["relative_flops"]) for i, a in enumerate(architectures)
          if space.infeasibility(a) is not None]
