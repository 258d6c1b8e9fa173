"""Resource distribution (Eff-SpineNet eq. 2-4) and its command-line tool."""

import os
import subprocess
import sys

import gin
import pytest

from modeling import analysis
from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones import resource_distribution as rd
from modeling.backbones.spinenet_mbconv import MBCONV_BLOCK_SPECS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
D0 = list(eff_lib.EFF_SPINENET_D0_FILTERS)
LEVELS = rd.block_levels(MBCONV_BLOCK_SPECS)


def test_alphas_preserve_the_target_before_rounding():
  flops = rd.block_flops(D0, LEVELS, 512)
  betas = [1, 5, 10, 15, 20, 1, 5, 10, 15, 20, 1, 5, 10, 15, 20, 1, 5, 10]
  _, alphas = rd.distribute(D0, flops, betas)
  assert sum(a * f for a, f in zip(alphas, flops)) == pytest.approx(sum(flops))
  assert alphas[4] / alphas[0] == pytest.approx(20.0)


@pytest.mark.parametrize("widths,size,repeats", [
    (D0, 512, 1),
    (list(eff_lib.SP_EFFICIENTNET_B0_FILTERS), 512, 1),
    (D0, 640, list(eff_lib.SCALING_MAP["D1"]["block_repeats"])),
])
def test_100_samples_within_10_percent_of_target_flops(widths, size, repeats):
  samples = rd.sample(widths, LEVELS, size, repeats, num_samples=100, seed=1)
  assert len(samples) == 100
  for s in samples:
    assert 0.9 <= s["relative_flops"] <= 1.1, s
    assert all(w % 8 == 0 and w >= 8 for w in s["widths"]), s
    assert set(s["betas"]) <= set(rd.BETAS)
  assert len({tuple(s["widths"]) for s in samples}) > 90


def test_measured_backbone_follows_the_analytic_estimate():
  """Built backbones: the analytic F_i leave out resampling, SE and endpoints,
  so a measured total moves a little more than the estimate (see the module
  doc); it stays within 20% here."""
  size = 256
  base = analysis.count_multiply_adds(
      eff_lib.eff_spinenet((size, size, 3), "D0"), (size, size, 3))
  for s in rd.sample(D0, LEVELS, size, 1, num_samples=2, seed=3):
    model = eff_lib.eff_spinenet((size, size, 3), "D0",
                                 block_filters=s["widths"])
    measured = analysis.count_multiply_adds(model, (size, size, 3))
    assert 0.8 <= measured / base <= 1.2, (s, measured / base)


def test_tool_writes_gin_that_builds(tmp_path):
  out = tmp_path / "widths.gin"
  experiment = "configs/experiments/retinanet/eff_spinenet_m0_coco.gin"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  result = subprocess.run(
      [sys.executable, "-m", "official.resource_distribution",
       f"--gin_file={experiment}", "--num_samples=2", "--seed=0",
       "--measure=false", f"--output={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "sample 1: widths" in result.stdout
  from official import registry  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, experiment), str(out)], [], skip_unknown=False)
  task = registry.experiment()
  task.image_size = 128
  model = task.build_model()
  assert model.count_params() > 0
  gin.clear_config()
