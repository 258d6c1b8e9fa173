"""Runs one search trial: the real training entry point as a subprocess.

A trial is

  python -m official.train --gin_file=PROXY... --gin_param=<proxy params> \
    --gin_param=<candidate bindings> --model_dir=SEARCH_DIR/trials/<id> \
    --mode=train_and_eval

run in its own process, so trials share no gin, Keras or TensorFlow state.
Its output streams to SEARCH_DIR/trials/<id>/log.txt. The reward is read from
what the run wrote: the `metric` entry of model_dir/eval_metrics.json (the
trainer writes it after each evaluation, official/core/trainer.py; keys are
the evaluator's: "AP" for detection, "top_1_accuracy" for classification).

Kills: the trainer dies with its worker (PR_SET_PDEATHSIG on Linux), and a
trial started again in the same model_dir resumes from its last checkpoint
(the trainer restores automatically). Once a trial has finished, its result
is kept in result.json, so a worker killed between the end of training and
reporting to the service reports it without training again.
"""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

from official.search import engine

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log.txt"
PID_FILE = "trainer.pid"
# Metrics tried in order when the study's metric is "auto".
AUTO_METRICS = ("AP", "top_1_accuracy")


@dataclasses.dataclass
class TrialResult:
  """What a finished trial reports.

  status: "completed" or "infeasible".
  reward: float (completed) or None (infeasible).
  reason: why the trial is infeasible, else None.
  metrics: dict of everything eval_metrics.json held (may be empty).
  wall_seconds: float, training wall time summed over the trial's attempts.
  attempts: int, how many times the trainer was started for this trial.
  metric: str, the eval_metrics.json key the reward came from.
  """
  status: str
  reward: object
  reason: object
  metrics: dict
  wall_seconds: float
  attempts: int
  metric: object = None


def trainer_command(trainer, gin_files, gin_params, candidate_bindings,
                    model_dir, mode="train_and_eval"):
  """The argv of a trial (list of str).

  trainer: a module run with `python -m` (default official.train) or the
    path of a .py script taking the same flags (tests use a tiny one).
  """
  if trainer.endswith(".py"):
    argv = [sys.executable, trainer]
  else:
    argv = [sys.executable, "-m", trainer]
  argv += [f"--gin_file={resolve_gin_file(f)}" for f in gin_files]
  argv += [f"--gin_param={p}" for p in list(gin_params) +
           list(candidate_bindings)]
  argv += [f"--model_dir={model_dir}", f"--mode={mode}"]
  return argv


def resolve_gin_file(path):
  """`path` as given when it exists, else relative to the repository root
  (workers on other hosts run from their own checkout)."""
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(REPO_ROOT, path)


def read_reward(model_dir, metric):
  """(reward, key, metrics) from model_dir/eval_metrics.json.

  metric: the key to read, or "auto" (the first of AUTO_METRICS present).

  Raises:
    ValueError: file missing, unreadable or without the metric (names the
      file, the key and the keys it has).
  """
  path = os.path.join(model_dir, "eval_metrics.json")
  try:
    with open(path, encoding="utf-8") as f:
      metrics = json.load(f)
  except FileNotFoundError as e:
    raise ValueError(f"The trial wrote no {path}: it never evaluated "
                     "(check the proxy's Trainer.eval settings).") from e
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  keys = AUTO_METRICS if metric == "auto" else (metric,)
  for key in keys:
    if key in metrics:
      return float(metrics[key]), key, metrics
  raise ValueError(f"{path} has no metric {' or '.join(keys)}; it has "
                   f"{sorted(metrics)}. Pass --metric=<one of them>.")


def failure_reason(returncode, log_path):
  """A one-line reason for a failed run, from its exit code and log tail."""
  try:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      f.seek(max(0, os.path.getsize(log_path) - 20000))
      tail = f.read()
  except OSError:
    tail = ""
  lines = [l.strip() for l in tail.splitlines() if l.strip()]
  # The message of the exception that ended the run (the last line that
  # looks like "SomeError: ..."); absl and gin wrap it in frames and
  # "In call to configurable ..." lines that name nothing useful.
  errors = [l for l in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", l)]
  last = (errors[-1] if errors else lines[-1] if lines else "(no output)")[:300]
  if "NonFiniteLossError" in tail or "loss became NaN" in tail:
    kind = "NaN/Inf loss"
  elif ("ResourceExhausted" in tail or "out of memory" in tail.lower() or
        returncode == -signal.SIGKILL):
    # The kernel's OOM killer ends a process with SIGKILL.
    kind = "out of memory"
  else:
    kind = f"exit code {returncode}"
  return f"{kind}: {last}"


# Runs first in the trial's process, then execs the trainer: on Linux the
# trainer then gets SIGKILL when its worker dies (PR_SET_PDEATHSIG survives
# exec), so a killed worker leaves no trainer writing to the model_dir. Not
# a preexec_fn: forking a process with gRPC threads and running Python in
# the child before exec can crash the child.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "  ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except OSError:\n"
    "  pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "  sys.exit('the worker died before the trial started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


def _kill_leftover_trainer(trial_dir):
  """Kills a trainer of an earlier attempt still running in trial_dir.

  Only the process whose pid was recorded and whose command line names this
  model_dir is signalled, so an unrelated process that reused the pid is
  left alone.
  """
  record = engine.read_json(os.path.join(trial_dir, PID_FILE))
  if not record:
    return
  pid = int(record["pid"])
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      cmdline = f.read().decode(errors="replace")
  except OSError:
    return
  if f"--model_dir={trial_dir}" in cmdline:
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)


def run_trial(trial_dir, settings, candidate_bindings, timeout_s=None,
              heartbeat_s=5.0):
  """Trains one candidate in trial_dir (its model_dir) and reads its reward.

  Args:
    trial_dir: str, the trial's model_dir (created; resumed if it exists).
    settings: dict with "trainer", "gin_files", "gin_params", "metric" and
      optionally "mode" (the study settings, engine.study_settings).
    candidate_bindings: list of gin binding strings of the candidate.
    timeout_s: optional float; a run longer than this is killed and the
      trial is infeasible ("timeout").
    heartbeat_s: how often the elapsed time is saved (it survives a kill).

  Returns:
    TrialResult. Never raises for a failed run: a non-zero exit, a NaN loss,
    an out-of-memory kill, a missing metric or a non-finite reward all give
    status "infeasible" with the reason.
  """
  trial_dir = os.path.abspath(trial_dir)
  os.makedirs(trial_dir, exist_ok=True)
  done = engine.read_json(os.path.join(trial_dir, RESULT_FILE))
  if done is not None:
    return TrialResult(**done)
  _kill_leftover_trainer(trial_dir)
  progress_path = os.path.join(trial_dir, PROGRESS_FILE)
  progress = engine.read_json(progress_path) or {"wall_seconds": 0.0,
                                                 "attempts": 0}
  progress["attempts"] += 1
  engine.write_json_atomic(progress_path, progress)  # Counted even if killed.
  previous = float(progress["wall_seconds"])
  argv = trainer_command(settings["trainer"], settings["gin_files"],
                         settings["gin_params"], candidate_bindings, trial_dir,
                         settings.get("mode", "train_and_eval"))
  log_path = os.path.join(trial_dir, LOG_FILE)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                     if p])
  start = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"\n=== attempt {progress['attempts']} at "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid())] + argv,
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    engine.write_json_atomic(os.path.join(trial_dir, PID_FILE),
                             {"pid": proc.pid})
    timed_out = False
    while True:
      try:
        proc.wait(timeout=heartbeat_s)
        break
      except subprocess.TimeoutExpired:
        engine.write_json_atomic(progress_path, dict(
            progress, wall_seconds=previous + time.time() - start))
        if timeout_s and time.time() - start > timeout_s:
          proc.kill()
          proc.wait()
          timed_out = True
          break
  wall = previous + time.time() - start
  engine.write_json_atomic(progress_path, dict(progress, wall_seconds=wall))
  metrics, key = {}, None
  if timed_out:
    status, reward = "infeasible", None
    reason = f"timeout: the run took more than {timeout_s:.0f} s"
  elif proc.returncode != 0:
    status, reward = "infeasible", None
    reason = failure_reason(proc.returncode, log_path)
  else:
    try:
      reward, key, metrics = read_reward(trial_dir, settings["metric"])
      if math.isfinite(reward):
        status, reason = "completed", None
      else:
        status, reason = "infeasible", f"non-finite {key}: {reward}"
        reward = None
    except ValueError as e:
      status, reward, reason = "infeasible", None, str(e)
  result = TrialResult(status=status, reward=reward, reason=reason,
                       metrics=metrics, wall_seconds=wall,
                       attempts=progress["attempts"], metric=key)
  engine.write_json_atomic(os.path.join(trial_dir, RESULT_FILE),
                           dataclasses.asdict(result))
  return result
