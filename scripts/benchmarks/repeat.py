r"""Runs benchmark.py several times and gives the spread of every ratio.

  python scripts/benchmarks/repeat.py --runs=3 -- \
    --gin_file=configs/experiments/quickstart.gin --batch_size=16 \
    --mode=forward,train --peer

Everything after `--` is passed to benchmark.py unchanged. Each run is a
fresh process (so its peak-memory figures are its own), and with --peer
each run times ours and then Model Garden, so the two sides alternate:
ours, peer, ours, peer, ... On a machine whose speed drifts for minutes at a
time (a shared VM; scripts/benchmarks/README.md shows how far), one run's
ratio says little; the median of several alternated runs says more.

Prints one JSON object on stdout: {"runs": [each run's benchmark.py JSON],
"summary": {figure: {"median", "min", "max", "values"}}}. The figures are
every number of "ratio" (with --peer), and each side's per-mode
step_time_ms_median (and serve latency_ms_p50) as "ours.<mode>.<key>" and
"peer.<mode>.<key>". Progress goes to stderr. The exit status is 1 if a run
failed (its JSON is kept; the summary uses the runs that reported).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

BENCHMARK = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "benchmark.py")
# Per-side figures summarised besides the ratios: the steadier step time
# (median) of each timed mode and the serving latency.
SIDE_FIGURES = (("forward", "step_time_ms_median"),
                ("train", "step_time_ms_median"),
                ("input", "step_time_ms_median"),
                ("serve", "latency_ms_p50"))


def figures(report):
  """The numbers of one benchmark.py report that repeat.py summarises.

  Args:
    report: benchmark.py's JSON, with or without --peer ({"ours", "peer",
      "ratio"} or ours alone).

  Returns:
    dict figure name -> number: "ratio.<key>" for every ratio, and
    "<side>.<mode>.<key>" for SIDE_FIGURES each side reports.
  """
  sides = ({"ours": report["ours"], "peer": report.get("peer") or {}}
           if "ours" in report else {"ours": report})
  out = {}
  for key, value in (report.get("ratio") or {}).items():
    if isinstance(value, (int, float)):
      out[f"ratio.{key}"] = value
  for side, result in sides.items():
    for mode, key in SIDE_FIGURES:
      value = (result.get(mode) or {}).get(key)
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        out[f"{side}.{mode}.{key}"] = value
  return out


def summarize(reports):
  """{figure: {"median", "min", "max", "values"}} over `reports`.

  A figure missing from some runs (a failed mode) is summarised over the
  runs that have it; "values" lists them in run order.
  """
  values = {}
  for report in reports:
    for name, value in figures(report).items():
      values.setdefault(name, []).append(value)
  return {name: {"median": round(statistics.median(v), 4),
                 "min": min(v), "max": max(v), "values": v}
          for name, v in sorted(values.items())}


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      usage="repeat.py [--runs=N] -- BENCHMARK_FLAGS...")
  parser.add_argument("--runs", type=int, default=3,
                      help="benchmark.py runs, one after another (>= 1)")
  parser.add_argument("benchmark_flags", nargs=argparse.REMAINDER,
                      help="after --: benchmark.py's flags")
  args = parser.parse_args(argv)
  flags = args.benchmark_flags
  if flags and flags[0] == "--":
    flags = flags[1:]
  if args.runs < 1:
    parser.error(f"--runs must be >= 1, got {args.runs}")
  if not any(f.startswith("--gin_file") for f in flags):
    parser.error("pass benchmark.py's flags after --, at least "
                 "--gin_file=EXPERIMENT.gin")
  reports, failed = [], False
  for run in range(args.runs):
    print(f"[repeat] run {run + 1}/{args.runs}: benchmark.py "
          f"{' '.join(flags)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, BENCHMARK, *flags],
                          stdout=subprocess.PIPE, stderr=sys.stderr,
                          text=True, check=False)
    try:
      report = json.loads(done.stdout)
    except ValueError:
      print(f"[repeat] run {run + 1} printed no JSON (exit status "
            f"{done.returncode}); its log is above.", file=sys.stderr)
      failed = True
      continue
    failed = failed or done.returncode != 0
    reports.append(report)
  print(json.dumps({"runs": reports, "summary": summarize(reports)},
                   indent=1))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
