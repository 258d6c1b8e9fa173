"""`python -m official.train` end to end on the toy task, in subprocesses.

Each run is a fresh process (as in production), limited by a timeout; its
output is printed when a check fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOY_GIN = os.path.join(REPO, "tests", "official", "toy.gin")
TIMEOUT = 90


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.update(extra)
  return env


def _command(model_dir, *args, gin_file=TOY_GIN, strategy="one_device"):
  command = [sys.executable, "-m", "official.train",
             f"--model_dir={model_dir}", f"--strategy={strategy}"]
  if gin_file:
    command.append(f"--gin_file={gin_file}")
  return command + list(args)


def run(model_dir, *args, expect_ok=True, env=None, **kwargs):
  """Runs official.train; returns its combined output; checks the exit code."""
  result = subprocess.run(
      _command(model_dir, *args, **kwargs), cwd=REPO, env=env or _env(),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=TIMEOUT, check=False)
  if (result.returncode == 0) != expect_ok:
    print(result.stdout)
    pytest.fail(f"official.train exited with {result.returncode} "
                f"(expected {'0' if expect_ok else 'an error'}); output above")
  return result.stdout


def check(condition, output, what):
  if not condition:
    print(output)
    pytest.fail(f"{what}; official.train output above")


def checkpoint_values(path):
  """Variables of a checkpoint (save_counter aside): name -> numpy array."""
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith(("save_counter", "_CHECKPOINTABLE"))}


def test_train_writes_configs_checkpoints_and_metrics_then_resumes(tmp_path):
  model_dir = str(tmp_path / "run")
  out = run(model_dir, "--mode=train", "--gin_param=Trainer.max_train_steps=8")
  for name in ("config.gin", "operative_config.gin", "checkpoint",
               "ckpt-8.index"):
    check(tf.io.gfile.exists(f"{model_dir}/{name}"), out, f"no {name}")
  config = tf.io.gfile.GFile(f"{model_dir}/config.gin").read()
  check("experiment.task = @ToyTask()" in config and
        "import tests.official.toy_task" in config, config, "config.gin")
  operative = tf.io.gfile.GFile(f"{model_dir}/operative_config.gin").read()
  check("build_optimizer.momentum = 0.9" in operative and
        "Trainer.steps_per_loop = 4" in operative, operative,
        "operative_config.gin lacks the values used")
  check("step 8/8 | total_loss" in out and "examples/s" in out and
        "ETA" in out, out, "no progress line")

  # The same experiment without the cap continues from step 8.
  out = run(model_dir, "--mode=train_and_eval")
  check("Resumed from step 8" in out, out, "did not resume from step 8")
  check(tf.io.gfile.exists(f"{model_dir}/ckpt-16.index"), out, "no ckpt-16")
  metrics = json.loads(tf.io.gfile.GFile(
      f"{model_dir}/eval_metrics.json").read())
  check(metrics["step"] == 16 and metrics["num_examples"] == 20 and
        metrics["accuracy"] > 0.5, out, f"eval_metrics.json: {metrics}")
  for sub in ("train", "eval"):
    check(tf.io.gfile.glob(f"{model_dir}/{sub}/events.out.tfevents.*"), out,
          f"no {sub} summaries")

  # Eval rebuilds the model from the directory's config.gin alone.
  out = run(model_dir, "--mode=eval", gin_file=None)
  check("Evaluation at step 16" in out and "accuracy" in out, out,
        "eval from config.gin")


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
  params = ["--mode=train", "--gin_param=Trainer.deterministic_seed=7",
            "--gin_param=Trainer.train_epochs=3",  # 24 steps.
            "--gin_param=Trainer.steps_per_loop=2",
            "--gin_param=Trainer.checkpoint_every_steps=2",
            "--gin_param=Trainer.keep_checkpoints=2"]
  reference = str(tmp_path / "reference")
  run(reference, *params)

  killed = str(tmp_path / "killed")
  slow = params + ["--gin_param=ToyTask.input_delay_secs=0.1"]
  process = subprocess.Popen(
      _command(killed, *slow), cwd=REPO, env=_env(), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + TIMEOUT
  while (not tf.io.gfile.exists(f"{killed}/checkpoint") and
         process.poll() is None and time.time() < deadline):
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  first_output = process.communicate(timeout=30)[0]
  check(process.returncode == -signal.SIGKILL, first_output,
        "the run finished before it could be killed")
  check(not tf.io.gfile.exists(f"{killed}/ckpt-24.index"), first_output,
        "the run was killed too late")

  out = run(killed, *slow)
  check("Resumed from step" in out, out, "the rerun did not resume")
  check(tf.train.latest_checkpoint(killed).endswith("ckpt-24"), out,
        "the rerun did not finish at step 24")
  expected = checkpoint_values(f"{reference}/ckpt-24")
  found = checkpoint_values(f"{killed}/ckpt-24")
  assert sorted(found) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(found[name], value, err_msg=name)


def test_nan_loss_stops_before_saving_and_keeps_the_last_checkpoint(tmp_path):
  model_dir = str(tmp_path / "nan")
  out = run(model_dir, "--mode=train", "--gin_param=ToyTask.nan_at_step=5",
            "--gin_param=Trainer.steps_per_loop=2",
            "--gin_param=Trainer.checkpoint_every_steps=2",
            expect_ok=False)
  check("NonFiniteLossError" in out and "steps 5..6" in out and
        "ckpt-4" in out and "learning rate" in out and
        "clipnorm" in out, out, "the NaN message")
  check(tf.train.latest_checkpoint(model_dir).endswith("ckpt-4"), out,
        "the last good checkpoint is not the latest")
  check(not tf.io.gfile.glob(f"{model_dir}/ckpt-6*"), out, "saved a NaN step")
  values = checkpoint_values(f"{model_dir}/ckpt-4")
  check(values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 4, out, "step")
  for name, value in values.items():
    check(np.all(np.isfinite(value)), out, f"{name} is not finite")


@pytest.mark.parametrize("case", ["unknown_binding", "unwritable", "eval",
                                  "tpu"])
def test_bad_input_fails_with_a_clear_message(tmp_path, case):
  model_dir = str(tmp_path / "run")
  if case == "unknown_binding":
    out = run(model_dir, "--gin_param=Trainer.train_epoch = 2",
              expect_ok=False)
    expected = ("Gin configurable 'Trainer' has no parameter 'train_epoch' "
                "(binding in --gin_param='Trainer.train_epoch = 2')")
  elif case == "unwritable":
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model_dir = str(blocker / "run")
    out = run(model_dir, expect_ok=False)
    expected = f"model_dir '{model_dir}' is not writable"
    check("Built toy" not in out, out, "built a model before failing")
  elif case == "eval":
    out = run(model_dir, "--mode=eval", expect_ok=False)
    expected = (f"--mode=eval: no checkpoint in {model_dir}; train first or "
                f"pass a model_dir that has one.")
  else:
    out = run(model_dir, "--tpu=nonexistent", strategy="tpu",
              expect_ok=False)
    expected = "no TPU named 'nonexistent' could be reached"
  check(expected in out, out, f"expected {expected!r}")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_multi_worker_mirrored_two_processes(tmp_path):
  model_dir = str(tmp_path / "mwms")
  workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
  processes = []
  for index in range(2):
    scratch = tmp_path / f"tmp{index}"
    scratch.mkdir()
    tf_config = {"cluster": {"worker": workers},
                 "task": {"type": "worker", "index": index}}
    processes.append(subprocess.Popen(
        _command(model_dir, "--mode=train_and_eval",
                 "--gin_param=Trainer.max_train_steps=4",
                 "--gin_param=Trainer.checkpoint_every_steps=4",
                 strategy="multi_worker_mirrored"),
        cwd=REPO, env=_env(TF_CONFIG=json.dumps(tf_config),
                           TMPDIR=str(scratch)),
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=TIMEOUT)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  both = "\n".join(f"--- worker {i} ---\n{o}" for i, o in enumerate(outputs))
  check(all(p.returncode == 0 for p in processes), both, "a worker failed")
  check("2 replica(s)" in outputs[0], both, "not 2 replicas")
  check(tf.train.latest_checkpoint(model_dir).endswith("ckpt-4"), both,
        "the chief wrote no ckpt-4")
  names = {name.rstrip("/") for name in tf.io.gfile.listdir(model_dir)}
  check(names == {"checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
                  "config.gin", "operative_config.gin", "train", "eval",
                  "eval_metrics.json"}, both,
        f"unexpected files in model_dir: {sorted(names)}")
  # Evaluation gathered every example exactly once across the two workers.
  metrics = json.loads(tf.io.gfile.GFile(
      f"{model_dir}/eval_metrics.json").read())
  check(metrics["step"] == 4 and metrics["num_examples"] == 20, both,
        f"eval_metrics.json: {metrics}")
  # The non-chief's temporary checkpoint directory is gone.
  check(not os.listdir(tmp_path / "tmp1"), both,
        f"worker 1 left {os.listdir(tmp_path / 'tmp1')}")
