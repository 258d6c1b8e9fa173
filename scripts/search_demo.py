r"""The `mini` search demonstration, with one worker kill and one service kill.

  python scripts/search_demo.py --search_dir=runs/search_demo

Runs the Vizier service (python -m official.search --role=service) and two
workers (--role=worker) of a `mini` SpineNet search on the digits proxy
(configs/search/spinenet_mini_digits.gin), seeded with SpineNet-49 and the
sequential architecture. Once 2 trials have finished it SIGKILLs worker-1
while it trains and starts it again; once 4 have finished it SIGKILLs the
service and starts it again. Then it checks that the study completed with
every trial id exactly once (none lost or repeated), retrains the best
architecture's gin file through python -m official.train, and prints the
trial's reward next to the retrained one (tolerance: --tolerance, top-1).
About 10-20 minutes on an idle 2-core CPU.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY = "configs/search/spinenet_mini_digits.gin"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--search_dir", default="runs/search_demo")
  parser.add_argument("--num_trials", type=int, default=8)
  parser.add_argument("--controller", default="evolution")
  parser.add_argument("--port", type=int, default=16006)
  parser.add_argument("--tolerance", type=float, default=0.01)
  args = parser.parse_args()
  search_dir = os.path.abspath(args.search_dir)
  os.makedirs(search_dir, exist_ok=True)
  endpoint = f"localhost:{args.port}"
  common = [f"--search_dir={search_dir}", f"--num_trials={args.num_trials}"]
  service_argv = [sys.executable, "-m", "official.search", "--role=service",
                  "--space=mini", f"--controller={args.controller}",
                  f"--gin_file={PROXY}", f"--vizier_endpoint={endpoint}",
                  "--num_workers=2", "--seed_architectures=spinenet49,sequential",
                  *common]

  def start(argv, name):
    log = open(os.path.join(search_dir, f"demo_{name}.log"), "a")
    return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

  def worker(k):
    return start([sys.executable, "-m", "official.search", "--role=worker",
                  f"--vizier_endpoint={endpoint}", f"--worker_index={k}",
                  *common], f"worker{k}")

  def finished():
    path = os.path.join(search_dir, "trials.jsonl")
    if not os.path.exists(path):
      return []
    with open(path) as f:
      return [json.loads(line) for line in f]

  t0 = time.time()
  service = start(service_argv, "service")
  time.sleep(15)  # The service is up before the workers ask.
  workers = [worker(0), worker(1)]
  killed_worker = killed_service = False
  while service.poll() is None or len(finished()) < args.num_trials:
    done = len(finished())
    if not killed_worker and done >= 2:
      workers[1].send_signal(signal.SIGKILL)
      workers[1].wait()
      print(f"[{time.time() - t0:.0f} s] killed worker-1 mid-trial "
            f"({done} finished); restarting it", flush=True)
      time.sleep(3)
      workers[1] = worker(1)
      killed_worker = True
    if killed_worker and not killed_service and done >= 4:
      service.send_signal(signal.SIGKILL)
      service.wait()
      print(f"[{time.time() - t0:.0f} s] killed the service ({done} "
            "finished); restarting it", flush=True)
      time.sleep(5)
      service = start(service_argv, "service")
      killed_service = True
    if service.poll() is not None and service.returncode != 0:
      sys.exit(f"The service failed; see {search_dir}/demo_service.log")
    time.sleep(2)
  for w in workers:
    w.wait(timeout=120)
  records = finished()
  ids = [r["trial_id"] for r in records]
  assert ids == list(range(1, args.num_trials + 1)), f"trial ids {ids}"
  print(f"Study complete in {time.time() - t0:.0f} s: {len(records)} trials, "
        f"ids 1..{args.num_trials} each once; "
        f"{sum(r['status'] == 'completed' for r in records)} completed, "
        f"{sum(r['status'] == 'infeasible' for r in records)} infeasible.")
  for r in records:
    print(f"  trial {r['trial_id']}: {r['status']} reward={r['reward']} "
          f"worker={r['worker']} attempts={r['attempts']} "
          f"wall={r['wall_seconds']:.0f} s {r.get('seed_name', '')}")
  best = max((r for r in records if r["status"] == "completed"),
             key=lambda r: r["reward"])
  retrain_dir = os.path.join(search_dir, "retrain_best")
  subprocess.run([sys.executable, "-m", "official.train", f"--gin_file={PROXY}",
                  f"--gin_file={os.path.join(search_dir, 'best_block_specs.gin')}",
                  f"--model_dir={retrain_dir}", "--mode=train_and_eval"],
                 cwd=REPO, check=True, capture_output=True)
  with open(os.path.join(retrain_dir, "eval_metrics.json")) as f:
    retrained = json.load(f)["top_1_accuracy"]
  ok = abs(retrained - best["reward"]) <= args.tolerance
  print(f"Best trial {best['trial_id']}: top-1 {best['reward']:.4f}; retrained "
        f"from best_block_specs.gin: {retrained:.4f} (|diff| "
        f"{abs(retrained - best['reward']):.4f}, tolerance {args.tolerance}): "
        f"{'OK' if ok else 'OUTSIDE TOLERANCE'}")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
