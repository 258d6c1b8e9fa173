"""SpineNet backbone: variants, specs as data, invalid specs, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from modeling import analysis
from modeling.backbones import spinenet as spinenet_lib
from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS, SpineNet, spinenet

ENDPOINT_WIDTH = {"49S": 128, "49": 256, "96": 256, "143": 256, "143L": 256,
                  "190": 512}


@pytest.mark.parametrize("model_id", list(ENDPOINT_WIDTH))
def test_every_variant_builds_at_128px(model_id):
  model = spinenet((128, 128, 3), model_id)
  assert model.output_specs == {
      str(l): (None, 128 // 2**l, 128 // 2**l, ENDPOINT_WIDTH[model_id])
      for l in range(3, 8)}


def test_block_repeats_and_widths():
  """Block repeats give r blocks per spec entry; widths follow the filter map."""
  model = spinenet((128, 128, 3), "96")
  names = [layer.name for layer in model.layers]
  assert "block_15_repeat_2" in names and "block_15_repeat_3" not in names
  # Level-3 bottleneck of SpineNet-96: inner 128, output 512.
  assert model.get_layer("block_12_repeat_1").output.shape[-1] == 512
  # 49S scales every filter by 0.65: level-4 bottleneck inner int(256 * .65).
  small = spinenet((128, 128, 3), "49S")
  assert small.get_layer("block_11_repeat_1").output.shape[-1] == 4 * 166


def test_resample_alpha_sets_reduced_width():
  model = spinenet((128, 128, 3), "49")
  # Block 1 (L2 bottleneck) from stem block 0 (bottleneck, inner 64): 0.5 * 64.
  assert model.get_layer("block_1_resample_1").reduced_filters == 32
  model = spinenet((128, 128, 3), "143")
  assert model.get_layer("block_1_resample_1").reduced_filters == 64


def test_output_block_takes_unconsumed_blocks():
  """Block 10 (L5) is nobody's parent; output block 13 (L5) sums it in."""
  model = spinenet((128, 128, 3), "49")
  fan_in = {k: len(model.get_layer(f"block_{k}_fusion")._inbound_nodes[0]
                   .input_tensors) for k in range(1, 16)}
  assert fan_in == {k: 3 if k == 13 else 2 for k in range(1, 16)}


def test_stochastic_depth_ramp_over_blocks():
  model = spinenet((128, 128, 3), "49", init_stochastic_depth_rate=0.2)
  rates = [model.get_layer(f"block_{k}_repeat_1").stochastic_depth_rate
           for k in range(1, 16)]
  np.testing.assert_allclose(rates, [0.2 * k / 15 for k in range(1, 16)])
  assert model.get_layer("stem_block_1_repeat_1").stochastic_depth_rate is None


def test_config_round_trip_same_outputs():
  model = spinenet((128, 128, 3), "49S", filter_size_scale=0.25,
                   resample_alpha=0.25, fusion_mode="weighted")
  clone = SpineNet.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  x = np.random.default_rng(0).normal(size=(1, 128, 128, 3)).astype("float32")
  a, b = model(x), clone(x)
  for level in a:
    np.testing.assert_allclose(a[level], b[level], rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_trainable_variable():
  model = spinenet((128, 128, 3), "49")
  x = tf.random.normal((2, 128, 128, 3))
  with tf.GradientTape() as tape:
    outputs = model(x, training=True)
    loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outputs.values()])
  grads = tape.gradient(loss, model.trainable_variables)
  missing = [v.path for v, g in zip(model.trainable_variables, grads)
             if g is None or not np.any(g.numpy())]
  assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_forward_backward_256px(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = spinenet((256, 256, 3), "49")
    x = tf.random.normal((1, 256, 256, 3))
    with tf.GradientTape() as tape:
      outputs = model(x, training=True)
      loss = tf.add_n([tf.reduce_mean(tf.cast(o, tf.float32))
                       for o in outputs.values()])
    grads = tape.gradient(loss, model.trainable_variables)
    for o in outputs.values():
      assert np.all(np.isfinite(tf.cast(o, tf.float32).numpy()))
    assert all(np.all(np.isfinite(tf.cast(g, tf.float32).numpy()))
               for g in grads if g is not None)
    if policy == "mixed_bfloat16":
      assert outputs["3"].dtype == tf.bfloat16
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_classifier_sizes_match_reference_at_224():
  """SpineNet-49 + 1000-way head: 22.1M params, 3.5B multiply-adds (±1%, ±5%)."""
  from modeling.models.classifier import build_classifier  # pylint: disable=g-import-not-at-top
  backbone = spinenet((224, 224, 3), "49", require_divisible_input=False)
  model = build_classifier(backbone, 1000)
  assert analysis.count_params(model) == pytest.approx(22.1e6, rel=0.01)
  assert analysis.count_multiply_adds(model, (224, 224, 3)) == pytest.approx(
      3.5e9, rel=0.05)


def test_resnext_variant():
  model = spinenet((128, 128, 3), "49", block_fn_override="resnext",
                   resnext_base_width=4)
  block = model.get_layer("block_3_repeat_1")  # L3 bottleneck -> ResNeXt
  assert type(block).__name__ == "ResNeXtBlock"
  assert type(model.get_layer("block_2_repeat_1")).__name__ == "ResidualBlock"


# Each invalid-spec rule and the message that names it.
def _with(entry_index, entry):
  specs = list(SPINENET_BLOCK_SPECS)
  specs[entry_index] = entry
  return specs


@pytest.mark.parametrize("specs,kwargs,message", [
    (_with(4, (6, "residual", (3, 9), False)), {},
     r"block_specs\[4\] .*parent offset 9 is out of range; block 5 may only "
     r"take the 2 stem blocks and the blocks before it \(offsets 0\.\.5\)"),
    (_with(0, (2, "bottleneck", (-1, 1), False)), {},
     r"block_specs\[0\] .*parent offset -1 is out of range"),
    (_with(2, (8, "bottleneck", (2, 3), False)), {},
     r"block_specs\[2\] .*level 8 is outside 1\.\.7"),
    (_with(2, (0, "bottleneck", (2, 3), False)), {},
     r"block_specs\[2\] .*level 0 is outside 1\.\.7"),
    (_with(14, (4, "bottleneck", (12, 14), True)), {},
     r"block_specs\[14\] .*duplicate output level 4; block_specs\[10\] is "
     r"already the level-4 output"),
    (_with(14, (6, "bottleneck", (12, 14), False)), {},
     r"no output block for level\(s\) \[6\]"),
    (_with(3, (4, "dense", (2, 4), False)), {},
     r"block_specs\[3\] .*unknown block type 'dense'"),
    (_with(3, (4, "bottleneck", (), False)), {},
     r"block_specs\[3\] .*at least one parent"),
    (SPINENET_BLOCK_SPECS, {"input_shape": (200, 200, 3)},
     r"Input size \(200, 200\) is not divisible by 2\^max_level = 128"),
    (SPINENET_BLOCK_SPECS, {"min_level": 5, "max_level": 3},
     r"Impossible level range min_level=5, max_level=3"),
    ([], {}, r"block_specs is empty"),
])
def test_invalid_specs_raise_named_errors(specs, kwargs, message):
  args = dict(input_shape=(128, 128, 3))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    SpineNet(block_specs=specs, **args)


def test_single_parent_specs_build():
  """Graph-damage ablations use one parent per block."""
  specs = [(l, f, (min(p),), o) for l, f, p, o in SPINENET_BLOCK_SPECS]
  model = SpineNet((128, 128, 3), block_specs=specs, filter_size_scale=0.25,
                   resample_alpha=0.25)
  assert sorted(model.output_specs) == ["3", "4", "5", "6", "7"]


def test_unknown_model_id():
  with pytest.raises(ValueError, match="Unknown SpineNet model_id '50'"):
    spinenet_lib.spinenet((128, 128, 3), "50")
