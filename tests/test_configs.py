"""Every gin file under configs/ parses (unknown names are errors) and builds its model."""

import glob
import os

import gin
import pytest

from official import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(pattern):
  return sorted(os.path.relpath(p, REPO) for p in
                glob.glob(os.path.join(REPO, "configs", pattern), recursive=True))


EXPERIMENTS = _files("experiments/**/*.gin")
# The search proxies are experiments too: every trial trains one.
SEARCH_PROXIES = _files("search/*.gin")
BACKBONES = _files("backbones/*.gin")
ABLATIONS = _files("backbones/ablations/*.gin")
PROTOCOLS = _files("protocols/*.gin")
DATASETS = _files("datasets/*.gin")

# A minimal classifier around a backbone file (the model is built, data unused).
CLASSIFIER = [
    "experiment.task = @ClassificationTask()",
    "ClassificationTask.backbone = %BACKBONE",
    "ClassificationTask.num_classes = 10",
    "ClassificationTask.data = @digits_records",
    "ClassificationTask.image_size = 128",
]


def build(files, params=()):
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, f) for f in files], list(params),
        skip_unknown=False)
  task = registry.experiment()
  if hasattr(task, "image_size"):
    task.image_size = 128
  return task.build_model()


def test_config_tree_is_not_empty():
  assert len(EXPERIMENTS) >= 10 and len(BACKBONES) >= 7 and ABLATIONS
  assert SEARCH_PROXIES


@pytest.mark.parametrize("experiment", EXPERIMENTS + SEARCH_PROXIES)
def test_experiment_builds(experiment):
  model = build([experiment])
  assert model.count_params() > 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_file_builds(backbone):
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, backbone)],
        ["multilevel_features.backbone = %BACKBONE",
         "multilevel_features.decoder = %DECODER"], skip_unknown=False)
  backbone_model, decoder = registry.multilevel_features((128, 128, 3))
  levels = sorted(decoder.output, key=int)
  assert levels == ["3", "4", "5", "6", "7"]
  widths = {decoder.output[l].shape[-1] for l in levels}
  assert len(widths) == 1, f"{backbone}: levels of different widths {widths}"
  if "fpn" not in backbone:  # SpineNet files also build classifiers.
    assert build([backbone], CLASSIFIER).output.shape[-1] == 10


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_builds(ablation):
  model = build(["configs/backbones/spinenet49.gin", ablation],
                CLASSIFIER + ["spinenet.filter_size_scale = 0.25",
                              "spinenet.resample_alpha = 0.25"])
  assert model.output.shape[-1] == 10


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_follows_any_experiment(protocol):
  """A protocol file can follow an experiment on the command line."""
  experiment = ("configs/experiments/classification/spinenet49_imagenet.gin"
                if "classification" in protocol else
                "configs/experiments/retinanet/spinenet49_coco.gin")
  build([experiment, protocol])


def test_unknown_binding_is_an_error_naming_it():
  with pytest.raises(ValueError, match="spinenet.filter_scale"):
    build(["configs/backbones/spinenet49.gin"],
          CLASSIFIER + ["spinenet.filter_scale = 0.5"])
