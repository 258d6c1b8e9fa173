"""configs/smoke/: each trains two steps and evaluates through the real entry point.

The eval-only rerun, with no --gin_file, rebuilds the model from the model
directory's config.gin and must reproduce the metrics of the training run.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-m", "official.train", *args], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
  return result.stdout + result.stderr


def read_metrics(model_dir):
  with open(os.path.join(model_dir, "eval_metrics.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("config,data_param,metric", [
    ("configs/smoke/classification.gin", "digits_records.data_dir",
     "top_1_accuracy"),
    ("configs/smoke/retinanet.gin", "synthetic_coco_records.data_dir", "AP50"),
    ("configs/smoke/eff_spinenet_m0.gin", "synthetic_coco_records.data_dir",
     "AP50"),
    ("configs/smoke/maskrcnn.gin", "synthetic_coco_mask_records.data_dir",
     "mask_AP50"),
    ("configs/smoke/faster_rcnn.gin", "synthetic_coco_records.data_dir",
     "AP50"),
    ("configs/smoke/auto_fpn.gin", "synthetic_coco_records.data_dir",
     "AP50"),
    ("configs/smoke/segmentation.gin", "synthetic_pascal_records.data_dir",
     "mIoU"),
])
def test_smoke_config_trains_evaluates_and_reevaluates(tmp_path, config,
                                                       data_param, metric):
  model_dir = str(tmp_path / "run")
  data = f"--gin_param={data_param} = '{tmp_path / 'data'}'"
  log = run_train(f"--gin_file={config}", data, f"--model_dir={model_dir}")
  assert "step 2/2" in log
  for name in ("config.gin", "operative_config.gin", "checkpoint"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  trained = read_metrics(model_dir)
  assert trained["step"] == 2 and metric in trained
  # The smoke file's own expected result (configs/smoke/*.gin) is checked.
  verdict = trained.pop("expected_result")
  assert verdict["held"] and "Expected result held" in log, verdict

  os.remove(os.path.join(model_dir, "eval_metrics.json"))
  run_train("--mode=eval", f"--model_dir={model_dir}")
  reevaluated = read_metrics(model_dir)
  assert reevaluated.pop("expected_result")["held"]
  assert reevaluated == pytest.approx(trained)
