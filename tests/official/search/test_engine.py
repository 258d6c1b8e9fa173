"""The trial engine on OSS Vizier: service, workers, kills and restarts.

A tiny space and a fake trainer (tests/official/search/tiny.py) stand in for
a real proxy, so each test runs real Vizier services and worker processes in
seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("vizier")

from official.search import engine  # pylint: disable=g-import-not-at-top
from official.search import outputs
from tests.official.search import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SPACE = "tests.official.search.tiny:tiny_space"
CONTROLLER = "tests.official.search.tiny:tiny_controller"


def settings(**params):
  gin_params = [f"{k} = {json.dumps(v)}" for k, v in params.items()]
  return {"space": SPACE, "controller": CONTROLLER, "seed": 3,
          "gin_files": [], "gin_params": gin_params,
          "metric": "top_1_accuracy", "trainer": tiny.__file__,
          "mode": "train_and_eval"}


def start(search_dir, study_settings, seeds=()):
  server = engine.start_service(str(search_dir))
  engine.connect(server.endpoint)
  study = engine.create_or_load_study(tiny.TinySpace(), study_settings)
  engine.add_seed_trials(study, tiny.TinySpace(), seeds)
  return server, study


def spawn_worker(search_dir, endpoint, index, num_trials):
  log = open(os.path.join(search_dir, f"worker-{index}.out"), "a")
  return subprocess.Popen(
      [sys.executable, "-m", "official.search", "--role=worker",
       f"--search_dir={search_dir}", f"--vizier_endpoint={endpoint}",
       f"--worker_index={index}", f"--num_trials={num_trials}"],
      cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def worker_logs(search_dir):
  return "\n".join(p.read_text()[-3000:] for p in
                   sorted(search_dir.glob("worker-*.out")))


def wait_for(predicate, timeout, what):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    time.sleep(0.2)
  raise AssertionError(f"timed out waiting for {what}")


def controller_history(study):
  """What the controller in the service has learnt from, after a probe
  suggestion makes it take in every completed trial."""
  probe = study.suggest(count=1, client_id="probe")[0]
  state = json.loads(study.materialize_study_config().metadata.ns(
      "official_search_policy").ns("designer")["controller_state"])
  probe.delete()
  return state["history"]


def finished(study):
  return [t for t in study.trials().get() if t.status.value == "COMPLETED"]


def test_two_workers_run_the_study_and_outputs_are_written(tmp_path):
  study_settings = settings()
  server, study = start(tmp_path, study_settings,
                        seeds=["first", "broken", "refused"])
  try:
    workers = [spawn_worker(tmp_path, server.endpoint, k, 6) for k in (0, 1)]
    for w in workers:
      assert w.wait(timeout=120) == 0, worker_logs(tmp_path)
    trials = list(study.trials().get())
    records = outputs.write_outputs(str(tmp_path), trials, study_settings)
    history = controller_history(study)
  finally:
    server._server.stop(grace=None)

  assert [r["trial_id"] for r in records] == [1, 2, 3, 4, 5, 6]
  # Seeds come first, in the order given.
  assert records[0]["seed_name"] == "first"
  assert records[0]["decisions"] == [0, 1, 0]
  assert records[1]["seed_name"] == "broken"
  assert records[1]["status"] == "infeasible"
  assert "NaN" in records[1]["reason"] and records[1]["reward"] is None
  # Refused by the space: reported infeasible with its reason, never trained.
  assert records[2]["seed_name"] == "refused"
  assert records[2]["status"] == "infeasible"
  assert records[2]["reason"] == "not trained: over the tiny budget"
  assert records[2]["wall_seconds"] == 0
  assert not (tmp_path / "trials" / "3").exists()
  assert {r["worker"] for r in records} <= {"worker-0", "worker-1"}
  for r in records:
    if r["status"] == "completed":
      assert r["reward"] == pytest.approx(tiny.expected_reward(r["decisions"]))
      assert r["gin_bindings"] == [f"fake.decisions = {r['decisions']}"]
      assert r["wall_seconds"] > 0
  lines = (tmp_path / "trials.jsonl").read_text().splitlines()
  assert [json.loads(l) for l in lines] == records
  best = outputs.best_record(records)
  gin_text = (tmp_path / "best_block_specs.gin").read_text()
  assert gin_text.splitlines()[-1] == f"fake.decisions = {best['decisions']}"
  assert f"trial {best['trial_id']}" in gin_text
  assert (tmp_path / "rewards.png").read_bytes()[:4] == b"\x89PNG"
  # The controller learnt from every finished trial once, infeasible as None.
  assert sorted(map(json.dumps, history)) == sorted(
      json.dumps([r["decisions"], r["reward"]]) for r in records)


def test_killed_worker_gets_its_trial_back_and_resumes(tmp_path):
  study_settings = settings(**{"fake.steps": 40, "fake.step_seconds": 0.1})
  server, study = start(tmp_path, study_settings)
  try:
    worker = spawn_worker(tmp_path, server.endpoint, 0, 2)
    steps = tmp_path / "trials" / "1" / "steps.txt"
    wait_for(lambda: steps.exists() and int(steps.read_text() or 0) >= 5, 60,
             "trial 1 to train a few steps")
    trainer_pid = json.loads(
        (tmp_path / "trials" / "1" / "trainer.pid").read_text())["pid"]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    # The trainer dies with its worker: no second writer in the model_dir.
    wait_for(lambda: not os.path.exists(f"/proc/{trainer_pid}") or
             open(f"/proc/{trainer_pid}/stat").read().split()[2] == "Z", 10,
             "the orphaned trainer to die")
    killed_at = int(steps.read_text())
    assert [t.status.value for t in study.trials().get()] == ["ACTIVE"]
    worker = spawn_worker(tmp_path, server.endpoint, 0, 2)
    assert worker.wait(timeout=120) == 0, worker_logs(tmp_path)
    trials = list(study.trials().get())
    records = outputs.write_outputs(str(tmp_path), trials, study_settings)
  finally:
    server._server.stop(grace=None)
  assert [(r["trial_id"], r["status"]) for r in records] == [
      (1, "completed"), (2, "completed")]
  assert records[0]["attempts"] == 2 and records[1]["attempts"] == 1
  # Resumed from its saved step, not retrained from scratch.
  starts = (tmp_path / "trials" / "1" / "starts.txt").read_text().split()
  assert starts[0] == "0" and int(starts[1]) >= killed_at > 0
  assert records[0]["wall_seconds"] > 0.5


def test_restarted_service_continues_the_study(tmp_path):
  study_settings = settings(**{"fake.steps": 5, "fake.step_seconds": 0.1})
  server, study = start(tmp_path, study_settings, seeds=["first"])
  workers = [spawn_worker(tmp_path, server.endpoint, k, 8) for k in (0, 1)]
  wait_for(lambda: len(finished(study)) >= 2, 90, "two finished trials")
  # The service goes away mid-study; workers keep retrying its address.
  server._server.stop(grace=None)
  time.sleep(2.0)
  server, study = start(tmp_path, study_settings, seeds=["first"])
  try:
    for w in workers:
      assert w.wait(timeout=120) == 0, worker_logs(tmp_path)
    trials = list(study.trials().get())
    records = outputs.write_outputs(str(tmp_path), trials, study_settings)
    history = controller_history(study)
  finally:
    server._server.stop(grace=None)
  assert [r["trial_id"] for r in records] == list(range(1, 9))
  assert all(r["status"] == "completed" for r in records), [
      (r["trial_id"], r.get("reason")) for r in records]
  assert [r.get("seed_name") for r in records].count("first") == 1
  assert sorted(map(json.dumps, history)) == sorted(
      json.dumps([r["decisions"], r["reward"]]) for r in records)
  for r in records:  # Each trial trained once, from step 0.
    starts = (tmp_path / "trials" / str(r["trial_id"]) / "starts.txt")
    assert starts.read_text().split() == ["0"]


def test_a_study_of_another_space_or_controller_is_refused(tmp_path):
  server, _ = start(tmp_path, settings())
  try:
    other = dict(settings(), controller="tests.official.search.tiny:other")
    with pytest.raises(ValueError, match="controller 'tests.official.search."
                       "tiny:tiny_controller'.*controller 'tests.official."
                       "search.tiny:other'"):
      engine.create_or_load_study(tiny.TinySpace(), other)
  finally:
    server._server.stop(grace=None)
