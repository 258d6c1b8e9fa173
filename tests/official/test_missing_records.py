"""A record pattern that matches no file names the tool that writes them.

Before the fix every task said to create the records "e.g. with
scripts/create_imagenet_tf_record.py", a detection run included. Now the
error comes from DatasetTask.record_pattern (official/core/task.py), which
takes the tool from RECORD_TOOLS, by the task and its gin data function.

Every (task, data function) pair that a gin file of configs/ binds is
checked, so a new experiment with a new dataset fails here until its tool
is listed. Tasks are built with the real data function, and their dataset
dict is set to patterns that match nothing (so that no data is generated).
"""

import glob
import inspect
import os
import re
import subprocess
import sys

import gin
import pytest

from official import exporting
from official import registry
from official.core import task as task_lib
from official.tasks import classification
from official.tasks import maskrcnn
from official.tasks import retinanet
from official.tasks import segmentation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")

# What each dataset's records are made with (README.md; each script's
# docstring), by data function; Mask R-CNN needs masks in the COCO records.
TOOLS = {
    "coco_records": "scripts/create_coco_tf_record.py",
    "synthetic_coco_records": "scripts/make_synthetic_coco.py --records",
    "synthetic_coco_mask_records":
        "scripts/make_synthetic_coco.py --records --include_masks",
    "pascal_records": "scripts/create_pascal_tf_record.py",
    "synthetic_pascal_records": "scripts/make_synthetic_pascal.py --records",
    "classification_records": "scripts/create_imagenet_tf_record.py",
    "digits_records": "scripts/make_digits_dataset.py --records",
}
TASK_TOOLS = {("MaskRCNNTask", "coco_records"):
                  "scripts/create_coco_tf_record.py --include_masks"}
# Checked even if no gin file bound them any more.
ALWAYS = {("RetinaNetTask", "coco_records"), ("MaskRCNNTask", "coco_records"),
          ("SegmentationTask", "pascal_records"),
          ("ClassificationTask", "classification_records")}


def _bound_pairs():
  """(task, data function) of every `Task.data = @function` under configs/."""
  binding = re.compile(r"^\s*(\w+Task)\.data\s*=\s*@(\w+)", re.M)
  pairs = set(ALWAYS)
  for path in glob.glob(os.path.join(REPO, "configs", "**", "*.gin"),
                        recursive=True):
    with open(path, encoding="utf-8") as f:
      pairs.update(binding.findall(f.read()))
  return sorted(pairs)


def _data_function(name):
  for module in (retinanet, maskrcnn, segmentation, classification):
    if hasattr(module, name):
      return getattr(module, name)
  raise AssertionError(f"no data function {name} in official/tasks")


def _make_task(task_name, data_name):
  """The task with only its required arguments, built from nothing."""
  cls = registry.TASKS[task_name]
  given = {"backbone": None, "decoder": None, "data":
           _data_function(data_name), "num_classes": 10}
  kwargs = {}
  for klass in cls.__mro__:  # A subclass passes **kwargs to its base.
    if "__init__" not in vars(klass):
      continue
    for name, parameter in inspect.signature(
        klass.__init__).parameters.items():
      if parameter.default is gin.REQUIRED:
        assert name in given, f"{task_name} requires {name}"
        kwargs[name] = given[name]
  return cls(**kwargs)


def test_every_bound_dataset_has_a_tool():
  for task_name, data_name in _bound_pairs():
    assert data_name in TOOLS, (task_name, data_name)
    assert task_lib.record_tool(_make_task(task_name, data_name)) == (
        data_name, TASK_TOOLS.get((task_name, data_name), TOOLS[data_name]))


@pytest.mark.parametrize("task_name,data_name", _bound_pairs())
@pytest.mark.parametrize("training", [True, False])
def test_missing_records_name_the_tool_of_the_task(tmp_path, task_name,
                                                   data_name, training):
  task = _make_task(task_name, data_name)
  missing = str(tmp_path / "nothing" / "train-*.tfrecord")
  other = str(tmp_path / "nothing" / "val-*.tfrecord")
  # The dataset dict, as the data function returns it, without making data.
  task._data = {  # pylint: disable=protected-access
      "train_pattern": missing if training else other,
      "eval_pattern": other if training else missing,
      "num_train": 8, "num_eval": 4, "num_classes": 10,
      "annotation_file": str(tmp_path / "instances.json")}
  tool = TASK_TOOLS.get((task_name, data_name), TOOLS[data_name])
  assert os.path.exists(os.path.join(REPO, tool.split()[0]))
  with pytest.raises(task_lib.MissingRecordsError) as error:
    task.build_inputs(training=training, global_batch_size=2)
  message = str(error.value)
  assert f"No files match the TFRecord pattern '{missing}'" in message
  split = "training" if training else "evaluation"
  assert (f"{task_name} reads the {split} records of {data_name}; they are "
          f"written by `python {tool}` (its --help lists the flags).") in (
              message), message
  # Only that tool is named.
  named = set(re.findall(r"scripts/\w+\.py", message))
  assert named == {tool.split()[0]}, message


def test_int8_calibration_names_the_tool(tmp_path):
  task = registry.TASKS["RetinaNetTask"](backbone=None,
                                         data=retinanet.coco_records)
  missing = str(tmp_path / "train-*")
  task._data = {  # pylint: disable=protected-access
      "train_pattern": missing, "eval_pattern": missing, "num_train": 8,
      "num_eval": 4}
  with pytest.raises(exporting.ExportError) as error:
    next(exporting.calibration_images(task, 1))
  assert str(error.value).startswith(
      f"int8 calibration reads the training records: No files match the "
      f"TFRecord pattern '{missing}'"), str(error.value)
  assert str(error.value).endswith(
      "they are written by `python scripts/create_coco_tf_record.py` (its "
      "--help lists the flags)."), str(error.value)


def test_detection_run_names_the_coco_converter(tmp_path):
  """The reported case, through `python -m official.train`."""
  missing = str(tmp_path / "coco" / "train-*")
  result = subprocess.run(
      [sys.executable, "-m", "official.train",
       "--gin_file=configs/smoke/retinanet.gin", "--strategy=one_device",
       f"--model_dir={tmp_path / 'run'}", "--mode=train",
       "--gin_param=RetinaNetTask.data = @coco_records",
       f"--gin_param=coco_records.train_pattern = '{missing}'",
       f"--gin_param=coco_records.eval_pattern = '{tmp_path}/coco/val-*'"],
      cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, timeout=300, check=False)
  lines = [line for line in result.stdout.splitlines() if line.strip()]
  assert result.returncode == 1, result.stdout
  assert lines[-1] == (
      f"official.train: MissingRecordsError: No files match the TFRecord "
      f"pattern '{missing}'; expected at least one existing file (check the "
      f"path, or create the records first with the dataset's converter in "
      f"scripts/). RetinaNetTask reads the training records of coco_records; "
      f"they are written by `python scripts/create_coco_tf_record.py` (its "
      f"--help lists the flags)."), result.stdout[-3000:]
