"""A search worker: asks the Vizier service for trials and runs them.

The worker is a Vizier client with a stable id (e.g. `worker-0`). Each round:

1. Its ACTIVE trial, if the service holds one for this id (a worker killed
   mid-trial and started again), else a new suggestion; none once the study
   has `num_trials` trials.
2. The trial runs through trial_runner.run_trial in SEARCH_DIR/trials/<id>
   (resuming from the trial's checkpoint when it was started before).
3. The result goes to the trial's metadata (worker, wall seconds, metrics)
   and the trial is completed: with the reward, or as infeasible with the
   reason. A completed trial is never handed out again, so none runs twice.

Only the client side of Vizier is used; the settings (proxy gin files,
metric, trainer) come from the study, so every worker trains alike.
"""

import json
import os
import time

from absl import logging

from official.search import engine
from official.search import trial_runner

PID_DIR = "workers"


def pid_path(search_dir, client_id):
  return os.path.join(search_dir, PID_DIR, f"{client_id}.json")


def worker_alive(search_dir, client_id):
  """True when a worker process with this id is running (per its pid file)."""
  record = engine.read_json(pid_path(search_dir, client_id))
  if not record:
    return False
  try:
    with open(f"/proc/{int(record['pid'])}/cmdline", "rb") as f:
      cmdline = f.read().decode(errors="replace")
  except OSError:
    return False
  return "official.search" in cmdline and client_id in cmdline


def _my_active_trial(study, client_id):
  from vizier.service import pyvizier as vz  # pylint: disable=g-import-not-at-top
  for trial in study.trials().get():
    if (trial.status == vz.TrialStatus.ACTIVE and
        trial.assigned_worker == client_id):
      return trial.id
  return None


def next_trial(study, client_id, num_trials):
  """The id of the trial this worker runs next, or None when the study is full.

  Its own ACTIVE trial comes first (whatever num_trials says: it was handed
  out). Otherwise a new suggestion, unless the study already has num_trials
  trials. Two workers may ask at the same moment for the last slot; the
  suggestion whose id is above num_trials is deleted unrun (ids are given in
  order under the service's lock), so a study never exceeds num_trials.
  """
  active = engine.retry(lambda: _my_active_trial(study, client_id),
                        "listing trials")
  if active is not None:
    return active
  count = engine.retry(lambda: len(list(study.trials().get())),
                       "counting trials")
  if count >= num_trials:
    return None
  trials = engine.retry(lambda: study.suggest(count=1, client_id=client_id),
                        "a suggestion")
  if not trials:
    return None
  trial = trials[0]
  if trial.id > num_trials:
    engine.retry(trial.delete, "deleting a surplus suggestion")
    return None
  info = engine.trial_info(engine.retry(trial.materialize, "reading a trial"))
  if "stop" in info:
    # The controller's search is finished (engine.stop_suggestion).
    engine.retry(trial.delete, "deleting the stop suggestion")
    logging.info("%s: the controller proposes no more trials: %s", client_id,
                 info["stop"])
    return None
  return trial.id


def run_worker(search_dir, endpoint, client_id, num_trials, timeout_s=None):
  """Runs trials until the study has num_trials trials; returns how many ran.

  Args:
    search_dir: str; trials train in SEARCH_DIR/trials/<id>.
    endpoint: "host:port" of the Vizier service.
    client_id: str, this worker's stable Vizier client id.
    num_trials: int, size of the study.
    timeout_s: optional per-trial limit in seconds.

  Raises:
    RuntimeError: the study does not exist, or the service stayed away.
  """
  engine.connect(endpoint)
  os.makedirs(os.path.join(search_dir, PID_DIR), exist_ok=True)
  engine.write_json_atomic(pid_path(search_dir, client_id),
                           {"pid": os.getpid(), "endpoint": endpoint})
  study = engine.retry(engine.load_study, "loading the study")
  if study is None:
    raise RuntimeError(f"The service at {endpoint} has no search study; start "
                       "it with python -m official.search --role=service.")
  settings = engine.study_settings(
      engine.retry(study.materialize_study_config, "reading the study"))
  ran = 0
  while True:
    trial_id = next_trial(study, client_id, num_trials)
    if trial_id is None:
      logging.info("%s: the study has %d trials; stopping.", client_id,
                   num_trials)
      return ran
    trial = engine.retry(lambda: study.get_trial(trial_id), "reading a trial")
    info = engine.trial_info(
        engine.retry(trial.materialize, "reading a trial"))
    trial_dir = os.path.join(os.path.abspath(search_dir), "trials",
                             str(trial_id))
    logging.info("%s: trial %d%s in %s", client_id, trial_id,
                 f" (seed {info['seed_name']})" if "seed_name" in info else "",
                 trial_dir)
    refusal = info.get("refused")
    run = info.get("run") or {}
    if refusal is None:
      refusal = wait_for_trials(study, client_id, trial_id,
                                run.get("wait_for_trials", ()))
    if refusal is not None:
      result = trial_runner.TrialResult(
          status="infeasible", reward=None,
          reason=f"not trained: {refusal}", metrics={},
          wall_seconds=0.0, attempts=0)
    else:
      trial_settings, bindings = run_settings(search_dir, settings, info)
      result = trial_runner.run_trial(trial_dir, trial_settings, bindings,
                                      timeout_s=timeout_s)
    _report(trial, client_id, trial_dir, result)
    logging.info("%s: trial %d %s, reward %s (%.0f s)", client_id, trial_id,
                 result.status, result.reward, result.wall_seconds)
    ran += 1


def run_settings(search_dir, settings, info):
  """(settings, gin bindings) a trial trains with, from its "run" entry.

  - "gin_files": "pretrain" trains with the study's pretrain_gin_files
    (--pretrain_gin_file) instead of its gin_files;
  - "inherit_from_trials": [ids] adds Trainer.inherit_weights_from with
    those trials' model dirs (SEARCH_DIR/trials/<id>), in that order;
  - "save_weights": True saves the trained weights for later candidates
    (Trainer.save_inheritable_weights).
  """
  run = info.get("run") or {}
  settings = dict(settings)
  bindings = list(info["gin_bindings"])
  if run.get("gin_files") == "pretrain":
    if not settings.get("pretrain_gin_files"):
      raise ValueError("The trial asks for the pre-training proxy but the "
                       "study has no --pretrain_gin_file.")
    settings["gin_files"] = list(settings["pretrain_gin_files"])
  if run.get("save_weights"):
    bindings.append("Trainer.save_inheritable_weights = True")
  sources = [os.path.join(os.path.abspath(search_dir), "trials", str(t))
             for t in run.get("inherit_from_trials", ())]
  if sources:
    bindings.append(f"Trainer.inherit_weights_from = {sources!r}")
  return settings, bindings


def wait_for_trials(study, client_id, trial_id, parents, poll_s=5.0):
  """Blocks until every trial of `parents` is completed.

  A candidate that inherits weights starts only once the trial that writes
  them has finished (SP-NAS: every candidate starts from the best network's
  weights, §3.1). Parents always have lower ids than their children (they
  were suggested first), so waiting can never be circular.

  Returns:
    None when all completed feasibly, else the reason the trial cannot run
    (a parent that is infeasible: it wrote no usable weights).
  """
  from vizier.service import pyvizier as vz  # pylint: disable=g-import-not-at-top
  pending = [int(p) for p in parents]
  announced = False
  while pending:
    still = []
    for parent in pending:
      trial = engine.retry(lambda p=parent: study.get_trial(p).materialize(),
                           "reading a parent trial")
      if trial.status != vz.TrialStatus.COMPLETED:
        still.append(parent)
      elif engine.trial_reward(trial) is None:
        return (f"trial {parent}, whose weights it inherits, is infeasible "
                f"({trial.infeasibility_reason or 'no finite reward'})")
    pending = still
    if pending:
      if not announced:
        logging.info("%s: trial %d waits for trial(s) %s to finish (it "
                     "inherits their weights).", client_id, trial_id, pending)
        announced = True
      time.sleep(poll_s)
  return None


def _report(trial, client_id, trial_dir, result):
  from vizier.service import pyvizier as vz  # pylint: disable=g-import-not-at-top
  md = vz.Metadata()
  values = {"worker": client_id, "wall_seconds": result.wall_seconds,
            "attempts": result.attempts, "metrics": result.metrics,
            "metric": result.metric, "model_dir": trial_dir}
  for key, value in values.items():
    md.ns(engine.NAMESPACE)[key] = json.dumps(value)
  engine.retry(lambda: trial.update_metadata(md), "saving trial metadata")
  if result.status == "completed":
    measurement = vz.Measurement({engine.METRIC: result.reward},
                                 elapsed_secs=result.wall_seconds)
    engine.retry(lambda: trial.complete(measurement), "completing a trial")
  else:
    engine.retry(lambda: trial.complete(infeasible_reason=result.reason),
                 "completing a trial")
