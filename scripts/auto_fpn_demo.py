r"""Auto-FPN in miniature: the searched neck against random necks of its space.

Auto-FPN (Xu et al., ICCV 2019) compares its gradient search with random
search over the same space, each sampled architecture fully trained "under
the same training setting" (Sec. 4.3, Table 8). This script makes that
comparison on the digits neck proxy (configs/search/auto_fpn_neck_digits.gin:
SP-NAS backbone, frozen in the search and in every training, 32 px, 12
epochs), through the same entry points a user runs:

1. The neck search, `python -m official.search --space=auto_fpn_neck
   --controller=darts` (official/search/darts.py), writes
   OUTPUT_DIR/search/best_auto_fpn_neck.gin.
2. The decoded neck trains from scratch (Sec. 4.2) with `python -m
   official.train` (the proxy, then that gin file) in OUTPUT_DIR/searched;
   its top-1 on the 360 digits validation scans is read from the
   eval_metrics.json the run writes.
3. --num_random architectures of the same space (sample_genotype: one
   operation of NECK_OPS per link, uniformly, every output node keeping an
   input that is not `none`, as a decoded genotype does) are written as gin
   (auto_fpn.search = False, auto_fpn.genotype = ..., the two bindings the
   search writes) to OUTPUT_DIR/random_K/auto_fpn_neck.gin and trained and
   evaluated identically in OUTPUT_DIR/random_K.
4. A table (top-1 and parameter counts of every network; mean and sample
   standard deviation, ddof=1, of the random ones) is printed and written to
   OUTPUT_DIR/auto_fpn_demo.json, with a bar chart, auto_fpn_demo.png.

  python scripts/auto_fpn_demo.py --output_dir=runs/auto_fpn_demo

The default run (search + 6 trainings of 12 epochs) took 17 minutes on a
2-core CPU shared with other jobs: 3.8 min of search, 1.4-3.1 min per
training (README.md, "Auto-FPN"). --quick trains 1 epoch everywhere (a
plumbing check: the figures mean nothing). Resumable: a search that has
written search_result.json and a training run that has written
eval_metrics.json are not redone; an interrupted search or training resumes
from its checkpoint. A rerun with other settings in the same OUTPUT_DIR is
refused (OUTPUT_DIR/demo_settings.json).

Every training run binds Trainer.deterministic_seed and
Trainer.frozen_modules = 'backbone' from the proxy (the same seed for every
architecture), so every network has the same backbone weights, never
trained, and the search's super-network has them too (its Trainer seeds
with the same deterministic_seed before building); the networks differ in
their neck architecture and in nothing else the proxy controls.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from modeling.decoders.auto_fpn import check_neck_genotype
from modeling.layers.auto_fpn_ops import NECK_OPS

PROXY = "configs/search/auto_fpn_neck_digits.gin"
# The search's backbone is frozen (darts.py's default freeze_backbone=true,
# Auto-FPN Sec. 4.1), as in every retraining (the proxy binds
# Trainer.frozen_modules). arch_lr: Sec. 4.1's Adam 0.003 moves a logit by at
# most about 0.003 per step (less on noisy gradients). Over the ~118k
# architecture steps of a 24-epoch COCO search (2/3 of 24 epochs of ~7.4k
# steps: 118k images at batch 16) that is ample; over the proxy's 184 it is
# at most 0.55, less than the ~1 that makes one operation's softmax weight
# stand out (measured at 0.003: peaks 0.14-0.22 against 0.125 uniform).
# Ten times it allows 5.5 in 184 steps.
DEFAULT_SEARCH_OPTIONS = "size=M,arch_lr=0.03"
METRIC = "top_1_accuracy"
SEARCH_GIN = "best_auto_fpn_neck.gin"
RANDOM_GIN = "auto_fpn_neck.gin"
SETTINGS_FILE = "demo_settings.json"
RESULT_FILE = "auto_fpn_demo.json"
PLOT_FILE = "auto_fpn_demo.png"
QUICK_EPOCHS = 1


def sample_genotype(rng, num_levels, num_layers):
  """A random architecture of the Auto-fusion space (Sec. 3.2).

  Each link takes one operation of NECK_OPS, uniformly; an output node whose
  links all drew `none` is drawn again (its links only), so every node keeps
  an input that is not `none`, as decode_neck guarantees for a searched
  genotype. The result is uniform over the genotypes a search can decode.

  Args:
    rng: numpy Generator.
    num_levels: fused levels n (the proxy: 3, levels 2..4).
    num_layers: fusion layers L (the proxy: 2).
  Returns:
    genotype[l][i][j], num_layers x n x n operation names
    (modeling/decoders/auto_fpn.py).
  Raises:
    ValueError: num_levels or num_layers below 1.
  """
  for name, value in (("num_levels", num_levels), ("num_layers", num_layers)):
    if int(value) != value or value < 1:
      raise ValueError(f"sample_genotype: {name} must be an integer >= 1, "
                       f"got {value!r}.")
  genotype = []
  for _ in range(num_layers):
    layer = []
    for _ in range(num_levels):
      node = ["none"] * num_levels
      while all(op == "none" for op in node):
        node = [NECK_OPS[k] for k in rng.integers(len(NECK_OPS),
                                                  size=num_levels)]
      layer.append(node)
    genotype.append(layer)
  return check_neck_genotype(genotype, num_levels, num_layers)


def random_genotype(seed, index, num_levels, num_layers):
  """The index-th random architecture of a demo seeded with `seed`.

  One generator per architecture (seeded by the pair), so architecture K
  is the same whatever --num_random is.
  """
  rng = np.random.default_rng([int(seed), int(index)])
  return sample_genotype(rng, num_levels, num_layers)


def genotype_gin_text(genotype, seed, index, gin_files):
  """A random architecture as the gin bindings the search writes for its own.

  The binding lines are those of official/search/darts.py's decoded file
  (`auto_fpn.search = False`, `auto_fpn.genotype = <JSON>`), loaded after
  the proxy in the same way.
  """
  proxy = " ".join(f"--gin_file={f}" for f in gin_files)
  return "\n".join([
      f"# Random auto_fpn_neck architecture {index} of scripts/auto_fpn_demo.py"
      f" (seed {seed}): one operation of NECK_OPS per link, uniformly, every"
      " output node keeping an input that is not none.",
      f"#   python -m official.train {proxy} --gin_file=THIS_FILE "
      "--model_dir=DIR",
      "auto_fpn.search = False",
      f"auto_fpn.genotype = {json.dumps(genotype)}",
  ]) + "\n"


def summarize(searched_top1, random_top1):
  """Mean and sample std (ddof=1) of the random runs, and the comparison.

  Args:
    searched_top1: float, the searched neck's top-1.
    random_top1: list of floats, at least one.
  Returns:
    dict random_mean, random_std (None for a single run), searched_minus_mean,
    random_beaten (how many random runs the searched one beats strictly),
    rank (1 = best of all 1 + len(random_top1) networks; ties share the
    better rank).
  Raises:
    ValueError: no random runs.
  """
  if not random_top1:
    raise ValueError("summarize: no random architectures to compare with.")
  values = np.asarray(random_top1, np.float64)
  return {
      "random_mean": float(values.mean()),
      "random_std": float(values.std(ddof=1)) if len(values) > 1 else None,
      "searched_minus_mean": float(searched_top1 - values.mean()),
      "random_beaten": int(np.sum(values < searched_top1)),
      "rank": int(1 + np.sum(values > searched_top1)),
  }


def _fmt(seconds):
  if seconds is None:
    return "unknown"
  seconds = int(round(seconds))
  return f"{seconds // 60}:{seconds % 60:02d}"


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path, value):
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _run(argv, log_path, echo=None):
  """Runs argv from the repository root, output appended to log_path.

  echo: a predicate on a stdout line; matching lines are printed too.
  Raises SystemExit naming the log on a non-zero exit.
  """
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
      log.write(line)
      if echo is not None and echo(line):
        print(f"  {line.rstrip()}", flush=True)
    code = proc.wait()
  if code != 0:
    sys.exit(f"auto_fpn_demo: `{' '.join(argv[1:4])} ...` failed (exit "
             f"{code}); see {log_path}.")


def _search_progress(line):
  """The search's own progress, decode and warning lines (not absl logs)."""
  return line.startswith(("step ", "Starting", "Resumed", "Decoded",
                          "WARNING", "Architecture in"))


def run_search(args, gin_params):
  """Step 1: the neck search through its CLI; returns search_result.json."""
  search_dir = os.path.join(args.output_dir, "search")
  result_path = os.path.join(search_dir, "search_result.json")
  if os.path.exists(result_path) and os.path.exists(
      os.path.join(search_dir, SEARCH_GIN)):
    print(f"[search] done before ({result_path}).", flush=True)
    return _read_json(result_path)
  os.makedirs(search_dir, exist_ok=True)
  argv = [sys.executable, "-m", "official.search", "--space=auto_fpn_neck",
          "--controller=darts", f"--search_dir={search_dir}",
          f"--gin_file={PROXY}", f"--seed={args.seed}"]
  if args.search_options:
    argv.append(f"--search_options={args.search_options}")
  argv += [f"--gin_param={p}" for p in gin_params]
  print(f"[search] {' '.join(argv[1:])}", flush=True)
  start = time.time()
  _run(argv, os.path.join(args.output_dir, "search.log"),
       echo=_search_progress)
  print(f"[search] finished in {_fmt(time.time() - start)}.", flush=True)
  return _read_json(result_path)


def train(model_dir, arch_gin, gin_params, log_path):
  """Steps 2-3: official.train from scratch; returns top-1 on validation."""
  metrics_path = os.path.join(model_dir, "eval_metrics.json")
  if not os.path.exists(metrics_path):
    os.makedirs(model_dir, exist_ok=True)
    argv = [sys.executable, "-m", "official.train", f"--gin_file={PROXY}",
            f"--gin_file={arch_gin}", f"--model_dir={model_dir}",
            "--mode=train_and_eval"]
    argv += [f"--gin_param={p}" for p in gin_params]
    _run(argv, log_path)
  metrics = _read_json(metrics_path)
  if METRIC not in metrics:
    sys.exit(f"auto_fpn_demo: {metrics_path} has no {METRIC!r} (keys "
             f"{sorted(metrics)}).")
  return float(metrics[METRIC])


def parameter_counts(arch_gin, gin_params):
  """(neck, whole classifier) parameters of the network a gin file builds.

  Built in this process from the proxy, the architecture's gin file and
  gin_params, as official.train builds it; batch norm statistics included
  (Keras count_params).
  """
  import keras
  from modeling.decoders.auto_fpn import AutoFusionNeck
  from official import registry
  from official.core import gin_config
  gin_config.parse_gin([os.path.join(REPO_ROOT, PROXY), arch_gin],
                       list(gin_params), skip_unknown=False)
  keras.backend.clear_session()
  model = registry.experiment().build_model()
  necks = [layer for layer in model.layers
           if isinstance(layer, AutoFusionNeck)]
  if len(necks) != 1:
    raise ValueError(f"{arch_gin}: the model holds {len(necks)} "
                     "AutoFusionNeck layers; expected one.")
  return int(necks[0].count_params()), int(model.count_params())


def write_plot(rows, summary, path):
  """Bar chart: top-1 of the searched and random necks, the random mean."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
  names = [r["name"] for r in rows]
  values = [r["top_1"] for r in rows]
  colors = ["tab:orange" if r["kind"] == "searched" else "tab:blue"
            for r in rows]
  ax.bar(names, values, color=colors)
  for x, (v, r) in enumerate(zip(values, rows)):
    ax.text(x, v, f"{v:.3f}\n{r['neck_params'] / 1000:.1f}k", ha="center",
            va="bottom", fontsize=7)
  ax.axhline(summary["random_mean"], color="tab:blue", linestyle="--",
             label=f"random mean {summary['random_mean']:.3f}")
  # The runs differ by a few validation images: an axis from 0 hides that.
  span = max(max(values) - min(values), 0.01)
  ax.set_ylim(max(0.0, min(values) - span), max(values) + span)
  ax.set_ylabel("top-1, digits validation (axis not from 0)", fontsize=8)
  ax.set_title("Auto-FPN neck: searched vs random (labels: top-1, neck params)",
               fontsize=9, pad=12)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)


def parse_args(argv=None):
  """The flags (module docstring); exits with a message on bad values."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_dir", required=True,
                      help="Where the search, the runs and the table go.")
  parser.add_argument("--seed", type=int, default=0,
                      help="Search seed and random-architecture seed.")
  parser.add_argument("--num_random", type=int, default=5,
                      help="Random architectures to train (>= 1).")
  parser.add_argument("--search_options", default=DEFAULT_SEARCH_OPTIONS,
                      help="key=value,... for the darts search "
                      "(official/search/darts.py DartsOptions).")
  parser.add_argument("--epochs", type=int, default=None,
                      help="Trainer.train_epochs of the search and every "
                      "training (default: the proxy's 12).")
  parser.add_argument("--quick", action="store_true",
                      help=f"{QUICK_EPOCHS} epoch everywhere: a plumbing "
                      "check whose figures mean nothing.")
  args = parser.parse_args(argv)
  if args.num_random < 1:
    parser.error(f"--num_random={args.num_random}: at least 1 random "
                 "architecture is needed for the comparison.")
  if args.epochs is not None and args.epochs < 1:
    parser.error(f"--epochs={args.epochs}: must be >= 1.")
  if args.quick and args.epochs is not None:
    parser.error(f"--quick sets {QUICK_EPOCHS} epoch; give --quick or "
                 "--epochs, not both.")
  for item in filter(None, args.search_options.split(",")):
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
      parser.error(f"--search_options: {item!r} is not key=value.")
  if args.quick:
    args.epochs = QUICK_EPOCHS
  return args


def _check_settings(args, settings):
  path = os.path.join(args.output_dir, SETTINGS_FILE)
  if os.path.exists(path):
    recorded = _read_json(path)
    changed = sorted(k for k in set(recorded) | set(settings)
                     if recorded.get(k) != settings.get(k))
    # More or fewer random architectures reuse the ones already trained.
    changed = [k for k in changed if k != "num_random"]
    if changed:
      sys.exit(f"auto_fpn_demo: --output_dir={args.output_dir} holds a demo "
               f"with other settings ({', '.join(changed)}: recorded "
               f"{ {k: recorded.get(k) for k in changed} }); use another "
               "--output_dir or the same flags.")
  _write_json(path, settings)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.output_dir, exist_ok=True)
  args.output_dir = os.path.abspath(args.output_dir)
  gin_params = ([f"Trainer.train_epochs = {args.epochs}"]
                if args.epochs is not None else [])
  settings = {"seed": args.seed, "num_random": args.num_random,
              "search_options": args.search_options,
              "gin_files": [PROXY], "gin_params": gin_params}
  _check_settings(args, settings)
  start = time.time()

  result = run_search(args, gin_params)
  genotype = result["genotype"]
  num_layers, num_levels = len(genotype), len(genotype[0])
  search_gin = os.path.join(args.output_dir, "search", SEARCH_GIN)

  runs = [{"name": "searched", "kind": "searched", "genotype": genotype,
           "gin": search_gin, "model_dir": os.path.join(args.output_dir,
                                                        "searched")}]
  for k in range(args.num_random):
    model_dir = os.path.join(args.output_dir, f"random_{k}")
    os.makedirs(model_dir, exist_ok=True)
    random_arch = random_genotype(args.seed, k, num_levels, num_layers)
    gin_path = os.path.join(model_dir, RANDOM_GIN)
    text = genotype_gin_text(random_arch, args.seed, k, [PROXY])
    if os.path.exists(gin_path):
      with open(gin_path, encoding="utf-8") as f:
        if f.read() != text:
          sys.exit(f"auto_fpn_demo: {gin_path} holds another architecture "
                   f"than random architecture {k} of seed {args.seed}; use "
                   "another --output_dir.")
    else:
      with open(gin_path, "w", encoding="utf-8") as f:
        f.write(text)
    runs.append({"name": f"random_{k}", "kind": "random",
                 "genotype": random_arch, "gin": gin_path,
                 "model_dir": model_dir})

  # Training times of runs finished by an earlier invocation, kept in the
  # report it wrote.
  earlier = {}
  if os.path.exists(os.path.join(args.output_dir, RESULT_FILE)):
    earlier = {r["name"]: r.get("train_seconds") for r in _read_json(
        os.path.join(args.output_dir, RESULT_FILE))["runs"]}
  walls = []
  for n, run in enumerate(runs):
    run["neck_params"], run["model_params"] = parameter_counts(run["gin"],
                                                               gin_params)
    done = os.path.exists(os.path.join(run["model_dir"], "eval_metrics.json"))
    left = sum(not os.path.exists(os.path.join(r["model_dir"],
                                               "eval_metrics.json"))
               for r in runs[n:])
    eta = (sum(walls) / len(walls) * left) if walls else None
    print(f"[{n + 1}/{len(runs)}] {run['name']}: neck {run['neck_params']} "
          f"parameters, classifier {run['model_params']}; "
          + ("done before" if done else
             f"training ... (ETA for the {left} run(s) left: {_fmt(eta)})"),
          flush=True)
    t0 = time.time()
    run["top_1"] = train(run["model_dir"], run["gin"], gin_params,
                         os.path.join(run["model_dir"], "train.log"))
    if done:
      run["train_seconds"] = earlier.get(run["name"])
    else:
      walls.append(time.time() - t0)
      run["train_seconds"] = round(walls[-1], 1)
    print(f"[{n + 1}/{len(runs)}] {run['name']}: top-1 {run['top_1']:.4f}"
          + ("" if done else f" ({_fmt(walls[-1])})"), flush=True)
  if runs[0]["neck_params"] != result["decoded_parameters"]:
    print(f"WARNING: the searched neck built with {runs[0]['neck_params']} "
          f"parameters; search_result.json says "
          f"{result['decoded_parameters']}.", flush=True)

  summary = summarize(runs[0]["top_1"], [r["top_1"] for r in runs[1:]])
  print(f"\n{'network':<10} {'top-1':>7} {'neck params':>12} "
        f"{'model params':>13}  skip+none")
  for run in runs:
    flat = [op for layer in run["genotype"] for node in layer for op in node]
    free = sum(op in ("skip", "none") for op in flat) / len(flat)
    run["skip_none_share"] = round(free, 4)
    print(f"{run['name']:<10} {run['top_1']:>7.4f} {run['neck_params']:>12d} "
          f"{run['model_params']:>13d}  {free:.2f}")
  std = summary["random_std"]
  print(f"random mean {summary['random_mean']:.4f}, std "
        f"{'n/a' if std is None else f'{std:.4f}'} (ddof=1, "
        f"{args.num_random} runs); searched - mean "
        f"{summary['searched_minus_mean']:+.4f}; searched beats "
        f"{summary['random_beaten']} of {args.num_random}, rank "
        f"{summary['rank']} of {len(runs)}.")

  report = {
      "date": datetime.date.today().isoformat(),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
      "settings": settings, "metric": f"{METRIC} on the digits validation "
      "split (360 scans)",
      "search": {k: result[k] for k in ("resource_lambda", "resource_cost",
                                        "skip_none_share", "steps", "epochs",
                                        "decoded_parameters")},
      "runs": [{k: r.get(k) for k in ("name", "kind", "top_1", "neck_params",
                                      "model_params", "skip_none_share",
                                      "genotype", "train_seconds")}
               for r in runs],
      "summary": summary,
      "wall_seconds_this_invocation": round(time.time() - start, 1),
  }
  _write_json(os.path.join(args.output_dir, RESULT_FILE), report)
  plot = os.path.join(args.output_dir, PLOT_FILE)
  write_plot(runs, summary, plot)
  print(f"Wrote {os.path.join(args.output_dir, RESULT_FILE)} and {plot} "
        f"({_fmt(time.time() - start)} in this invocation).", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
