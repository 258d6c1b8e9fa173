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

Within a run ours always goes first, so a drift inside one run favours the
same side each time; more, shorter runs even that out.

Prints one JSON object on stdout: {"runs": [each run's benchmark.py JSON],
"summary": {figure: {"median", "min", "max", "values"}}}. The figures are
every number of "ratio" (with --peer), each side's per-mode
step_time_ms_median (and serve latency_ms_p50) as "ours.<mode>.<key>" and
"peer.<mode>.<key>", and with --op_profile each side's op-time shares as
"<side>.<mode>.op_profile.share.<group>". "values" has one entry per run,
in run order, null where that run lacks the figure (a failed mode); the
median, min and max are over the others. Progress goes to stderr.

The exit status is 1 if a run failed or its peer reported an error (the
JSON of every run is kept). A run that prints no JSON at all (a flag
benchmark.py rejects, a missing gin file) or whose peer failed (no peer
environment, a timeout) stops the repetition: the runs left would fail
the same way or have no ratios. Ctrl-C prints what the finished runs gave.
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
  def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  out = {}
  for key, value in (report.get("ratio") or {}).items():
    if number(value):
      out[f"ratio.{key}"] = value
  for side, result in sides.items():
    for mode, key in SIDE_FIGURES:
      value = (result.get(mode) or {}).get(key)
      if number(value):
        out[f"{side}.{mode}.{key}"] = value
    for mode in ("forward", "train"):
      profile = (result.get(mode) or {}).get("op_profile") or {}
      for group, share in (profile.get("share") or {}).items():
        if number(share):
          out[f"{side}.{mode}.op_profile.share.{group}"] = share
  return out


def summarize(reports):
  """{figure: {"median", "min", "max", "values"}} over `reports`.

  "values" has one entry per report, in order, None where a report lacks
  the figure (a failed mode); the median, min and max are over the rest.
  """
  per_report = [figures(report) for report in reports]
  names = sorted(set().union(*per_report)) if per_report else []
  summary = {}
  for name in names:
    values = [f.get(name) for f in per_report]
    present = [v for v in values if v is not None]
    summary[name] = {"median": round(statistics.median(present), 4),
                     "min": min(present), "max": max(present),
                     "values": values}
  return summary


def peer_error(report):
  """The peer's error message in a --peer report, else None."""
  peer = report.get("peer") if isinstance(report, dict) else None
  return peer.get("error") if isinstance(peer, dict) else None


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      usage="repeat.py [--runs=N] -- BENCHMARK_FLAGS...")
  parser.add_argument("--runs", type=int, default=3,
                      help="benchmark.py runs, one after another (>= 1)")
  parser.add_argument("benchmark_flags", nargs=argparse.REMAINDER,
                      help="after --: benchmark.py's flags")
  args, unknown = parser.parse_known_args(argv)
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}; "
                 f"benchmark.py's flags go after --")
  flags = args.benchmark_flags
  if flags and flags[0] == "--":
    flags = flags[1:]
  if args.runs < 1:
    parser.error(f"--runs must be >= 1, got {args.runs}")
  if not any(f.startswith("--gin_file") for f in flags):
    parser.error("pass benchmark.py's flags after --, at least "
                 "--gin_file=EXPERIMENT.gin")
  reports, failed = [], False
  try:
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
              f"{done.returncode}; its log is above): stopping, a rerun "
              f"would fail the same way.", file=sys.stderr)
        failed = True
        break
      reports.append(report)
      failed = failed or done.returncode != 0
      error = peer_error(report)
      if error:
        print(f"[repeat] run {run + 1}: the peer failed ({error}): "
              f"stopping, the runs left would have no ratios.",
              file=sys.stderr)
        failed = True
        break
  except KeyboardInterrupt:
    print(f"[repeat] interrupted after {len(reports)} finished run(s).",
          file=sys.stderr)
    failed = True
  print(json.dumps({"runs": reports, "summary": summarize(reports)},
                   indent=1))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
