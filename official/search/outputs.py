"""What a search writes into its directory, always from the study database.

- trials.jsonl: one JSON object per finished trial, in trial order: trial_id,
  status ("completed" or "infeasible"), reason (infeasible only), reward,
  metric, decisions, gin_bindings, seed_name (seeded trials), wall_seconds,
  attempts, worker, space, controller.
- best_block_specs.gin (SpineNet spaces), best_block_filters.gin (the
  resource space) or best_spnet.gin (SP-NAS): the best completed trial's gin
  bindings, loadable after the space's backbone file exactly like
  configs/backbones/ablations/*.gin (SP-NAS: after the detection config).
- rewards.png: reward against trial number, per controller.

Every file is rewritten whole through a temp file and a rename, from the
study the service holds, so a kill at any moment leaves either the previous
or the new version and a restarted search rewrites them consistently.
"""

import json
import os

from official.search import engine

TRIALS_FILE = "trials.jsonl"
PLOT_FILE = "rewards.png"


def best_gin_name(space_name):
  """The best-architecture file name for a space (see module docstring)."""
  if space_name.startswith("resource"):
    return "best_block_filters.gin"
  if space_name.startswith("sp_nas"):
    return "best_spnet.gin"
  return "best_block_specs.gin"


def trial_records(trials, settings):
  """JSON records (list of dict) of the finished trials, by trial id."""
  from vizier.service import pyvizier as vz  # pylint: disable=g-import-not-at-top
  records = []
  for trial in sorted(trials, key=lambda t: t.id):
    if trial.status != vz.TrialStatus.COMPLETED:
      continue
    info = engine.trial_info(trial)
    reward = engine.trial_reward(trial)
    infeasible = trial.infeasible or reward is None
    record = {
        "trial_id": trial.id,
        "status": "infeasible" if infeasible else "completed",
        "reward": None if infeasible else reward,
        "metric": info.get("metric"),
        "decisions": info.get("decisions"),
        "gin_bindings": info.get("gin_bindings"),
        "wall_seconds": info.get("wall_seconds"),
        "attempts": info.get("attempts"),
        "worker": info.get("worker", trial.assigned_worker),
        "space": settings["space"],
        "controller": settings["controller"],
    }
    if infeasible:
      record["reason"] = trial.infeasibility_reason or "no finite reward"
    if "seed_name" in info:
      record["seed_name"] = info["seed_name"]
    run = info.get("run") or {}
    if run:
      record["run"] = run
      record["architecture"] = info.get("architecture")
    if run.get("auxiliary"):
      record["auxiliary"] = True
    records.append(record)
  return records


def best_record(records):
  """The completed candidate with the highest reward (auxiliary trials, e.g.
  SP-NAS's classification pre-training, score something else: not ranked)."""
  completed = [r for r in records
               if r["status"] == "completed" and not r.get("auxiliary")]
  # Ties go to the earlier trial.
  return max(completed, key=lambda r: (r["reward"], -r["trial_id"]),
             default=None)


def best_gin_text(record, settings):
  """The best architecture as a gin file (str)."""
  gin_files = " ".join(f"--gin_file={f}" for f in settings["gin_files"])
  lines = [
      f"# Best architecture of a '{settings['space']}' search (controller "
      f"'{settings['controller']}', seed {settings['seed']}): trial "
      f"{record['trial_id']}, {record['metric']} = {record['reward']:.4f} on "
      "the search's held-out split.",
      "# Written by python -m official.search from its trials.jsonl. Load it "
      + ("after the detection config and configs/backbones/spnet_fpn.gin; the "
         if settings["space"].startswith("sp_nas") else
         "after the backbone file, like configs/backbones/ablations/*.gin; "
         "the ") + "search proxy retrains it with",
      f"#   python -m official.train {gin_files} "
      "--gin_file=THIS_FILE --model_dir=DIR",
  ]
  if record.get("seed_name"):
    lines.append(f"# (a seeded trial: the known architecture "
                 f"'{record['seed_name']}')")
  lines += list(record["gin_bindings"])
  return "\n".join(lines) + "\n"


def write_plot(records, path, title):
  """Reward against trial number, one series per controller (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  auxiliary = [r for r in records if r.get("auxiliary")]
  for i, r in enumerate(auxiliary):
    ax.axvline(r["trial_id"], color="gray", linestyle=":", linewidth=1,
               label=("pre-training / reignition (other metric)" if i == 0
                      else None))
  for controller in sorted({r["controller"] for r in records}):
    mine = [r for r in records
            if r["controller"] == controller and not r.get("auxiliary")]
    done = [r for r in mine if r["status"] == "completed"]
    ax.plot([r["trial_id"] for r in done], [r["reward"] for r in done], "o",
            label=f"{controller} ({len(done)} trials)")
    best, xs, ys = float("-inf"), [], []
    for r in done:
      best = max(best, r["reward"])
      xs.append(r["trial_id"])
      ys.append(best)
    ax.step(xs, ys, where="post", label=f"{controller}: best so far")
    failed = [r["trial_id"] for r in mine if r["status"] == "infeasible"]
    if failed:
      low = min([r["reward"] for r in done], default=0.0)
      ax.plot(failed, [low] * len(failed), "x", color="red",
              label=f"infeasible ({len(failed)})")
    seeds = [r for r in done if r.get("seed_name")]
    for r in seeds:
      ax.annotate(r["seed_name"], (r["trial_id"], r["reward"]), fontsize=7)
  # Phases of a search whose trials say theirs (SP-NAS: serial, parallel).
  phase_starts = {}
  for r in records:
    role = (r.get("architecture") or {}).get("role")
    if role in ("parallel_base", "parallel"):
      phase_starts.setdefault("parallel phase", r["trial_id"])
  for name, trial_id in phase_starts.items():
    ax.axvline(trial_id - 0.5, color="tab:green", linestyle="--",
               linewidth=1, label=name)
  ax.set_xlabel("trial number")
  ax.set_ylabel("reward")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)


def write_outputs(search_dir, trials, settings):
  """Writes trials.jsonl, the best gin and the plot; returns the records."""
  records = trial_records(trials, settings)
  engine.write_text_atomic(
      os.path.join(search_dir, TRIALS_FILE),
      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
  best = best_record(records)
  if best is not None:
    engine.write_text_atomic(
        os.path.join(search_dir, best_gin_name(settings["space"])),
        best_gin_text(best, settings))
  if records:
    write_plot(records, os.path.join(search_dir, PLOT_FILE),
               f"{settings['space']} search")
  return records
