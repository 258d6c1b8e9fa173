"""scripts/benchmarks/op_profile.py: op time by type from the TF profiler."""

import os
import sys

import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "scripts", "benchmarks"))
import op_profile  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("op_type,normalized,group", [
    ("_MklNativeConv2DBackpropFilter", "Conv2DBackpropFilter", "convolution"),
    ("_MklNativeFusedConv2D", "FusedConv2D", "convolution"),
    ("_FusedConv2D", "FusedConv2D", "convolution"),
    ("Conv2DBackpropInput", "Conv2DBackpropInput", "convolution"),
    ("DepthwiseConv2dNative", "DepthwiseConv2dNative", "convolution"),
    ("_MklNativeFusedBatchNormGradV3", "FusedBatchNormGradV3",
     "batch_norm"),
    ("FusedBatchNormV3", "FusedBatchNormV3", "batch_norm"),
    ("_MklMatMul", "MatMul", "other"),
    ("ResourceApplyKerasMomentum", "ResourceApplyKerasMomentum", "other"),
])
def test_op_types_are_grouped_without_onednn_prefixes(op_type, normalized,
                                                      group):
  assert op_profile.normalized_type(op_type) == normalized
  assert op_profile.group_of(op_type) == group


def test_summary_is_per_step_with_shares_of_op_time():
  durations = {"_MklNativeConv2D": 60.0, "_MklNativeFusedBatchNormV3": 20.0,
               "Relu": 12.0, "AddV2": 8.0}
  counts = {"_MklNativeConv2D": 10, "_MklNativeFusedBatchNormV3": 10,
            "Relu": 6, "AddV2": 4}
  summary = op_profile.summarize(durations, counts, steps=2, top=3)
  assert summary["op_time_ms"] == 50.0
  assert summary["share"] == {"convolution": 0.6, "batch_norm": 0.2,
                              "other": 0.2}
  assert summary["top_ops"] == [["_MklNativeConv2D", 30.0, 5.0],
                                ["_MklNativeFusedBatchNormV3", 10.0, 5.0],
                                ["Relu", 6.0, 3.0]]
  assert summary["steps"] == 2


def test_an_empty_profile_is_an_error_not_a_zero_share():
  with pytest.raises(ValueError, match="no op on the host CPU"):
    op_profile.summarize({}, {}, steps=1)
  with pytest.raises(ValueError, match="steps must be >= 1"):
    op_profile.summarize({"Relu": 1.0}, {"Relu": 1}, steps=0)


def test_a_profiled_conv_step_counts_its_convolutions():
  images = tf.random.stateless_normal([2, 16, 16, 8], seed=[1, 2])
  kernels = [tf.random.stateless_normal([3, 3, 8, 8], seed=[3, i])
             for i in range(3)]

  @tf.function
  def step(x):
    for kernel in kernels:  # Three dependent convolutions, then ReLU.
      x = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
    return tf.reduce_sum(x)

  step(images)  # Traced before profiling, as benchmark.py's warm-up does.
  summary = op_profile.profile_steps(tf, step, lambda: (images,), steps=2)
  assert summary["steps"] == 2
  convolutions = sum(n for t, _, n in summary["top_ops"]
                     if op_profile.group_of(t) == "convolution")
  assert convolutions == 3  # Per step, whatever fusions the CPU graph made.
  assert summary["share"]["convolution"] > 0
  assert sum(summary["share"].values()) == pytest.approx(1.0, abs=1e-3)
  assert summary["op_time_ms"] > 0


def test_a_failed_profile_is_reported_not_raised(tmp_path):
  # A profiler session already running: the profile is an error entry and
  # the caller's timing stands.
  step = tf.function(lambda x: tf.nn.relu(x))
  x = tf.ones([2, 2])
  step(x)
  tf.profiler.experimental.start(str(tmp_path))
  try:
    summary = op_profile.profile_steps(tf, step, lambda: (x,), steps=1)
  finally:
    tf.profiler.experimental.stop()
  assert set(summary) == {"error"}
