"""scripts/benchmarks/benchmark.py: one tiny run, its JSON checked.

Only the shape of the report and that every figure is a positive number are
checked; speed never is (docs/design.md, Tests). The script runs in
a subprocess from a directory outside the repository, as a user would run it
from anywhere.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "benchmarks", "benchmark.py")
CONFIG = os.path.join(REPO, "configs", "smoke", "retinanet.gin")


def _positive(value):
  return isinstance(value, (int, float)) and not isinstance(
      value, bool) and value > 0


def test_benchmark_reports_every_mode_of_the_smoke_retinanet(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  data_dir = tmp_path / "coco"
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--gin_file={CONFIG}",
       f"--gin_param=synthetic_coco_records.data_dir = '{data_dir}'",
       "--steps=2", "--warmup_steps=1", "--batch_size=2",
       "--mode=input,train,forward"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-8000:]
  report = json.loads(result.stdout)  # stdout holds the JSON and only it.

  assert report["experiment"] == CONFIG
  assert report["task"] == "RetinaNetTask"
  assert report["image_size"] == 128 and report["batch_size"] == 2
  assert report["synthetic_inputs"] is True
  assert report["device"]["type"] == "CPU" and report["device"]["name"]
  assert _positive(report["params"]) and _positive(report["trainable_params"])
  assert report["backbone"].startswith("spinenet")
  assert "peer" not in report and "ratio" not in report
  for mode in ("input", "train", "forward"):
    figures = report[mode]
    assert "error" not in figures, figures
    for key in ("images_per_sec", "step_time_ms", "peak_host_memory_mb"):
      assert _positive(figures[key]), (mode, key, figures)
    assert figures["steps"] == 2 and figures["warmup_steps"] == 1
    assert "peak_device_memory_mb" not in figures  # CPU only.
  for mode in ("train", "forward"):
    assert _positive(report[mode]["first_step_s"])
  # Modes run in the order forward, train, input; the peak only grows.
  assert (report["forward"]["peak_host_memory_mb"] <=
          report["train"]["peak_host_memory_mb"] <=
          report["input"]["peak_host_memory_mb"])
  assert report["optimizer"]["weight_decay"] == 4e-5  # The experiment's.
  # The input mode wrote the smoke COCO set where the gin binding said.
  assert (data_dir / "tfrecords" / "DONE").exists()


def test_an_unavailable_peer_is_reported_not_fatal(tmp_path):
  # A venv path under a regular file cannot be created: the peer is
  # unavailable, as without network to PyPI, and nothing is downloaded.
  blocker = tmp_path / "not-a-directory"
  blocker.write_text("")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--gin_file={CONFIG}", "--mode=forward",
       "--steps=1", "--warmup_steps=1", "--batch_size=1", "--peer",
       f"--peer_venv={blocker / 'venv'}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-8000:]
  report = json.loads(result.stdout)
  assert set(report) == {"ours", "peer", "ratio"}
  assert _positive(report["ours"]["forward"]["images_per_sec"])
  assert "unavailable" in report["peer"]["error"]
  assert report["ratio"] == {}
