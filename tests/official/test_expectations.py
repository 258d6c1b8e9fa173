"""Expected results and published sizes are data every experiment declares.

official/core/expectations.py defines the declarations; the trainer checks
them at the end of a run (tests/official/test_trainer.py shows the pass and
fail lines) and `python -m official.model_stats --table` reads the sizes.
"""

import math
import os

import gin
import pytest

from official import model_stats
from official.core import expectations
from official.evaluation import coco_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG_DIRS = ("configs/experiments", "configs/smoke")

# What each task's evaluator reports (the declared metric must be one).
TASK_METRICS = {
    "RetinaNetTask": set(coco_evaluator.METRIC_NAMES),
    "MaskRCNNTask": set(coco_evaluator.METRIC_NAMES +
                        coco_evaluator.MASK_METRIC_NAMES),
    "FasterRCNNTask": set(coco_evaluator.METRIC_NAMES),
    "ClassificationTask": {"top_1_accuracy", "top_5_accuracy"},
    "SegmentationTask": {"mIoU", "pixel_accuracy"},
}


def _config_files():
  found = []
  for folder in CONFIG_DIRS:
    for root, _, names in os.walk(os.path.join(REPO, folder)):
      found += [os.path.relpath(os.path.join(root, n), REPO)
                for n in names if n.endswith(".gin")]
  return sorted(found)


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_every_experiment_and_smoke_file_declares_its_expected_result():
  files = _config_files()
  assert len(files) >= 50  # 47 experiments and 5 smoke configs today.
  problems = []
  cwd = os.getcwd()
  os.chdir(REPO)  # Includes are relative to the repository root.
  try:
    for path in files:
      with open(path) as f:
        if "expected_result.metric" not in f.read():
          # Inheriting an included file's declaration is not enough: the
          # included experiment's figure is for a different run.
          problems.append(f"{path}: declares no expected_result.metric")
          continue
      expectation, _ = model_stats.declarations(path)
      task = gin.query_parameter("experiment.task").selector
      if expectation.metric not in TASK_METRICS[task]:
        problems.append(f"{path}: metric {expectation.metric!r} is not "
                        f"reported by {task} ({sorted(TASK_METRICS[task])})")
      # What the source cites is checked by tests/test_citations.py.
      source = expectation.source
      # Smoke runs check a range; a bound measured here is exact; a figure
      # published for a full schedule gets one point of slack (seed-to-seed
      # spread of from-scratch training is a few tenths of a point).
      if path.startswith("configs/smoke"):
        form = expectation.comparison == "within"
      elif "measured here" in source:
        form = expectation.tolerance == 0.0
      else:
        form = (expectation.comparison, expectation.tolerance) == (">=", 0.01)
      if not form:
        problems.append(f"{path}: unexpected comparison/tolerance "
                        f"{expectation.comparison} {expectation.tolerance} "
                        f"for its kind of source")
  finally:
    os.chdir(cwd)
  assert not problems, "\n".join(problems)


def test_the_size_table_reads_every_published_size_from_the_experiments():
  rows = model_stats.published_sizes()
  names = [size.name for _, size in rows]
  assert [rel for rel, _ in rows] == list(model_stats.TABLE_ORDER)
  assert len(set(names)) == len(names) == 28
  by_name = {size.name: size for _, size in rows}
  # Two rows against their tables: SpineNet (final version) Table 2 and
  # Eff-SpineNet Table 3.
  assert (by_name["RetinaNet SpineNet-49 640"].params_m,
          by_name["RetinaNet SpineNet-49 640"].multiply_adds_b) == (28.5, 85.4)
  assert (by_name["RetinaNet Eff-SpineNet-D0 512"].params_m,
          by_name["RetinaNet Eff-SpineNet-D0 512"].multiply_adds_b) == (3.6,
                                                                        2.5)
  assert all("Table" in size.source for _, size in rows)


@pytest.mark.parametrize("comparison,value,tolerance,measured,held", [
    (">=", 0.5, 0.0, 0.5, True),
    (">=", 0.5, 0.0, 0.499, False),
    (">=", 0.443, 0.01, 0.434, True),
    (">=", 0.443, 0.01, 0.432, False),
    ("<=", 1.4, 0.1, 1.5, True),
    ("<=", 1.4, 0.1, 1.51, False),
    ("within", 0.25, 0.25, 0.0, True),
    ("within", 0.25, 0.25, -1.0, False),  # pycocotools' "no ground truth".
    ("within", 0.25, 0.25, 0.51, False),
    (">=", 0.0, 0.0, math.nan, False),
    (">=", 0.0, 0.0, None, False),
])
def test_comparisons(comparison, value, tolerance, measured, held):
  expectation = expectations.Expectation("AP", value, comparison, tolerance,
                                         "s")
  assert expectation.holds(measured) is held


def test_malformed_declarations_name_the_binding():
  assert expectations.expected_result() is None  # Nothing declared.
  with pytest.raises(ValueError, match=r"expected_result.value must be a "
                     r"finite number, got '0.5'"):
    expectations.expected_result(metric="AP", value="0.5", source="s")
  with pytest.raises(ValueError, match="expected_result.source must be a "
                     "non-empty string"):
    expectations.expected_result(metric="AP", value=0.5)
  with pytest.raises(ValueError, match="expected_result.tolerance must be "
                     ">= 0"):
    expectations.expected_result(metric="AP", value=0.5, tolerance=-0.1,
                                 source="s")
  with pytest.raises(ValueError, match="published_size.multiply_adds_b must "
                     "be a finite number"):
    expectations.published_size(name="x", params_m=1.0, source="s")
