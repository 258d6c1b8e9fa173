"""python -m official.draw_architecture: experiment and backbone gin files."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import gin
import pytest
from PIL import Image

from modeling import architecture_drawing
from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS
from official import draw_architecture

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SVG = "{http://www.w3.org/2000/svg}"


def _config(path):
  return os.path.join(REPO_ROOT, "configs", path)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _svg_groups(path, cls):
  root = ET.parse(path).getroot()
  return [g for g in root.iter(SVG + "g") if g.get("class") == cls]


def test_spinenet49_experiment_to_svg(tmp_path):
  output = str(tmp_path / "drawings" / "spinenet49.svg")
  graph = draw_architecture.draw_architecture(
      [_config("experiments/retinanet/spinenet49_coco.gin")], [], output)
  assert graph.title == "SpineNet-49 (bottleneck/residual blocks)"
  blocks = _svg_groups(output, "block")
  assert len(blocks) == 2 + len(SPINENET_BLOCK_SPECS)
  assert len(_svg_groups(output, "edge")) == len(graph.edges) == 31
  assert sorted(g.get("data-output") for g in blocks
                if g.get("data-output")) == ["3", "4", "5", "6", "7"]


def test_eff_spinenet_d0_experiment_to_png(tmp_path):
  output = str(tmp_path / "d0.png")
  graph = draw_architecture.draw_architecture(
      [_config("experiments/retinanet/eff_spinenet_d0_coco.gin")], [], output,
      png_scale=1)
  assert graph.title == "Eff-SpineNet-D0 (MBConv blocks)"
  assert [n.width for n in graph.nodes] == list(
      eff_lib.EFF_SPINENET_D0_FILTERS)
  lay = architecture_drawing.layout(graph)
  with Image.open(output) as image:
    assert image.format == "PNG"
    assert image.size == (lay.width, lay.height)


def test_backbone_file_and_gin_params(tmp_path):
  """A configs/backbones file alone is enough; --gin_param applies on top."""
  output = str(tmp_path / "net.svg")
  graph = draw_architecture.draw_architecture(
      [_config("backbones/spinenet49.gin")], ["spinenet.model_id = '96'"],
      output, title="My SpineNet")
  assert graph.display_name == "SpineNet-96"
  assert {n.repeats for n in graph.nodes} == {2}
  root = ET.parse(output).getroot()
  assert root.find(SVG + "title").text == "My SpineNet"
  mbconv = draw_architecture.draw_architecture(
      [_config("backbones/spinenet49_mbconv.gin")], [], output)
  assert mbconv.block_types == ["mbconv"]


def test_resnet_config_is_refused_with_the_reason(tmp_path):
  output = tmp_path / "r50.svg"
  experiment = _config("experiments/retinanet/r50_fpn_coco.gin")
  with pytest.raises(ValueError) as e:
    draw_architecture.draw_architecture([experiment], [], str(output))
  message = str(e.value)
  assert "r50_fpn_coco.gin" in message
  assert "needs a scale-permuted backbone" in message and "ResNet" in message
  assert not output.exists()


def test_bad_extension_fails_before_reading_the_config(tmp_path):
  with pytest.raises(ValueError, match=r"'net\.jpg'.*expected \.svg or \.png"):
    draw_architecture.draw_architecture(["no/such/file.gin"], [], "net.jpg")


def test_config_without_backbone_says_what_to_pass(tmp_path):
  with pytest.raises(ValueError, match="coco.gin: binds neither "
                     "`experiment.task`.*nor the BACKBONE macro"):
    draw_architecture.draw_architecture([_config("datasets/coco.gin")], [],
                                        str(tmp_path / "x.svg"))
  with pytest.raises(ValueError, match="No --gin_file given"):
    draw_architecture.draw_architecture([], [], str(tmp_path / "x.svg"))


def test_command_line_writes_and_prints_the_path(tmp_path):
  output = str(tmp_path / "spinenet49.png")
  result = subprocess.run(
      [sys.executable, "-m", "official.draw_architecture",
       "--gin_file=configs/experiments/retinanet/spinenet49_coco.gin",
       f"--output={output}", "--png_scale=1"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == output
  with Image.open(output) as image:
    assert image.format == "PNG" and image.size[0] > image.size[1] > 0



def test_command_line_reports_a_bad_config_and_exits_non_zero(tmp_path):
  output = tmp_path / "r50.svg"
  result = subprocess.run(
      [sys.executable, "-m", "official.draw_architecture",
       "--gin_file=configs/experiments/retinanet/r50_fpn_coco.gin",
       f"--output={output}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "needs a scale-permuted backbone" in result.stderr
  assert "Traceback" not in result.stderr  # A usage error, not a crash.
  assert not output.exists()
