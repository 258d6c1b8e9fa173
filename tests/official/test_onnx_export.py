"""ONNX and LiteRT: export, agreement with the SavedModel, and predict, for all three formats.

A tiny RetinaNet (tests/official/test_export.py: random class weights, so it
detects plenty at spread-out scores), and the smoke classifier and segmenter
untrained, are exported as SavedModel, .tflite and .onnx. The .onnx export
of the detector must hold its NMS as ONNX NonMaxSuppression and take any
batch size; official.export_agreement and official.predict must run on all
three formats.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

from official import export_agreement
from official import exporting
from official import predict
from official import registry
from official import runtimes
from official import serving
from official import tflite_agreement
from official.core import gin_config
from tests.official.test_export import make_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
LITERT_WARNING = "tf.lite.Interpreter is deprecated"
NAMES = {1: "circle", 3: "square", 7: "triangle"}


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
  """The tiny RetinaNet's run, SavedModel, .tflite and (CLI) .onnx."""
  root = tmp_path_factory.mktemp("onnx")
  data_dir = str(root / "coco")
  task, model = make_run(root / "run", data_dir)
  saved_model = exporting.export_saved_model(task, model, str(root / "sm"))
  tflite = exporting.export_tflite(task, model, str(root / "m.tflite"))
  onnx_path = str(root / "m.onnx")
  result = subprocess.run(
      [sys.executable, "-m", "official.export", f"--model_dir={root / 'run'}",
       f"--export_dir={onnx_path}", "--format=onnx"],
      env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith(onnx_path)
  images = sorted(tf.io.gfile.glob(os.path.join(data_dir, "val", "*.jpg")))
  return dict(root=root, task=task, model=model, saved_model=saved_model,
              tflite=tflite, onnx=onnx_path, images=images[:3],
              model_dir=str(root / "run"))


def test_detector_onnx_has_nms_and_a_dynamic_batch(detector):
  proto = onnx.load(detector["onnx"])
  assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")
          ] == [exporting.ONNX_OPSET]
  assert "NonMaxSuppression" in {node.op_type for node in proto.graph.node}
  batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
  assert not batch.HasField("dim_value"), batch  # Symbolic: any batch.
  metadata = {p.key: p.value for p in proto.metadata_props}
  assert json.loads(metadata["label_map.json"]) == {
      str(k): v for k, v in NAMES.items()}
  assert "RetinaNetTask" in metadata["config.gin"]

  exported = runtimes.load(detector["onnx"])
  assert exported.input_shape[0] is None and exported.label_map == NAMES
  pixels = [serving.tflite_input(detector["task"], serving.decode_image(
      tf.io.read_file(path)))[0].numpy() for path in detector["images"][:2]]
  both = exported(np.concatenate(pixels))
  checked = 0
  for row, single in enumerate(pixels):
    alone = exported(single)
    n = int(alone["num_detections"][0])
    assert int(both["num_detections"][row]) == n
    np.testing.assert_array_equal(both["detection_classes"][row, :n],
                                  alone["detection_classes"][0, :n])
    np.testing.assert_allclose(both["detection_boxes"][row, :n],
                               alone["detection_boxes"][0, :n], atol=1e-3)
    # Batch 1 on ONNX Runtime is the in-process model's combined NMS.
    reference = serving.onnx_function(detector["task"], detector["model"])(
        tf.constant(single))
    np.testing.assert_array_equal(reference["num_detections"].numpy(), [n])
    np.testing.assert_array_equal(
        reference["detection_classes"].numpy()[0, :n],
        alone["detection_classes"][0, :n])
    np.testing.assert_allclose(reference["detection_boxes"].numpy()[0, :n],
                               alone["detection_boxes"][0, :n], atol=1e-2)
    checked += n
  assert checked >= 10


def test_agreement_tool_on_tflite_and_onnx(detector):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    kind, rows = export_agreement.compare(
        detector["task"], detector["saved_model"],
        [detector["tflite"], detector["onnx"]], detector["images"],
        latency_runs=2)
  assert not [w for w in caught if LITERT_WARNING in str(w.message)]
  assert kind == export_agreement.DETECTION
  assert [r["format"] for r in rows] == ["saved_model", "tflite", "onnx"]
  for row in rows[1:]:
    assert row["checked"] >= 5, row
    # Random weights: clusters of near-equal scores on overlapping anchors,
    # where a 1e-4 difference can move the winner to a neighbour anchor
    # (test_export.py); a trained model agrees on all (README).
    assert row["agreement"] >= 0.75, row
    assert row["size_bytes"] > 100_000 and row["latency_ms"] > 0
  text = export_agreement.table(kind, rows)
  assert text.splitlines()[2].startswith("| sm | saved_model |")
  assert "| m.onnx | onnx |" in text and "| m.tflite | tflite |" in text
  assert tflite_agreement.compare is export_agreement.compare  # Old name.

  result = subprocess.run(
      [sys.executable, "-m", "official.export_agreement",
       f"--model_dir={detector['model_dir']}",
       f"--saved_model={detector['saved_model']}",
       f"--exports={detector['onnx']}",
       f"--images={os.path.dirname(detector['images'][0])}/*.jpg",
       "--max_images=2", "--latency_runs=1"],
      env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| m.onnx | onnx |" in result.stdout, result.stdout
  assert LITERT_WARNING not in result.stderr


def test_predict_runs_all_three_formats(detector, tmp_path):
  image = detector["images"][0]
  stem = os.path.splitext(os.path.basename(image))[0]
  records = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name in ("saved_model", "tflite", "onnx"):
      out = tmp_path / name
      predict.predict(detector[name], image, str(out), score_threshold=0.3)
      with open(out / f"{stem}.json") as f:
        records[name] = json.load(f)
      assert (out / f"{stem}.png").exists()
  assert not [w for w in caught if LITERT_WARNING in str(w.message)]
  reference = records["saved_model"]["detections"]
  assert len(reference) >= 3
  for name in ("tflite", "onnx"):
    found = records[name]["detections"]
    # The best detection: same class and name, box within a pixel of the
    # SavedModel's in the image file's pixels.
    assert found[0]["class_id"] == reference[0]["class_id"], name
    assert found[0]["class_name"] == NAMES.get(
        found[0]["class_id"], f"class {found[0]['class_id']}")
    np.testing.assert_allclose(found[0]["box"], reference[0]["box"], atol=1.0,
                               err_msg=name)
    assert abs(len(found) - len(reference)) <= 1, (name, found, reference)


def _smoke_task(config, data_param, data_dir):
  gin_config.parse_gin([os.path.join(REPO, config)],
                       [f"{data_param} = '{data_dir}'"])
  task = registry.experiment()
  task.prepare_data()
  keras.utils.set_random_seed(0)
  return task, task.build_model()


def test_classifier_and_segmenter_onnx_agree(tmp_path):
  # Classifier: the smoke SpineNet on the digits, untrained (64 px).
  task, model = _smoke_task("configs/smoke/classification.gin",
                            "digits_records.data_dir",
                            str(tmp_path / "digits"))
  saved_model = exporting.export_saved_model(task, model,
                                             str(tmp_path / "cls"))
  onnx_path = exporting.export_onnx(task, model, str(tmp_path / "cls.onnx"))
  images = sorted(tf.io.gfile.glob(str(
      tmp_path / "digits" / "digits_png" / "validation" / "*" / "*.png")))
  assert len(images) >= 8
  kind, rows = export_agreement.compare(task, saved_model, [onnx_path],
                                        images[:8], latency_runs=0)
  assert kind == export_agreement.CLASSIFICATION
  assert rows[1]["agreed"] == rows[1]["checked"] == 8, rows
  assert rows[1]["max_probability_diff"] < 1e-4, rows
  out = tmp_path / "vis"
  predict.predict(saved_model, images[0], str(out / "sm"))
  predict.predict(onnx_path, images[0], str(out / "onnx"))
  stem = os.path.splitext(os.path.basename(images[0]))[0]
  top = {}
  for name in ("sm", "onnx"):
    with open(out / name / f"{stem}.json") as f:
      top[name] = [c["class_id"] for c in json.load(f)["top_k"]]
  assert top["onnx"] == top["sm"]

  # Segmenter: the smoke Eff-SpineNet on synthetic PASCAL, untrained.
  task, model = _smoke_task("configs/smoke/segmentation.gin",
                            "synthetic_pascal_records.data_dir",
                            str(tmp_path / "pascal"))
  saved_model = exporting.export_saved_model(task, model,
                                             str(tmp_path / "seg"))
  onnx_path = exporting.export_onnx(task, model, str(tmp_path / "seg.onnx"))
  assert runtimes.load(onnx_path).input_shape[0] is None
  images = sorted(tf.io.gfile.glob(str(tmp_path / "pascal" / "**" /
                                       "*.jpg")))[:2]
  kind, rows = export_agreement.compare(task, saved_model, [onnx_path],
                                        images, latency_runs=0)
  assert kind == export_agreement.SEGMENTATION
  assert rows[1]["checked"] >= 2 * 32 * 32, rows
  assert rows[1]["agreement"] >= 0.999, rows


def test_an_op_without_onnx_conversion_is_named(tmp_path):
  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32,
                                              "images")])
  def lgamma(images):
    return {"values": tf.math.lgamma(images + 1.0)}

  lgamma.get_concrete_function()
  with pytest.raises(exporting.ExportError,
                     match=r"TensorFlow op Lgamma \(node .*\) has no ONNX "
                           r"conversion"):
    exporting.convert_to_onnx(lgamma)
