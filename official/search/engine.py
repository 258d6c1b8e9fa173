"""The trial engine: an OSS Vizier study driven by our controllers.

Searches of the SpineNet kind run hundreds to thousands of trials on many
machines (SpineNet paper §5.1: about 100 TPUs), so trials run on an existing
distributed engine, OSS Vizier (google-vizier), and not on one of our own:

- The service keeps the study in a SQL database (by default a SQLite file,
  SEARCH_DIR/vizier.db); killed and started again on the same database, it
  continues the study.
- Each worker is a Vizier client with a stable client id (`worker-K`); a
  worker that asks again with the same id gets its ACTIVE trial back (Vizier's
  SuggestTrials looks for the client's active trials first), so a restarted
  worker resumes its trial instead of starting another.
- Our controller runs inside the service as a custom Pythia policy: a
  PartiallySerializableDesignerPolicy around `ControllerDesigner`, whose
  dump()/load() wrap Controller.get_state()/set_state(). The policy stores the
  controller's state and the ids of the completed trials it has learnt from in
  the study's metadata at every suggestion, so after any kill the controller
  learns from each completed trial exactly once (the ids it has not seen are
  fed to update() at the next suggestion).

The study: integer parameters d0..d{n-1} (the space's decision list), one
metric "reward" (maximised); study metadata (namespace `official_search`)
holds the space, controller, seed and the proxy settings every worker trains
with, so a worker needs nothing but the service's address. Trial metadata
holds the decoded architecture and its gin bindings (written by the designer),
and, once run, the worker, wall seconds and the metrics the trial wrote.
"""

import importlib
import json
import logging as std_logging
import math
import os
import time

from absl import logging

from official.search import base

NAMESPACE = "official_search"
OWNER = "official_search"
STUDY_ID = "search"
METRIC = "reward"
DATABASE_FILE = "vizier.db"
STUDY_FILE = "study.json"  # Identity of the study, checked before starting.
SERVICE_FILE = "service.json"  # Address of the embedded service, reused.


def _vizier():
  """Imports OSS Vizier with a message that says how to install it."""
  try:
    # pylint: disable=g-import-not-at-top
    from vizier.service import pyvizier as vz
    from vizier.service import clients
  except ImportError as e:
    raise ImportError(
        "The search engine needs OSS Vizier: pip install -e '.[search]' "
        "(google-vizier[jax]==0.1.24 with jax/jaxlib 0.4.38; see setup.py). "
        f"Import failed: {e}") from e
  # Vizier logs every polling step at INFO; keep worker logs readable.
  std_logging.getLogger("vizier").setLevel(std_logging.WARNING)
  return vz, clients


# --- Spaces and controllers by name ------------------------------------------


def _import_attr(spec):
  module_name, _, attr = spec.partition(":")
  try:
    return getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"Cannot load '{spec}' (expected 'package.module:name' "
                     f"of an importable module): {e}") from e


def resolve_space(name):
  """The SearchSpace named `name`.

  Names are the presets of official.search.spaces (get_space); a
  'package.module:factory' name calls factory() instead, for spaces defined
  outside this package (and the engine's tests).

  Raises:
    ValueError: unknown name (the message lists the valid ones).
  """
  if ":" in name:
    return _import_attr(name)()
  from official.search import spaces  # pylint: disable=g-import-not-at-top
  return spaces.get_space(name)


def resolve_controller(name, space, seed, options=None):
  """The Controller named `name` over `space` (see resolve_space for 'm:f').

  options: dict str -> str of --search_options (controller settings such as
    SP-NAS's n_stuck); a 'package.module:factory' controller gets them as
    keyword arguments.
  """
  options = dict(options or {})
  if ":" in name:
    return _import_attr(name)(space, seed, **options)
  from official.search import controllers  # pylint: disable=g-import-not-at-top
  return controllers.get_controller(name, space, seed, options)


# --- Parameters <-> decision lists --------------------------------------------


def decisions_to_parameters(decisions):
  return {f"d{i}": int(d) for i, d in enumerate(decisions)}


def parameters_to_decisions(parameters, num_decisions):
  """Decision list of a trial's parameters (Vizier returns them as floats)."""
  out = []
  for i in range(num_decisions):
    value = parameters[f"d{i}"]
    value = getattr(value, "value", value)
    out.append(int(round(float(value))))
  return out


def study_config(space, settings):
  """A Vizier StudyConfig for `space`; `settings` (dict) go to the metadata.

  Each decision is an integer parameter in [0, num_options - 1]; Vizier
  needs a non-empty range, so a one-option step gets [0, 1] and the designer
  never proposes 1 there (the space's masks are the source of validity).
  """
  vz, _ = _vizier()
  config = vz.StudyConfig(algorithm="DEFAULT")  # Our policy factory answers.
  root = config.search_space.root
  for step in range(space.num_decisions()):
    root.add_int_param(f"d{step}", 0, max(int(space.num_options(step)) - 1, 1))
  config.metric_information.append(
      vz.MetricInformation(METRIC, goal=vz.ObjectiveMetricGoal.MAXIMIZE))
  config.metadata.ns(NAMESPACE)["settings"] = json.dumps(settings,
                                                         sort_keys=True)
  return config


def study_settings(problem):
  """The settings dict stored in a study config / problem statement."""
  raw = problem.metadata.ns(NAMESPACE).get("settings")
  if raw is None:
    raise ValueError("The Vizier study has no official_search settings; it "
                     "was not created by python -m official.search.")
  return json.loads(raw)


def trial_info(trial):
  """JSON values in a trial's official_search metadata namespace (dict)."""
  md = trial.metadata.ns(NAMESPACE)
  return {k: json.loads(v) for k, v in md.items()}


def trial_reward(trial):
  """float reward of a completed feasible trial, else None."""
  if trial.infeasible or trial.final_measurement is None:
    return None
  metric = trial.final_measurement.metrics.get(METRIC)
  if metric is None:
    return None
  value = float(metric.value)
  return value if math.isfinite(value) else None


# --- The controller inside the service -----------------------------------------


def _designer_classes():
  """ControllerDesigner and the policy factory (need Vizier imported)."""
  vz, _ = _vizier()
  # pylint: disable=g-import-not-at-top
  from vizier import pythia
  from vizier import algorithms as vza
  from vizier._src.algorithms.policies import designer_policy
  from vizier.interfaces import serializable

  class ControllerDesigner(vza.PartiallySerializableDesigner):
    """A Controller as a Vizier designer; its state lives in the study."""

    def __init__(self, problem, space_resolver=resolve_space,
                 controller_resolver=resolve_controller):
      settings = study_settings(problem)
      self.space = space_resolver(settings["space"])
      self.controller = controller_resolver(settings["controller"], self.space,
                                            int(settings["seed"]),
                                            settings.get("search_options"))
      if hasattr(self.controller, "use_study_settings"):
        self.controller.use_study_settings(settings)
      self.num_decisions = self.space.num_decisions()

    def _view(self, trial, active=False):
      return base.TrialView(
          trial_id=trial.id,
          decisions=parameters_to_decisions(trial.parameters,
                                            self.num_decisions),
          reward=None if active else trial_reward(trial),
          info=trial_info(trial), active=active)

    def update(self, completed, all_active):
      # In trial order, so a replay after a restart sees the same sequence.
      for trial in sorted(completed.trials, key=lambda t: t.id):
        self.controller.learn(self._view(trial))
      self.controller.observe_active(
          [self._view(t, active=True)
           for t in sorted(all_active.trials, key=lambda t: t.id)])

    def suggest(self, count=None):
      out = []
      for _ in range(count or 1):
        proposal = self.controller.propose()
        if proposal is None:
          # The controller's search is finished. Vizier 0.1.24's service
          # cannot answer a suggestion request with no trial (it fails
          # inside SuggestTrials and the client waits forever), so the answer
          # is a trial marked "stop", which the worker deletes unrun.
          out.append(stop_suggestion(self.num_decisions, getattr(
              self.controller, "done_reason", None)))
          break
        out.append(suggestion(self.space, [int(d) for d in proposal.decisions],
                              architecture=proposal.architecture,
                              run=proposal.run))
      return out

    def dump(self):
      md = vz.Metadata()
      md["controller_state"] = json.dumps(self.controller.get_state())
      return md

    def load(self, metadata):
      raw = metadata.get("controller_state")
      if raw is None:
        raise serializable.DecodeError("No controller state in the study.")
      self.controller.set_state(json.loads(raw))

  class SearchPolicyFactory(pythia.PolicyFactory):
    """Answers every study of this service with a ControllerDesigner policy."""

    def __init__(self, space_resolver=resolve_space,
                 controller_resolver=resolve_controller):
      self._space_resolver = space_resolver
      self._controller_resolver = controller_resolver

    def __call__(self, problem_statement, algorithm, policy_supporter,
                 study_name):
      del algorithm, study_name

      def factory(problem, seed=None):
        del seed  # The controller's seed is in the study settings.
        return ControllerDesigner(problem, self._space_resolver,
                                  self._controller_resolver)

      # Built per request: the state comes from the study metadata each time,
      # which is what makes a restarted service continue where it stopped.
      return designer_policy.PartiallySerializableDesignerPolicy(
          problem_statement, policy_supporter, factory,
          ns_root="official_search_policy")

  return ControllerDesigner, SearchPolicyFactory


def suggestion(space, decisions, seed_name=None, architecture=None,
               run=None):
  """A vz.TrialSuggestion of a decision list, with its gin bindings attached.

  architecture: what the trial trains; None decodes the decisions.
  run: how the worker runs it (base.Proposal.run), stored as "run".

  Raises:
    ValueError: the decisions are not valid in `space` (from space.decode).
  """
  vz, _ = _vizier()
  if architecture is None:
    architecture = space.decode(decisions)
  bindings = list(space.gin_bindings(architecture))
  md = vz.Metadata()
  info = {"decisions": decisions, "architecture": architecture,
          "gin_bindings": bindings}
  if run:
    info["run"] = dict(run)
  # A space may refuse to train an architecture it can still express (the
  # resource space: multiply-adds outside +-10% of the target); the worker
  # then completes the trial infeasible with this reason, untrained.
  refusal = space.infeasibility(architecture)
  if refusal is not None:
    info["refused"] = refusal
  if seed_name:
    info["seed_name"] = seed_name
  for key, value in info.items():
    md.ns(NAMESPACE)[key] = json.dumps(value)
  return vz.TrialSuggestion(decisions_to_parameters(decisions), metadata=md)


def stop_suggestion(num_decisions, reason=None):
  """The suggestion that tells a worker the controller proposes no more
  trials (see ControllerDesigner.suggest); its parameters are all 0."""
  vz, _ = _vizier()
  md = vz.Metadata()
  md.ns(NAMESPACE)["stop"] = json.dumps(reason or "the controller finished")
  return vz.TrialSuggestion(decisions_to_parameters([0] * num_decisions),
                            metadata=md)


# --- The service -----------------------------------------------------------------


def database_url(search_dir):
  return "sqlite:///" + os.path.join(os.path.abspath(search_dir),
                                     DATABASE_FILE)


def start_service(search_dir, db_url=None, host="localhost", port=None,
                  space_resolver=resolve_space,
                  controller_resolver=resolve_controller):
  """Starts the embedded Vizier service (gRPC) with our policy factory.

  Args:
    search_dir: str, where the SQLite file and service.json live.
    db_url: SQLAlchemy URL of the study database; default a SQLite file
      SEARCH_DIR/vizier.db. A shared database (e.g. MySQL / PostgreSQL URL)
      lets the service move between hosts.
    host: interface to serve on ("0.0.0.0" to accept remote workers).
    port: int; default the port recorded in SEARCH_DIR/service.json by an
      earlier run (so restarted workers find the restarted service), else a
      free one.

  Returns:
    the DefaultVizierServer; `.endpoint` is "host:port".
  """
  _vizier()
  # pylint: disable=g-import-not-at-top
  from vizier.service import servers
  import portpicker
  os.makedirs(search_dir, exist_ok=True)
  record = read_json(os.path.join(search_dir, SERVICE_FILE)) or {}
  if port is None:
    port = record.get("port")
    if port is None or not portpicker.is_port_free(port):
      port = portpicker.pick_unused_port()
  _, factory_cls = _designer_classes()
  # gRPC's server logs every exception a handler raises with its traceback,
  # and "study not found" is how a fresh search learns the study is new. The
  # client gets each error as a status (and retry() reports it), so the
  # server-side copy only alarms users.
  std_logging.getLogger("grpc._server").setLevel(std_logging.CRITICAL)
  server = servers.DefaultVizierServer(
      host=host, database_url=db_url or database_url(search_dir), port=port,
      policy_factory=factory_cls(space_resolver, controller_resolver))
  _close_stale_operations(server)
  write_json_atomic(os.path.join(search_dir, SERVICE_FILE),
                    {"host": host, "port": port, "pid": os.getpid()})
  return server


def _close_stale_operations(server):
  """Marks suggestion operations left undone by a killed service as failed.

  Vizier returns a client's undone operation to its next SuggestTrials call;
  one left behind by a killed service would never finish and the client
  would poll it forever. The client then asks again and gets a fresh one.
  """
  datastore = server.datastore
  table = getattr(datastore, "_suggestion_operations_table", None)
  if table is None:  # Not the SQL datastore (e.g. an in-memory one).
    return
  # pylint: disable=g-import-not-at-top
  from google.longrunning import operations_pb2
  from google.rpc import code_pb2
  from google.rpc import status_pb2
  import sqlalchemy as sqla
  with datastore._lock:  # pylint: disable=protected-access
    rows = datastore._connection.execute(  # pylint: disable=protected-access
        sqla.select(table)).fetchall()
  for row in rows:
    op = operations_pb2.Operation.FromString(row.serialized_op)
    if not op.done:
      op.done = True
      op.error.CopyFrom(status_pb2.Status(
          code=code_pb2.Code.ABORTED,
          message="The service stopped while this suggestion was made."))
      datastore.update_suggestion_operation(op)


def connect(endpoint):
  """Points this process's Vizier clients at `endpoint` ("host:port")."""
  _, clients = _vizier()
  clients.environment_variables.server_endpoint = endpoint


def load_study():
  """The search study on the connected service, or None if it does not exist."""
  _, clients = _vizier()
  try:
    return clients.Study.from_owner_and_id(OWNER, STUDY_ID)
  except clients.ResourceNotFoundError:
    return None


def create_or_load_study(space, settings):
  """The study of this search, created with `settings` if new.

  Raises:
    ValueError: an existing study was made for another space or controller
      (names both), or with other proxy settings (names the difference).
  """
  _, clients = _vizier()
  study = load_study()
  if study is None:
    return clients.Study.from_study_config(
        study_config(space, settings), owner=OWNER, study_id=STUDY_ID)
  check_same_study(study_settings(study.materialize_study_config()), settings)
  return study


# Settings that define a study: continuing with others would mix trials that
# are not comparable.
IDENTITY_KEYS = ("space", "controller", "seed")
PROXY_KEYS = ("gin_files", "gin_params", "metric", "trainer",
              "pretrain_gin_files", "search_options")


def check_same_study(existing, requested, where="the search directory"):
  """Raises ValueError when `requested` settings differ from `existing`."""
  diffs = [k for k in IDENTITY_KEYS if existing.get(k) != requested.get(k)]
  if diffs:
    raise ValueError(
        f"{where} holds a study of space '{existing.get('space')}' with "
        f"controller '{existing.get('controller')}' (seed "
        f"{existing.get('seed')}); this run asks for space "
        f"'{requested.get('space')}' with controller "
        f"'{requested.get('controller')}' (seed {requested.get('seed')}). "
        "Use another --search_dir.")
  for key in PROXY_KEYS:
    # An empty value and a missing key (a study made before the key
    # existed) are the same setting.
    if key in requested and ((existing.get(key) or None) !=
                             (requested.get(key) or None)):
      raise ValueError(
          f"{where} holds a study trained with {key}={existing.get(key)!r}; "
          f"this run asks for {requested.get(key)!r}. Trials with other proxy "
          "settings are not comparable: use the same flags or another "
          "--search_dir.")


def add_seed_trials(study, space, names):
  """Queues the known architectures `names` as the study's first trials.

  Idempotent: a seed already in the study (any state) is not added again.
  The seeds take the study's first trial ids, in the order given (Vizier
  hands queued trials out last-in first-out, so with fewer workers than
  seeds the last one starts first; all seeds start before any suggestion).

  Raises:
    ValueError: a name that is not one of space.known_architectures().
  """
  known = space.known_architectures()
  for name in names:
    if name not in known:
      raise ValueError(f"Unknown seed architecture '{name}' for space "
                       f"'{space.name}'; known: {sorted(known)}.")
  present = {trial_info(t).get("seed_name") for t in study.trials().get()}
  for name in names:
    if name not in present:
      decisions = [int(d) for d in space.encode(known[name])]
      study.request(suggestion(space, decisions, seed_name=name))


# --- Small file helpers ------------------------------------------------------------


def write_json_atomic(path, value):
  """Writes JSON to `path` through a temp file and a rename (never torn)."""
  write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path, text):
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path):
  """JSON of `path`, or None when missing."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def retry(fn, what, timeout_s=900.0, initial_delay_s=0.5):
  """Calls fn() until it returns, retrying lost-service errors for timeout_s.

  A killed service comes back on the same address; until then its clients
  get gRPC UNAVAILABLE (or a failed suggestion operation). Other errors are
  raised at once.
  """
  import grpc  # pylint: disable=g-import-not-at-top
  deadline = time.time() + timeout_s
  delay = initial_delay_s
  failed_operations = 0
  while True:
    try:
      return fn()
    except (grpc.RpcError, RuntimeError, ConnectionError) as e:
      code = e.code() if isinstance(e, grpc.RpcError) else None
      if isinstance(e, RuntimeError):
        # A failed suggestion operation: one closed by a restarted service
        # is retried; a policy that keeps failing (a controller bug, logged
        # by the service) is raised after a few tries.
        failed_operations += 1
        if "service stopped" not in str(e) and failed_operations > 3:
          raise
      if code not in (None, grpc.StatusCode.UNAVAILABLE,
                      grpc.StatusCode.DEADLINE_EXCEEDED,
                      grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                      grpc.StatusCode.ABORTED):
        raise
      if time.time() > deadline:
        raise RuntimeError(f"The Vizier service did not answer {what} for "
                           f"{timeout_s:.0f} s: {e}") from e
      logging.warning("Vizier service unavailable during %s (%s); retrying "
                      "in %.1f s.", what, type(e).__name__, delay)
      time.sleep(delay)
      delay = min(delay * 2, 5.0)
