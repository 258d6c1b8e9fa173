"""Batch norms folded into the convolutions of exports (official/bn_folding.py).

Every batch norm gets moving statistics, gamma and beta far from their
initial 0 / 1 before export, so that a fold with a wrong scale, offset or
channel order would show in the outputs. The folded SavedModel must have no
batch-norm op left but those after a kernel shared by several convolutions
(the RetinaNet head's, one batch norm per level: folding them would store
the kernel once per level), hold no copy of a folded kernel, and give the
unfolded SavedModel's outputs: detections
with the same classes, boxes within 1e-3 px and scores within 1e-5;
classifier logits within 1e-4; segmentation class maps identical. The fold
itself must give the kernels and biases of TensorFlow's
optimize_for_inference_lib.fold_batch_norms.
"""

import copy
import os
import re
import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.tools import optimize_for_inference_lib

from modeling.layers.conv_bn import batch_norm
from official import bn_folding
from official import exporting
from official import registry
from official import runtimes
from official import serving
from official.core import checkpointing
from official.core import gin_config
from tests.official.test_export import make_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def randomize_batch_norms(model, seed=1, minimum=10):
  """Gives every batch norm non-trivial statistics, gamma and beta."""
  rng = np.random.default_rng(seed)
  count = 0
  for layer in model._flatten_layers():  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.moving_mean.shape[0]
      layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
      layer.beta.assign(rng.normal(0.0, 0.3, n).astype(np.float32))
      layer.moving_mean.assign(rng.normal(0.0, 0.3, n).astype(np.float32))
      layer.moving_variance.assign(rng.uniform(0.3, 2.0, n).astype(
          np.float32))
      count += 1
  assert count >= minimum, count


def saved_model_batch_norms(export_dir):
  """The batch-norm ops of a SavedModel's graph and functions, by name."""
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return bn_folding.batch_norm_ops(proto.meta_graphs[0].graph_def)


def export_both(task, model, root, input_type="image_tensor"):
  folded = exporting.export_saved_model(task, model, str(root / "folded"),
                                        input_type)
  unfolded = exporting.export_saved_model(task, model, str(root / "unfolded"),
                                          input_type, fold_batch_norms=False)
  return folded, unfolded


def serve(export_dir):
  return tf.saved_model.load(export_dir).signatures["serving_default"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
  """The tiny RetinaNet of test_export.py (128 px), statistics randomized."""
  root = tmp_path_factory.mktemp("fold")
  data_dir = str(root / "coco")
  task, model = make_run(root / "run", data_dir)
  randomize_batch_norms(model)
  # The command-line export restores the latest checkpoint: this one.
  checkpointing.Checkpointer(str(root / "run"), model,
                             tf.Variable(8, dtype=tf.int64)).save()
  folded, unfolded = export_both(task, model, root)
  images = sorted(tf.io.gfile.glob(os.path.join(data_dir, "val", "*.jpg")))
  return dict(root=root, task=task, model=model, folded=folded,
              unfolded=unfolded, images=images[:3])


def test_retinanet_folded_has_no_batch_norm_and_the_same_detections(
    detector):
  # Only the head's batch norms after its level-shared convs are left.
  left = saved_model_batch_norms(detector["folded"])
  head = [name for name in saved_model_batch_norms(detector["unfolded"])
          if "retinanet_head" in name and "_norm_" in name]
  assert left and len(left) == len(head), (left, head)
  assert all("retinanet_head" in name for name in left), left
  unfolded_ops = saved_model_batch_norms(detector["unfolded"])
  assert len(unfolded_ops) >= 100, len(unfolded_ops)
  # The folded kernels replace the originals: the folded export is smaller
  # than the unfolded one (its constants are the weights once).
  def size(path):
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(path) for f in files)
  weights = 4 * detector["model"].count_params()
  assert size(detector["folded"]) < 1.2 * weights + 2 ** 20, (
      size(detector["folded"]), weights)
  assert all("FusedBatchNormV3" in name for name in unfolded_ops)
  assert os.path.exists(os.path.join(detector["folded"], "assets",
                                     "label_map.json"))

  folded, unfolded = serve(detector["folded"]), serve(detector["unfolded"])
  assert (folded.structured_input_signature ==
          unfolded.structured_input_signature)
  assert set(folded.structured_outputs) == set(unfolded.structured_outputs)
  compared = 0
  for path in detector["images"]:
    images = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)[None]
    a, b = unfolded(images=images), folded(images=images)
    n = int(a["num_detections"][0])
    assert int(b["num_detections"][0]) == n, path
    np.testing.assert_array_equal(b["detection_classes"][0, :n],
                                  a["detection_classes"][0, :n], path)
    np.testing.assert_allclose(b["detection_boxes"][0, :n],
                               a["detection_boxes"][0, :n], atol=1e-3,
                               rtol=0, err_msg=path)
    np.testing.assert_allclose(b["detection_scores"][0, :n],
                               a["detection_scores"][0, :n], atol=1e-5,
                               rtol=0, err_msg=path)
    compared += n
  assert compared >= 30, compared


def test_command_line_fold_flag_off_keeps_the_batch_norms(detector):
  export_dir = detector["root"] / "cli_unfolded"
  result = subprocess.run(
      [sys.executable, "-m", "official.export",
       f"--model_dir={detector['root'] / 'run'}",
       f"--export_dir={export_dir}", "--fold_batch_norms=false"],
      env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  def layer_ops(export_dir):  # Without the (numbered) function name.
    return sorted(name.split("/", 1)[1]
                  for name in saved_model_batch_norms(str(export_dir)))

  assert layer_ops(export_dir) == layer_ops(detector["unfolded"])
  assert os.listdir(export_dir / "variables")


def test_onnx_export_is_folded_and_agrees(detector):
  path = exporting.export_onnx(detector["task"], detector["model"],
                               str(detector["root"] / "m.onnx"))
  nodes = onnx.load(path).graph.node
  op_types = {node.op_type for node in nodes}
  assert "Conv" in op_types
  # At most the batch norms after the head's level-shared kernels are left
  # (tf2onnx folds some of those itself); tf2onnx alone leaves others.
  left = [node.name for node in nodes
          if node.op_type == "BatchNormalization"]
  assert len(left) <= len(saved_model_batch_norms(detector["folded"])), left
  assert all("retinanet_head" in name for name in left), left
  pixels, _ = serving.tflite_input(detector["task"], serving.decode_image(
      tf.io.read_file(detector["images"][0])))
  reference = serving.onnx_function(detector["task"], detector["model"])(
      pixels)
  found = runtimes.load(path)(pixels.numpy())
  n = int(reference["num_detections"][0])
  assert n > 0 and int(found["num_detections"][0]) == n
  np.testing.assert_array_equal(found["detection_classes"][0, :n],
                                reference["detection_classes"][0, :n])
  np.testing.assert_allclose(found["detection_boxes"][0, :n],
                             reference["detection_boxes"][0, :n], atol=1e-3,
                             rtol=0)


def smoke_task(config, params):
  gin_config.parse_gin([os.path.join(REPO, config)], params)
  task = registry.experiment()
  keras.utils.set_random_seed(0)
  model = task.build_model()
  randomize_batch_norms(model)
  return task, model


def test_mbconv_classifier_with_synchronized_batch_norms_folds(tmp_path):
  # Depthwise convolutions (MBConv), and synchronized batch norms, which
  # the layer computes with the fused kernel at inference
  # (modeling/layers/fused_batch_norm.py), so they fold too.
  task, model = smoke_task("configs/smoke/classification.gin", [
      f"digits_records.data_dir = '{tmp_path / 'digits'}'",
      "ClassificationTask.backbone = @spinenet_mbconv",
      "spinenet_mbconv.model_id = '49XXS'",
      "spinenet_mbconv.require_divisible_input = False",
      "norm_activation.use_sync_bn = True"])
  assert any(isinstance(layer, keras.layers.DepthwiseConv2D)
             for layer in model._flatten_layers())  # pylint: disable=protected-access
  folded, unfolded = export_both(task, model, tmp_path)
  assert not saved_model_batch_norms(folded)
  assert len(saved_model_batch_norms(unfolded)) >= 50
  images = tf.constant(np.random.default_rng(0).integers(
      0, 256, (2, 70, 90, 3)), tf.uint8)
  a, b = serve(unfolded)(images=images), serve(folded)(images=images)
  np.testing.assert_allclose(b["logits"], a["logits"], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(b["top_k_classes"], a["top_k_classes"])
  assert all(layer.synchronized for layer in model._flatten_layers()  # pylint: disable=protected-access
             if isinstance(layer, keras.layers.BatchNormalization))


def test_segmenter_folded_gives_the_same_class_map(tmp_path):
  task, model = smoke_task("configs/smoke/segmentation.gin", [
      f"synthetic_pascal_records.data_dir = '{tmp_path / 'pascal'}'"])
  folded, unfolded = export_both(task, model, tmp_path)
  assert not saved_model_batch_norms(folded)
  assert saved_model_batch_norms(unfolded)
  images = tf.constant(np.random.default_rng(0).integers(
      0, 256, (1, 50, 64, 3)), tf.uint8)
  a, b = serve(unfolded)(images=images), serve(folded)(images=images)
  np.testing.assert_array_equal(b["class_map"], a["class_map"])
  np.testing.assert_allclose(b["probabilities"], a["probabilities"],
                             atol=1e-5, rtol=0)


def test_what_cannot_fold_is_named_and_kept():
  keras.utils.set_random_seed(0)
  inputs = keras.Input([8, 8, 3])
  conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
  # A convolution shared by two batch norms (modeling/heads/tower.py).
  shared_a = batch_norm(name="shared_a")(conv(inputs))
  shared_b = batch_norm(name="shared_b")(conv(inputs * 0.5))
  # A depthwise convolution with channel multiplier 2.
  depthwise = batch_norm(name="depthwise_bn")(keras.layers.DepthwiseConv2D(
      3, depth_multiplier=2, padding="same", use_bias=False)(shared_a))
  # A convolution whose output is also read by another layer.
  reused = keras.layers.Conv2D(4, 1, use_bias=False, name="reused")(shared_b)
  reused_bn = batch_norm(name="reused_bn")(reused)
  # A batch norm after pooling, not after a convolution.
  pooled = batch_norm(name="pooled_bn")(keras.layers.MaxPooling2D(
      1)(shared_b))
  outputs = keras.layers.Concatenate()([
      depthwise, reused_bn + reused, pooled])
  model = keras.Model(inputs, outputs)
  randomize_batch_norms(model, seed=2, minimum=5)

  @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32,
                                              "images")])
  def function(images):
    return {"out": model(images, training=False)}

  folded, report = bn_folding.fold_function(function)
  def layer(name):  # "functional_1/shared_a_1/FusedBatchNormV3" -> shared_a
    return re.sub(r"_\d+$", "", name.split("/")[-2])

  names = {layer(name) for name in report.folded}
  assert names == {"depthwise_bn"}, report.folded
  reasons = {layer(name): why for name, why in report.not_folded}
  assert set(reasons) == {"shared_a", "shared_b", "reused_bn",
                          "pooled_bn"}, report.not_folded
  assert "shared by 2 convolutions" in reasons["shared_a"]
  assert "also read by" in reasons["reused_bn"]
  assert "MaxPool" in reasons["pooled_bn"]
  summary = report.summary()
  assert summary.startswith("Folded 1 of 5 batch norms"), summary
  assert "pooled_bn" in summary and "reused_bn" in summary
  images = tf.constant(np.random.default_rng(0).normal(
      0, 1, (1, 8, 8, 3)), tf.float32)
  np.testing.assert_allclose(folded(images)["out"], function(images)["out"],
                             atol=1e-5, rtol=1e-5)



def test_fold_equals_tensorflows_optimize_for_inference():
  """The kernels and biases are those of optimize_for_inference_lib."""
  rng = np.random.default_rng(3)

  def const(*shape, low=None):
    value = (rng.uniform(low, 2.0, shape) if low is not None else
             rng.normal(0.0, 1.0, shape))
    return tf.constant(value.astype(np.float32))

  def fused(x, channels):
    y, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=const(channels, low=0.5), offset=const(channels),
        mean=const(channels), variance=const(channels, low=0.3),
        epsilon=1e-3, is_training=False)
    return y

  @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32,
                                              "images")])
  def function(images):
    x = tf.nn.bias_add(tf.nn.conv2d(images, const(3, 3, 3, 4), 1, "SAME"),
                       const(4))
    x = tf.nn.relu(fused(x, 4))
    # Channel multiplier 2: 4 inputs -> 8 channels.
    x = fused(tf.nn.depthwise_conv2d(x, const(3, 3, 4, 2), [1, 2, 2, 1],
                                     "SAME"), 8)
    return {"out": fused(tf.nn.conv2d(x, const(1, 1, 8, 5), 1, "SAME"), 5)}

  graph_def, inputs, outputs, structure = bn_folding.freeze(function)
  ours, report = bn_folding.fold_batch_norms(graph_def)
  assert len(report.folded) == 3 and not report.not_folded
  theirs = optimize_for_inference_lib.fold_batch_norms(
      copy.deepcopy(graph_def))  # It edits its input.

  def folded_values(folded):
    """{batch norm name: (its conv's kernel, its bias)}."""
    nodes = {node.name: node for node in folded.node}
    values = {}
    for name in report.folded:
      bias_add = nodes[name]
      assert bias_add.op == "BiasAdd", bias_add
      conv = nodes[bias_add.input[0]]
      assert conv.op in bn_folding.CONV_OPS, conv
      values[name] = tuple(tf.make_ndarray(nodes[node].attr["value"].tensor)
                           for node in (conv.input[1], bias_add.input[1]))
    return values

  expected = folded_values(theirs)
  for name, (kernel, bias) in folded_values(ours).items():
    np.testing.assert_allclose(kernel, expected[name][0], rtol=1e-6,
                               atol=1e-7, err_msg=name)
    np.testing.assert_allclose(bias, expected[name][1], rtol=1e-6,
                               atol=1e-6, err_msg=name)
  images = tf.constant(rng.normal(0.0, 1.0, (1, 8, 8, 3)).astype(np.float32))
  folded = bn_folding.graph_function(ours, function.input_signature, inputs,
                                     outputs, structure)
  np.testing.assert_allclose(folded(images)["out"], function(images)["out"],
                             atol=1e-5, rtol=1e-5)
