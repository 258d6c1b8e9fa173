r"""Architecture search on OSS Vizier: python -m official.search.

  python -m official.search --space=mini --controller=evolution \
    --search_dir=runs/search_mini --num_workers=2 --num_trials=8 \
    --gin_file=configs/search/spinenet_mini_digits.gin \
    --seed_architectures=spinenet49,sequential

Roles:
  all (default)  the Vizier service (SQLite file SEARCH_DIR/vizier.db) and
                 --num_workers local workers; waits for --num_trials trials
                 and writes trials.jsonl, the best architecture's gin file
                 and rewards.png into SEARCH_DIR.
  service        the service and the outputs only, serving on
                 --vizier_endpoint (e.g. 0.0.0.0:6006) for workers on other
                 hosts; --database_url moves the study to a shared database.
  worker         one worker (--worker_index) of the service at
                 --vizier_endpoint (default: the one recorded in SEARCH_DIR).

Running the same command again on the same SEARCH_DIR continues the study:
completed trials are kept, a worker's unfinished trial resumes from its
checkpoint, and the controller continues from the state saved in the study.
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from official.search import engine
from official.search import outputs
from official.search import trial_runner
from official.search import worker as worker_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("space", None, "Search space preset (e.g. mini, "
                    "spinenet49, resource) or 'package.module:factory'.")
flags.DEFINE_string("controller", None, "Controller (e.g. random, evolution, "
                    "ppo, reinforce) or 'package.module:factory'.")
flags.DEFINE_string("search_dir", None, "Directory of the study: database, "
                    "trials/<id> model dirs, outputs.")
flags.DEFINE_integer("num_workers", 1, "Local workers (role all).", lower_bound=1)
flags.DEFINE_integer("num_trials", None, "Trials in the study (seeds "
                     "included).", lower_bound=1)
flags.DEFINE_multi_string("gin_file", [], "Proxy task gin files of every trial.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings of every trial.")
flags.DEFINE_integer("seed", 0, "Controller seed.")
flags.DEFINE_list("seed_architectures", [], "Known architectures of the space "
                  "run as the first trials, e.g. spinenet49,sequential.")
flags.DEFINE_enum("role", "all", ["all", "service", "worker"], "What to run.")
flags.DEFINE_string("vizier_endpoint", None, "HOST:PORT of the service (role "
                    "service: where to serve; role worker: where to connect).")
flags.DEFINE_string("database_url", None, "SQLAlchemy URL of the study "
                    "database (default sqlite:///SEARCH_DIR/vizier.db).")
flags.DEFINE_string("metric", "auto", "eval_metrics.json key used as the "
                    "reward; auto: AP (detection) or top_1_accuracy.")
flags.DEFINE_string("trainer", "official.train", "Module (python -m) or .py "
                    "script run for each trial with official.train's flags.")
flags.DEFINE_integer("worker_index", 0, "Role worker: K of its id worker-K.")
flags.DEFINE_string("worker_id_prefix", "", "Role worker: prefix of the "
                    "client id, e.g. the host name when many hosts run "
                    "worker-0.")
flags.DEFINE_list("search_options", [], "Controller settings as key=value, "
                  "e.g. start_backbone=resnet18,n_stuck=20,n_reignite=2 "
                  "(SP-NAS; see official/search/controllers/sp_nas.py).")
flags.DEFINE_multi_string("pretrain_gin_file", [], "Classification proxy gin "
                          "files of the pre-training and reignition trials "
                          "(SP-NAS Algorithm 1).")
flags.DEFINE_float("trial_timeout_s", None, "Kill a trial after this many "
                   "seconds and record it infeasible.")

# The proxy's declared cost, a comment in its gin file, e.g.
#   # search_seconds_per_trial: 60  (2-core CPU, measured ...)
_DECLARED_COST = re.compile(r"^#\s*search_seconds_per_trial:\s*([0-9.]+)(.*)$",
                            re.M)


def _fail(message):
  # The message alone, last on the screen (app.UsageError would print the
  # whole usage text around it); exit status 1.
  sys.exit(f"official.search: {message}")


def declared_seconds_per_trial(gin_files):
  """(seconds, note) declared in the first proxy gin file that has one."""
  for path in gin_files:
    try:
      with open(trial_runner.resolve_gin_file(path), encoding="utf-8") as f:
        match = _DECLARED_COST.search(f.read())
    except OSError:
      continue
    if match:
      return float(match.group(1)), f"{path}{match.group(2)}"
  return None, None


def _fmt_duration(seconds):
  if seconds is None or not math.isfinite(seconds):
    return "unknown"
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def _rounds(trials, num_workers):
  """Rounds of trials num_workers workers need (a trial is not split)."""
  return -(-trials // max(num_workers, 1))


def print_plan(space, settings, records, num_trials, num_workers):
  """Prints the space size and the estimated cost before starting."""
  try:
    size = f"10^{space.log10_size():.1f} architectures"
  except NotImplementedError:
    size = "size not computed by this space"
  print(f"Search space '{space.name}': {space.num_decisions()} decisions, "
        f"{size}.", flush=True)
  measured = [r["wall_seconds"] for r in records
              if r["status"] == "completed" and r.get("wall_seconds")]
  remaining = max(num_trials - len(records), 0)
  if measured:
    per_trial = sum(measured) / len(measured)
    source = f"measured: mean of {len(measured)} finished trials of this study"
  else:
    per_trial, note = declared_seconds_per_trial(settings["gin_files"])
    source = (f"estimate: declared per-proxy figure in {note.strip()}; it "
              "is replaced by this study's measured mean once trials finish"
              if per_trial else "no measured or declared figure yet")
  if per_trial:
    total = num_trials * per_trial
    print(f"Estimated cost: {num_trials} trials x {per_trial:.0f} s per trial "
          f"= {_fmt_duration(total)} of worker time ({source}); "
          f"{remaining} trials left, about "
          f"{_fmt_duration(_rounds(remaining, num_workers) * per_trial)} "
          f"with {num_workers} worker(s).", flush=True)
  else:
    print(f"Estimated cost: unknown ({source}).", flush=True)


def _search_options():
  """--search_options as a dict str -> str."""
  options = {}
  for item in FLAGS.search_options:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      _fail(f"--search_options: {item!r} is not key=value.")
    options[key.strip()] = value.strip()
  return options


def _settings():
  settings = {
      "space": FLAGS.space, "controller": FLAGS.controller, "seed": FLAGS.seed,
      "gin_files": list(FLAGS.gin_file), "gin_params": list(FLAGS.gin_param),
      "metric": FLAGS.metric, "trainer": FLAGS.trainer,
      "mode": "train_and_eval",
  }
  # Only when given, so studies made before these flags keep their identity.
  if FLAGS.search_options:
    settings["search_options"] = _search_options()
  if FLAGS.pretrain_gin_file:
    settings["pretrain_gin_files"] = list(FLAGS.pretrain_gin_file)
  return settings


def _check_flags():
  """Fails with a clear message before anything starts; returns the space."""
  if not FLAGS.search_dir:
    _fail("--search_dir is required.")
  if FLAGS.role == "worker":
    return None
  for name in ("space", "controller", "num_trials"):
    if getattr(FLAGS, name) is None:
      _fail(f"--{name} is required for --role={FLAGS.role}.")
  for flag, paths in (("gin_file", FLAGS.gin_file),
                      ("pretrain_gin_file", FLAGS.pretrain_gin_file)):
    for path in paths:
      if not os.path.exists(trial_runner.resolve_gin_file(path)):
        _fail(f"--{flag}={path}: no such file (relative paths are read from "
              "the current directory, then the repository root).")
  if FLAGS.trainer.endswith(".py") and not os.path.exists(FLAGS.trainer):
    _fail(f"--trainer={FLAGS.trainer}: no such file.")
  try:
    space = engine.resolve_space(FLAGS.space)
    allowed = getattr(space, "controllers", None)
    if allowed and FLAGS.controller not in allowed:
      raise ValueError(f"--space={FLAGS.space} runs with --controller="
                       f"{' or '.join(allowed)}, not '{FLAGS.controller}'.")
    controller = engine.resolve_controller(FLAGS.controller, space,
                                           FLAGS.seed, _search_options())
  except (ValueError, KeyError, TypeError) as e:
    _fail(str(e).strip("'\""))
  if FLAGS.pretrain_gin_file and not hasattr(controller,
                                             "use_study_settings"):
    _fail(f"--pretrain_gin_file is used by the sp_nas controller only, not "
          f"by '{FLAGS.controller}'.")
  if FLAGS.seed_architectures and not getattr(controller,
                                              "accepts_seed_trials", True):
    _fail(f"The '{FLAGS.controller}' controller takes no "
          "--seed_architectures: it starts from one network, "
          "--search_options=start_backbone=NAME.")
  known = space.known_architectures()
  unknown = [n for n in FLAGS.seed_architectures if n not in known]
  if unknown:
    _fail(f"--seed_architectures: {unknown} not known to space "
          f"'{space.name}'; known: {sorted(known)}.")
  for name in FLAGS.seed_architectures:
    try:
      space.encode(known[name])
    except ValueError as e:
      _fail(f"--seed_architectures={name}: {e}")
  if len(FLAGS.seed_architectures) > FLAGS.num_trials:
    _fail(f"--num_trials={FLAGS.num_trials} is less than the "
          f"{len(FLAGS.seed_architectures)} seed architectures.")
  _check_gin(space)
  existing = engine.read_json(os.path.join(FLAGS.search_dir, engine.STUDY_FILE))
  if existing:
    try:
      engine.check_same_study(existing, _settings(),
                              f"--search_dir={FLAGS.search_dir}")
    except ValueError as e:
      _fail(str(e))
  return space


def _check_gin(space):
  """Parses the proxy with --gin_param and a candidate's bindings as a trial
  will (skip_unknown=False), so a misspelt binding fails here, before the
  study exists, instead of failing every trial and being stored with it."""
  if FLAGS.trainer != "official.train":
    return  # Another trainer's flags mean what it says they mean.
  # pylint: disable=g-import-not-at-top
  from official import registry  # Registers what the gin files name.
  from official.core import gin_config
  # pylint: enable=g-import-not-at-top
  del registry
  known = list(space.known_architectures().values())
  candidate = list(space.gin_bindings(known[0])) if known else []
  for flag, files in (("gin_file", FLAGS.gin_file),
                      ("pretrain_gin_file", FLAGS.pretrain_gin_file)):
    if flag == "pretrain_gin_file" and not files:
      continue
    try:
      gin_config.parse_gin([trial_runner.resolve_gin_file(p) for p in files],
                           list(FLAGS.gin_param) + candidate,
                           skip_unknown=False)
    except Exception as e:  # pylint: disable=broad-except
      # gin raises ValueError, KeyError, SyntaxError... all mean "bad config".
      _fail(f"The trial configuration does not parse (--{flag} "
            f"{list(files)}, --gin_param {list(FLAGS.gin_param)}): "
            f"{str(e).strip()}")


def _study_trials(study):
  return list(engine.retry(lambda: list(study.trials().get()), "listing"))


def _spawn_workers(num_workers, endpoint):
  """Starts the local workers not already running; returns their Popen."""
  procs = {}
  log_dir = os.path.join(FLAGS.search_dir, worker_lib.PID_DIR)
  os.makedirs(log_dir, exist_ok=True)
  for k in range(num_workers):
    client_id = f"worker-{k}"
    if worker_lib.worker_alive(FLAGS.search_dir, client_id):
      print(f"{client_id} is still running (from an earlier start); it "
            "continues with the restarted service.", flush=True)
      continue
    argv = [sys.executable, "-m", "official.search", "--role=worker",
            f"--search_dir={FLAGS.search_dir}", f"--vizier_endpoint={endpoint}",
            f"--worker_index={k}", f"--num_trials={FLAGS.num_trials}"]
    if FLAGS.trial_timeout_s:
      argv.append(f"--trial_timeout_s={FLAGS.trial_timeout_s}")
    log = open(os.path.join(log_dir, f"{client_id}.log"), "a",
               encoding="utf-8")
    procs[client_id] = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, cwd=trial_runner.REPO_ROOT)
  return procs


def _progress_line(records, last, num_trials, num_workers):
  """The line for trial record `last`, newly finished among `records`."""
  done = [r for r in records if r["status"] == "completed"]
  best = outputs.best_record(records)
  walls = [r["wall_seconds"] for r in done if r.get("wall_seconds")]
  eta = (_rounds(max(num_trials - len(records), 0), num_workers) *
         (sum(walls) / len(walls))) if walls else None
  what = (f"reward {last['reward']:.4f}" if last["status"] == "completed"
          else f"INFEASIBLE ({last.get('reason')})")
  best_text = (f"best {best['reward']:.4f} (trial {best['trial_id']})"
               if best else "no ranked candidate yet")
  return (f"[{len(records)}/{num_trials}] trial {last['trial_id']} "
          f"({last.get('worker')}, {_fmt_duration(last.get('wall_seconds'))})"
          f": {what}; {best_text}; ETA {_fmt_duration(eta)}")


def run_service(space):
  """Roles all and service: the study, its seeds, workers, outputs."""
  # The service's own messages are printed; Vizier logs every suggestion,
  # cache load and parameter at INFO through absl, which buries them.
  logging.set_verbosity(logging.WARNING)
  search_dir = FLAGS.search_dir
  os.makedirs(search_dir, exist_ok=True)
  host, port = "localhost", None
  if FLAGS.role == "service" and FLAGS.vizier_endpoint:
    host, _, port_text = FLAGS.vizier_endpoint.rpartition(":")
    if not host or not port_text.isdigit():
      _fail(f"--vizier_endpoint={FLAGS.vizier_endpoint}: expected HOST:PORT.")
    port = int(port_text)
  server = engine.start_service(search_dir, FLAGS.database_url, host=host,
                                port=port)
  endpoint = server.endpoint if host not in ("0.0.0.0", "[::]") else (
      f"{socket.gethostname()}:{port}")
  try:
    _serve(space, server, endpoint)
  finally:
    server._server.stop(grace=2)  # pylint: disable=protected-access


def _serve(space, server, endpoint):
  """The study, its seeds, the local workers and the outputs."""
  search_dir = FLAGS.search_dir
  engine.connect(server.endpoint)
  settings = _settings()
  try:
    study = engine.create_or_load_study(space, settings)
  except ValueError as e:
    _fail(str(e))
  engine.write_json_atomic(os.path.join(search_dir, engine.STUDY_FILE),
                           settings)
  from vizier.service import pyvizier as vz  # pylint: disable=g-import-not-at-top
  md = vz.Metadata()
  md.ns(engine.NAMESPACE)["num_trials"] = json.dumps(FLAGS.num_trials)
  study.update_metadata(md)
  records = outputs.write_outputs(search_dir, _study_trials(study), settings)
  print_plan(space, settings, records, FLAGS.num_trials, FLAGS.num_workers)
  engine.add_seed_trials(study, space, FLAGS.seed_architectures)
  print(f"Vizier service at {endpoint} (database "
        f"{FLAGS.database_url or engine.database_url(search_dir)}); study in "
        f"{os.path.abspath(search_dir)}.", flush=True)
  procs = {}
  if FLAGS.role == "all":
    procs = _spawn_workers(FLAGS.num_workers, server.endpoint)
  seen = len(records)
  reported = {r["trial_id"] for r in records}
  while True:
    trials = _study_trials(study)
    finished = [t for t in trials if t.status == vz.TrialStatus.COMPLETED]
    if len(finished) != seen:
      records = outputs.write_outputs(search_dir, trials, settings)
      seen = len(records)
      # Trials finish out of id order: report each new one by its own id.
      for record in records:
        if record["trial_id"] not in reported:
          reported.add(record["trial_id"])
          print(_progress_line(records, record, FLAGS.num_trials,
                               FLAGS.num_workers), flush=True)
    if seen >= FLAGS.num_trials:
      break
    if FLAGS.role == "all" and procs and all(
        p.poll() is not None for p in procs.values()) and not any(
            worker_lib.worker_alive(search_dir, f"worker-{k}")
            for k in range(FLAGS.num_workers)):
      codes = {k: p.returncode for k, p in procs.items()}
      trials = _study_trials(study)
      records = outputs.write_outputs(search_dir, trials, settings)
      seen = len(records)
      if (all(c == 0 for c in codes.values()) and all(
          t.status == vz.TrialStatus.COMPLETED for t in trials)):
        # Workers stop cleanly only when the study is full or the controller
        # proposes nothing more (SP-NAS after its parallel phase is stuck).
        print(f"The controller finished its search after {seen} trials "
              f"(fewer than --num_trials={FLAGS.num_trials}).", flush=True)
        break
      _fail(f"All workers exited ({codes}) with {seen}/{FLAGS.num_trials} "
            f"trials finished; see {search_dir}/workers/*.log.")
    time.sleep(1.0)
  for proc in procs.values():
    try:
      proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      proc.terminate()
  best = outputs.best_record(records)
  print(f"Search finished: {seen} trials in {search_dir}/"
        f"{outputs.TRIALS_FILE}.", flush=True)
  if best:
    print(f"Best: trial {best['trial_id']}, {best['metric']} = "
          f"{best['reward']:.4f}; architecture in {search_dir}/"
          f"{outputs.best_gin_name(settings['space'])}.", flush=True)


def run_worker():
  endpoint = FLAGS.vizier_endpoint
  if not endpoint:
    record = engine.read_json(os.path.join(FLAGS.search_dir,
                                           engine.SERVICE_FILE))
    if not record:
      _fail("--role=worker needs --vizier_endpoint=HOST:PORT (no service "
            f"recorded in {FLAGS.search_dir}/{engine.SERVICE_FILE}).")
    endpoint = f"{record['host']}:{record['port']}"
  client_id = f"{FLAGS.worker_id_prefix}worker-{FLAGS.worker_index}"
  num_trials = FLAGS.num_trials
  if num_trials is None:
    engine.connect(endpoint)
    study = engine.retry(engine.load_study, "loading the study")
    if study is None:
      _fail(f"No search study at {endpoint}.")
    num_trials = json.loads(study.materialize_study_config().metadata.ns(
        engine.NAMESPACE)["num_trials"])
  ran = worker_lib.run_worker(FLAGS.search_dir, endpoint, client_id,
                              num_trials, timeout_s=FLAGS.trial_timeout_s)
  print(f"{client_id}: ran {ran} trial(s).", flush=True)


def main(argv):
  if len(argv) > 1:
    _fail(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.controller == "darts":
    # Auto-FPN's gradient search is one training run, not Vizier trials.
    from official.search import darts  # pylint: disable=g-import-not-at-top
    try:
      darts.run_from_cli(FLAGS.space, FLAGS.search_dir, FLAGS.gin_file,
                         FLAGS.gin_param, _search_options(), FLAGS.seed)
    except ValueError as e:
      _fail(str(e))
    return
  space = _check_flags()
  # Workers run from the repository root: every path they get is absolute.
  FLAGS.search_dir = os.path.abspath(FLAGS.search_dir)
  if FLAGS.role == "worker":
    run_worker()
  else:
    run_service(space)


if __name__ == "__main__":
  app.run(main)
