"""scripts/benchmarks/benchmark.py: tiny runs, their JSON checked.

Only the shape of the report and that every figure is a positive number are
checked; speed never is (docs/design.md, Tests). The script runs in
a subprocess from a directory outside the repository, as a user would run it
from anywhere. The peer cannot run here (no .venv-peer): what benchmark.py
asks of it (`peer_serve_spec`) and the ratios are checked on the module,
imported without its flags.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

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
       "--mode=input,train,forward", "--op_profile=1"],
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
    # --op_profile: one more step under the profiler, its CPU op time by
    # type; the backbone's convolutions and batch norms are in it.
    profile = report[mode]["op_profile"]
    assert profile["steps"] == 1 and _positive(profile["op_time_ms"])
    assert profile["share"]["convolution"] > 0
    assert sum(profile["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert any("Conv2D" in op for op, _, _ in profile["top_ops"])
  # A training step runs batch-norm kernels (statistics and gradients).
  assert report["train"]["op_profile"]["share"]["batch_norm"] > 0
  assert "op_profile" not in report["input"]
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


def test_serve_mode_times_the_exported_saved_model(tmp_path):
  # The smoke RetinaNet at its smallest legal size (a multiple of
  # 2^max_level = 128): export through official.exporting, load, 2 calls.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--gin_file={CONFIG}", "--mode=serve",
       "--steps=2", "--warmup_steps=1", "--batch_size=1"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-8000:]
  report = json.loads(result.stdout)

  assert "serve" in report
  assert not {"forward", "train", "input"} & set(report)
  serve = report["serve"]
  assert "error" not in serve, serve
  for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_mean",
              "images_per_sec", "export_s", "saved_model_mb", "load_s",
              "first_call_s", "peak_host_memory_mb"):
    assert _positive(serve[key]), (key, serve)
  assert (serve["latency_ms_min"] <= serve["latency_ms_p50"] <=
          serve["latency_ms_p90"] <= serve["latency_ms_max"])
  # Batch 1: one image per call.
  assert abs(serve["images_per_sec"] -
             1000.0 / serve["latency_ms_mean"]) < 0.01 * serve[
                 "images_per_sec"]
  assert serve["steps"] == 2 and serve["warmup_steps"] == 1
  assert serve["input"] == "image_tensor uint8 [1, 128, 128, 3]"
  assert serve["outputs"] == ["detection_boxes", "detection_classes",
                              "detection_scores", "num_detections"]
  assert 0 <= serve["num_detections"] <= 100
  assert serve["nms"]["nms_method"] == "combined"
  # The serving export reads no data: the smoke COCO set was not written.
  assert not (tmp_path / "data").exists()


def _benchmark_module():
  """scripts/benchmarks/benchmark.py imported (its flags stay undefined)."""
  spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _retinanet_task(**kwargs):
  from official.tasks import retinanet  # pylint: disable=g-import-not-at-top
  return retinanet.RetinaNetTask(backbone=None, data=None, image_size=256,
                                 **kwargs)


def test_peer_serve_spec_maps_our_nms_to_model_gardens():
  benchmark = _benchmark_module()
  task = _retinanet_task(pre_nms_top_k=1000, score_threshold=0.3,
                         nms_iou_threshold=0.6, max_detections=50)
  spec = benchmark.peer_serve_spec(task)
  assert spec["image_size"] == 256 and spec["batch_size"] == 1
  assert spec["input_type"] == "image_tensor"
  assert spec["image_seed"] == benchmark.SERVE_IMAGE_SEED
  assert spec["detection_generator"] == {
      "apply_nms": True, "nms_version": "batched", "pre_nms_top_k": 1000,
      "pre_nms_score_threshold": 0.3, "nms_iou_threshold": 0.6,
      "max_num_detections": 50}
  # Model Garden's "batched" ignores pre_nms_top_k: said, with our k.
  assert any("no pre_nms_top_k" in note and "top 1000" in note
             for note in spec["differences"]), spec["differences"]

  padded = benchmark.peer_serve_spec(_retinanet_task(nms_method="batched"))
  assert padded["detection_generator"]["nms_version"] == "v2"

  forced = benchmark.peer_serve_spec(task, nms_version="v2")
  assert forced["detection_generator"]["nms_version"] == "v2"
  assert any("--peer_nms_version" in note for note in forced["differences"])

  with pytest.raises(ValueError, match="--peer_nms_version='v9'.*batched"):
    benchmark.peer_serve_spec(task, nms_version="v9")


def test_peer_serve_spec_refuses_tasks_without_a_serving_module():
  benchmark = _benchmark_module()

  class SegmentationTask:
    image_size = 128

  with pytest.raises(ValueError, match="no Model Garden serving module for "
                     "SegmentationTask"):
    benchmark.peer_serve_spec(SegmentationTask())


def test_serve_ratios_are_speedups_above_one_when_ours_is_faster():
  benchmark = _benchmark_module()
  ours = {"serve": {"latency_ms_p50": 50.0, "latency_ms_p90": 60.0,
                    "images_per_sec": 19.0, "saved_model_mb": 100.0}}
  peer = {"serve": {"latency_ms_p50": 75.0, "latency_ms_p90": 66.0,
                    "images_per_sec": 12.5, "saved_model_mb": 125.0}}
  assert benchmark.ratios(ours, peer) == {
      "serve_speedup_p50": 1.5, "serve_speedup_p90": 1.1,
      "serve_images_per_sec": 1.52, "serve_saved_model_mb": 0.8}


def test_throughput_ratios_come_from_unrounded_step_times():
  # 640 px, batch 2: images_per_sec rounded to 0.469 / 0.354 would say
  # 1.3249; the step times say 5646.82 / 4262.57 = 1.3247.
  benchmark = _benchmark_module()
  ours = {"train": {"images_per_sec_median": 0.469,
                    "step_time_ms_median": 4262.57,
                    "images_per_sec": 0.47, "step_time_ms": 4255.0,
                    "peak_host_memory_mb": 3000.0}}
  peer = {"train": {"images_per_sec_median": 0.354,
                    "step_time_ms_median": 5646.82,
                    "images_per_sec": 0.35, "step_time_ms": 5714.0,
                    "peak_host_memory_mb": 4000.0}}
  assert benchmark.ratios(ours, peer) == {
      "train_images_per_sec_median": 1.3247,
      "train_images_per_sec": 1.3429, "train_peak_host_memory_mb": 0.75}


def _repeat_module():
  spec = importlib.util.spec_from_file_location(
      "repeat", os.path.join(REPO, "scripts", "benchmarks", "repeat.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_repeat_summarizes_ratios_and_step_times_over_runs():
  repeat = _repeat_module()
  def report(ours_ms, peer_ms):
    return {"ours": {"forward": {"step_time_ms_median": ours_ms}},
            "peer": {"forward": {"step_time_ms_median": peer_ms}},
            "ratio": {"forward_images_per_sec_median": peer_ms / ours_ms}}
  summary = repeat.summarize([report(50.0, 60.0), report(40.0, 40.0),
                              report(60.0, 48.0)])
  ratio = summary["ratio.forward_images_per_sec_median"]
  assert ratio["values"] == [1.2, 1.0, 0.8]
  assert ratio["median"] == 1.0 and ratio["min"] == 0.8
  assert ratio["max"] == 1.2
  assert summary["ours.forward.step_time_ms_median"]["median"] == 50.0
  assert summary["peer.forward.step_time_ms_median"]["values"] == [
      60.0, 40.0, 48.0]
  # A run whose mode failed ({"error": ...}) is left out of that figure.
  failed = {"ours": {"forward": {"error": "OOM"}}, "ratio": {}}
  summary = repeat.summarize([report(50.0, 60.0), failed])
  assert summary["ours.forward.step_time_ms_median"]["values"] == [50.0,
                                                                   None]
  assert summary["ours.forward.step_time_ms_median"]["median"] == 50.0
  # --op_profile shares are summarised per side, mode and group.
  profiled = report(50.0, 60.0)
  profiled["peer"]["forward"]["op_profile"] = {
      "share": {"convolution": 0.8, "batch_norm": 0.05, "other": 0.15}}
  summary = repeat.summarize([profiled])
  assert summary["peer.forward.op_profile.share.other"]["values"] == [0.15]


def test_repeat_runs_the_benchmark_in_fresh_processes(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  script = os.path.join(REPO, "scripts", "benchmarks", "repeat.py")
  result = subprocess.run(
      [sys.executable, script, "--runs=2", "--", f"--gin_file={CONFIG}",
       "--steps=1", "--warmup_steps=1", "--batch_size=1", "--mode=forward"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-8000:]
  out = json.loads(result.stdout)
  assert len(out["runs"]) == 2
  assert all(_positive(r["forward"]["images_per_sec"]) for r in out["runs"])
  times = out["summary"]["ours.forward.step_time_ms_median"]
  assert len(times["values"]) == 2 and times["min"] <= times["median"]
  assert "[repeat] run 2/2" in result.stderr


def test_repeat_stops_when_a_run_would_fail_the_same_way(tmp_path):
  script = os.path.join(REPO, "scripts", "benchmarks", "repeat.py")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, script, "--runs=3", "--", f"--gin_file={CONFIG}",
       "--batch_sise=2"], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 1
  assert "Unknown command line flag 'batch_sise'" in result.stderr
  assert "run 1 printed no JSON" in result.stderr
  assert "[repeat] run 2/3" not in result.stderr
  assert json.loads(result.stdout) == {"runs": [], "summary": {}}


def test_repeat_stops_and_fails_when_the_peer_fails(tmp_path):
  # As test_an_unavailable_peer_is_reported_not_fatal: a venv path under a
  # regular file cannot be created, so the peer is unavailable.
  blocker = tmp_path / "not-a-directory"
  blocker.write_text("")
  script = os.path.join(REPO, "scripts", "benchmarks", "repeat.py")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, script, "--runs=2", "--", f"--gin_file={CONFIG}",
       "--steps=1", "--warmup_steps=1", "--batch_size=1", "--mode=forward",
       "--peer", f"--peer_venv={blocker / 'venv'}"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-4000:]
  out = json.loads(result.stdout)
  assert len(out["runs"]) == 1 and "error" in out["runs"][0]["peer"]
  assert "the peer failed" in result.stderr
  assert "[repeat] run 2/2" not in result.stderr
  # Our own figures of the finished run are still summarised.
  assert len(out["summary"]["ours.forward.step_time_ms_median"]["values"]) == 1


def test_repeat_needs_the_benchmark_flags():
  script = os.path.join(REPO, "scripts", "benchmarks", "repeat.py")
  result = subprocess.run([sys.executable, script, "--runs=2"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert "--gin_file=EXPERIMENT.gin" in result.stderr
  # benchmark.py's flags before -- are named as such.
  result = subprocess.run([sys.executable, script, "--runs=1",
                           f"--gin_file={CONFIG}"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert "benchmark.py's flags go after --" in result.stderr


@pytest.mark.parametrize("flags,message", [
    (["--op_profile=1", "--jit_compile"],
     "XLA-compiled steps run none"),
    (["--op_profile=-1"], "--op_profile=-1"),
    (["--steps=0"], "--steps=0"),
])
def test_bad_benchmark_flags_are_refused_before_any_work(flags, message):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run([sys.executable, SCRIPT, f"--gin_file={CONFIG}",
                           *flags], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Building the model" not in result.stderr
  assert result.stdout == ""
