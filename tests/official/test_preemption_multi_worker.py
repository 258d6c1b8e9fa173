"""SIGTERM to one worker of a two-worker MultiWorkerMirroredStrategy run.

Both workers must stop after the same step (the other one would otherwise
wait in an all-reduce until it is killed). official/core/preemption.py hands
this to tf.distribute.experimental.PreemptionCheckpointHandler, which agrees
on the step through the coordination service. Here the non-chief worker 1 is
signalled: both workers save the same step (the chief writes it), print the
message and exit with status 143, and the restarted pair resumes from it.
Two processes on 127.0.0.1, the toy task (tests/official/toy.gin).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import tensorflow as tf

from official.core import preemption

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOY_GIN = os.path.join(REPO, "tests", "official", "toy.gin")
TIMEOUT = 180


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_pair(tmp_path, model_dir, name, *params):
  """Starts workers 0 and 1; returns (processes, output paths)."""
  workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
  processes, outputs = [], []
  for index in range(2):
    scratch = tmp_path / f"{name}_tmp{index}"
    scratch.mkdir()
    output = tmp_path / f"{name}_{index}.txt"
    tf_config = {"cluster": {"worker": workers},
                 "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               TMPDIR=str(scratch), TF_CONFIG=json.dumps(tf_config))
    with open(output, "w") as f:
      processes.append(subprocess.Popen(
          [sys.executable, "-m", "official.train", f"--model_dir={model_dir}",
           "--strategy=multi_worker_mirrored", f"--gin_file={TOY_GIN}",
           "--mode=train", "--gin_param=Trainer.steps_per_loop=1",
           "--gin_param=Trainer.checkpoint_every_steps=100", *params],
          cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
    outputs.append(output)
  return processes, outputs


def _wait(processes, outputs):
  try:
    for process in processes:
      process.wait(timeout=TIMEOUT)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  return [p.returncode for p in processes], [o.read_text() for o in outputs]


def test_sigterm_on_one_worker_saves_the_same_step_on_both(tmp_path):
  model_dir = str(tmp_path / "run")
  processes, outputs = _start_pair(tmp_path, model_dir, "first",
                                   "--gin_param=ToyTask.input_delay_secs=0.3")
  deadline = time.time() + TIMEOUT
  while ("step 3/16" not in outputs[0].read_text() and
         all(p.poll() is None for p in processes) and time.time() < deadline):
    time.sleep(0.1)
  processes[1].send_signal(signal.SIGTERM)
  codes, texts = _wait(processes, outputs)
  both = "\n".join(f"--- worker {i} ---\n{t}" for i, t in enumerate(texts))
  assert codes == [preemption.EXIT_CODE] * 2, both
  steps = set()
  for text in texts:
    last = [line for line in text.splitlines() if line.strip()][-1]
    match = re.fullmatch(
        r"official\.train: PreemptedError: Preempted \(SIGTERM\) after step "
        r"(\d+): saved (\S+)\. Run the same command again to resume from it "
        r"\(exit status 143\)\.", last)
    assert match, both
    steps.add(int(match.group(1)))
    assert match.group(2) == os.path.join(model_dir,
                                          f"ckpt-{match.group(1)}"), both
  assert len(steps) == 1, both
  step = steps.pop()
  assert 3 <= step < 16, both
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{step}"), both

  processes, outputs = _start_pair(
      tmp_path, model_dir, "again",
      f"--gin_param=Trainer.max_train_steps={step + 2}")
  codes, texts = _wait(processes, outputs)
  both = "\n".join(f"--- worker {i} ---\n{t}" for i, t in enumerate(texts))
  assert codes == [0, 0], both
  for text in texts:
    assert f"Resumed from step {step} ({model_dir}/ckpt-{step})" in text, both
  assert tf.train.latest_checkpoint(model_dir).endswith(
      f"ckpt-{step + 2}"), both
