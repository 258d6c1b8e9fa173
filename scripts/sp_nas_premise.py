r"""SP-NAS's premise in miniature: inherited weights beat a fresh start.

SP-NAS (§3.1, Fig. 4a) trains each candidate for a short "fast training
scheme" from the weights of the network it was morphed from, instead of from
scratch, and relies on that to rank candidates cheaply. This script checks
the premise on the built-in digits through the same spnet backbone and the
same trainer the search uses:

1. A parent (ResNet-18 in SP-NAS notation, BB(11,d1,d1,d1)) trains
   --parent_epochs on configs/search/sp_nas_pretrain_digits.gin.
2. For each seed, the search's own proposal function draws a candidate (3
   random modifications: expand, swap, add a stage; SP-NAS §4.1), which
   trains --epochs twice with that seed: once inheriting the parent's
   weights (Trainer.inherit_weights_from, what a search trial does), once
   from scratch.
3. It prints top-1 of both per seed and exits 0 when the inheriting run
   wins on at least --min_wins seeds.

  python scripts/sp_nas_premise.py --work_dir=/tmp/sp_nas_premise

Each run is `python -m official.train` in its own process (about 30-60 s
each on a 2-core CPU; 11 runs).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from modeling.backbones import spnet_spec
from official.search.spaces import sp_nas_space

PROXY = "configs/search/sp_nas_pretrain_digits.gin"


def train(model_dir, bindings, log):
  """Runs official.train; returns top-1 from its eval_metrics.json."""
  argv = [sys.executable, "-m", "official.train", f"--gin_file={PROXY}",
          f"--model_dir={model_dir}", "--mode=train_and_eval"]
  argv += [f"--gin_param={b}" for b in bindings]
  with open(log, "w", encoding="utf-8") as f:
    result = subprocess.run(argv, cwd=REPO_ROOT, stdout=f,
                            stderr=subprocess.STDOUT, check=False)
  if result.returncode != 0:
    sys.exit(f"sp_nas_premise: a run failed (exit {result.returncode}); see "
             f"{log}.")
  with open(os.path.join(model_dir, "eval_metrics.json"),
            encoding="utf-8") as f:
    return float(json.load(f)["top_1_accuracy"])


def architecture_bindings(spec):
  """The gin bindings a search trial of this network gets."""
  return sp_nas_space.SPNASSpace().gin_bindings(
      {"role": "reignite", "serial": spec.code,
       "block_ids": list(spec.block_ids), "parallel": None})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work_dir", required=True)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--parent_epochs", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--min_wins", type=int, default=4)
  parser.add_argument("--start", default="resnet18",
                      choices=sorted(spnet_spec.KNOWN_SERIAL))
  args = parser.parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  start = time.time()

  parent = spnet_spec.parse_serial(spnet_spec.KNOWN_SERIAL[args.start])
  parent_dir = os.path.join(args.work_dir, "parent")
  if os.path.exists(os.path.join(parent_dir, "inheritable_weights.npz")):
    with open(os.path.join(parent_dir, "eval_metrics.json"),
              encoding="utf-8") as f:
      parent_top1 = float(json.load(f)["top_1_accuracy"])
  else:
    parent_top1 = train(parent_dir, architecture_bindings(parent) + [
        f"Trainer.train_epochs = {args.parent_epochs}",
        "Trainer.save_inheritable_weights = True"],
                        os.path.join(args.work_dir, "parent.log"))
  print(f"parent {parent.code}: top-1 {parent_top1:.3f} after "
        f"{args.parent_epochs} epochs", flush=True)

  wins = 0
  rows = []
  for seed in range(args.seeds):
    rng = np.random.Generator(np.random.PCG64(seed))
    child, changes = spnet_spec.propose(parent, rng, num_modifications=3)
    common = architecture_bindings(child) + [
        f"Trainer.train_epochs = {args.epochs}",
        f"Trainer.deterministic_seed = {seed}"]
    inherited = train(
        os.path.join(args.work_dir, f"seed{seed}_inherit"),
        common + [f"Trainer.inherit_weights_from = {[parent_dir]!r}"],
        os.path.join(args.work_dir, f"seed{seed}_inherit.log"))
    scratch = train(os.path.join(args.work_dir, f"seed{seed}_scratch"),
                    common, os.path.join(args.work_dir,
                                         f"seed{seed}_scratch.log"))
    wins += inherited > scratch
    rows.append((seed, child.code, "; ".join(changes), inherited, scratch))
    print(f"seed {seed}: {child.code} ({'; '.join(changes)}): inherited "
          f"{inherited:.3f}, from scratch {scratch:.3f}", flush=True)

  print(f"\nInherited weights won on {wins} of {args.seeds} seeds after "
        f"{args.epochs} epoch(s) ({time.time() - start:.0f} s).", flush=True)
  return 0 if wins >= args.min_wins else 1


if __name__ == "__main__":
  sys.exit(main())
