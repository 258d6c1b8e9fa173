"""Weight inheritance between trials: official/core/weight_inheritance.py.

Small Keras models whose only difference is the one the test is about (an
inserted block, a wider layer, a parallel subnet); a real SP-NAS backbone
(modeling/backbones/spnet.py) grown by "expand" and a parallel subnet; then
two real training runs of the toy task through the Trainer: the first saves
its weights, the second (with a layer inserted) inherits them.
"""

import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging

from modeling.backbones import spnet_spec
from modeling.backbones.spnet import spnet
from official.core import distribute
from official.core import schedules
from official.core import trainer as trainer_lib
from official.core import weight_inheritance as wi
from tests.official import toy_task

pytestmark = pytest.mark.usefixtures("no_gin_bindings")

# A parallel subnet's "sub2_block7" inherits the serial block "block7".
SUBNET_ALIASES = spnet_spec.INHERITANCE_ALIASES


class ConvBlock(keras.layers.Layer):
  """A composite layer: conv1 (no bias) -> bn, both named inside the block."""

  def __init__(self, filters, **kwargs):
    super().__init__(**kwargs)
    self.conv = keras.layers.Conv2D(filters, 3, padding="same",
                                    use_bias=False, name="conv1")
    self.bn = keras.layers.BatchNormalization(name="bn")

  def build(self, input_shape):
    self.conv.build(input_shape)
    self.bn.build(input_shape[:-1] + (self.conv.filters,))

  def call(self, x, training=False):
    return self.bn(self.conv(x), training=training)


def backbone(blocks, filters=4, name="spnet"):
  """Functional backbone [b, 8, 8, 3] -> [b, 8, 8, filters]: stem + blocks.

  Args:
    blocks: block names in order, or (name, filters) pairs.
  """
  images = keras.Input((8, 8, 3), name="images")
  x = keras.layers.Conv2D(filters, 3, padding="same", name="stem_conv1")(
      images)
  for block in blocks:
    block_name, block_filters = (block, filters) if isinstance(
        block, str) else block
    x = ConvBlock(block_filters, name=block_name)(x)
  return keras.Model(images, x, name=name)


def classifier(bone, name="classifier"):
  """Functional model: backbone -> global pool -> Dense "logits" (3)."""
  images = keras.Input((8, 8, 3), name="images")
  x = keras.layers.GlobalAveragePooling2D()(bone(images))
  return keras.Model(images, keras.layers.Dense(3, name="logits")(x),
                     name=name)


class Detector(keras.Model):
  """A subclassed model: the nested backbone and a list of two heads."""

  def __init__(self, bone):
    super().__init__(name="detector")
    self.backbone = bone
    self.heads = [keras.layers.Conv2D(2, 1, name=f"head{i}")
                  for i in range(2)]

  def call(self, images):
    features = self.backbone(images)
    return [head(features) for head in self.heads]


def block_keys(block):
  return [f"spnet/{block}/conv1/kernel", f"spnet/{block}/bn/gamma",
          f"spnet/{block}/bn/beta", f"spnet/{block}/bn/moving_mean",
          f"spnet/{block}/bn/moving_variance"]


def randomise(model, seed):
  """Assigns N(0, 1) to every weight, so no value equals an initial one.

  Moving variances get |N(0, 1)| + 0.5, so that the model still computes.
  """
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    value = rng.normal(size=variable.shape).astype("float32")
    if variable.name == "moving_variance":
      value = np.abs(value) + 0.5
    variable.assign(value)


def values(model):
  return {k: v.numpy() for k, v in wi.variable_keys(model).items()}


def saved(model, path, seed):
  randomise(model, seed)
  wi.save_inheritable_weights(model, str(path))
  return values(model)


def test_keys_of_a_functional_classifier():
  model = classifier(backbone(["block1", "block2"]))
  keys = wi.variable_keys(model)
  assert list(keys) == (["spnet/stem_conv1/kernel", "spnet/stem_conv1/bias"] +
                        block_keys("block1") + block_keys("block2") +
                        ["logits/kernel", "logits/bias"])
  # Every weight once, batch-norm moving statistics included.
  assert [id(v) for v in keys.values()] == [id(v) for v in model.weights]
  assert keys["spnet/block2/bn/moving_variance"].trainable is False
  # Keras's own path misses the nested model's name (module docstring).
  assert keys["spnet/block1/conv1/kernel"].path == "block1/conv1/kernel"


def test_keys_of_a_subclassed_model_match_the_functional_backbone():
  model = Detector(backbone(["block1", "block2"]))
  model(np.zeros((1, 8, 8, 3), np.float32))
  keys = list(wi.variable_keys(model))
  assert keys == (["spnet/stem_conv1/kernel", "spnet/stem_conv1/bias"] +
                  block_keys("block1") + block_keys("block2") +
                  ["head0/kernel", "head0/bias", "head1/kernel",
                   "head1/bias"])
  # The same backbone in the classifier: the same keys, the top model's
  # name ("detector", "classifier") in neither.
  other = list(wi.variable_keys(classifier(backbone(["block1", "block2"]))))
  assert [k for k in keys if k.startswith("spnet/")] == [
      k for k in other if k.startswith("spnet/")]


def test_duplicate_keys_and_unbuilt_models_are_refused():
  class Twins(keras.layers.Layer):
    def __init__(self):
      super().__init__(name="twins")
      self.a = keras.layers.Dense(2, name="dense")
      self.b = keras.layers.Dense(2, name="dense")

    def call(self, x):
      return self.b(self.a(x))

  images = keras.Input((3,))
  model = keras.Model(images, Twins()(images), name="m")
  with pytest.raises(ValueError) as e:
    wi.variable_keys(model)
  assert "2 key(s) of Functional 'm' would name more than one" in str(e.value)
  assert "twins/dense/kernel: variables" in str(e.value)
  assert "twins/dense/bias: variables" in str(e.value)
  with pytest.raises(ValueError, match="'detector': it is not built yet"):
    wi.variable_keys(Detector(backbone(["block1"])))


def test_an_inserted_block_is_initialised_and_the_rest_copied_bitwise(
    tmp_path):
  parent = classifier(backbone(["block1", "block2"]))
  parent_values = saved(parent, tmp_path / "parent.npz", seed=0)
  child = classifier(backbone(["block1", "block1a", "block2"]))
  before = values(child)

  report = wi.inherit_weights(child, [str(tmp_path / "parent.npz")])

  after = values(child)
  for key, value in parent_values.items():
    assert after[key].tobytes() == value.tobytes(), key
  for key in block_keys("block1a"):
    assert after[key].tobytes() == before[key].tobytes(), key
  assert report == {"sources": [str(tmp_path / "parent.npz")],
                    "inherited": {k: str(tmp_path / "parent.npz")
                                  for k in parent_values},
                    "aliased": {}, "initialised": sorted(block_keys("block1a")),
                    "shape_mismatch": [], "num_unused": 0}
  json.dumps(report)  # Written as inherited_weights.json by the Trainer.


def test_earlier_sources_take_precedence_per_key(tmp_path):
  first = saved(classifier(backbone(["block1"])), tmp_path / "a.npz", seed=1)
  second = saved(classifier(backbone(["block1", "block2"])),
                 tmp_path / "b.npz", seed=2)
  child = classifier(backbone(["block1", "block2"]))
  report = wi.inherit_weights(child, [str(tmp_path / "a.npz"),
                                      str(tmp_path / "b.npz")])
  after = values(child)
  for key in after:
    expected = first[key] if key in first else second[key]
    np.testing.assert_array_equal(after[key], expected, err_msg=key)
    assert report["inherited"][key] == str(
        tmp_path / ("a.npz" if key in first else "b.npz"))
  assert report["initialised"] == [] and report["num_unused"] == 0


def test_a_subnet_block_inherits_its_serial_block_through_the_alias(
    tmp_path):
  parent_values = saved(classifier(backbone(["block1", "block2"])),
                        tmp_path / "serial.npz", seed=3)
  child = classifier(backbone(["block1", "block2", "sub2_block2",
                               "sub2_other"]))
  before = values(child)

  report = wi.inherit_weights(child, str(tmp_path / "serial.npz"),
                              aliases=SUBNET_ALIASES)

  after = values(child)
  for key in block_keys("sub2_block2"):
    source_key = key.replace("sub2_", "")
    np.testing.assert_array_equal(after[key], parent_values[source_key])
    assert report["aliased"][key] == source_key
  assert len(report["aliased"]) == 5
  # "sub2_other" maps to "other", which the serial network does not have.
  assert report["initialised"] == sorted(block_keys("sub2_other"))
  for key in block_keys("sub2_other"):
    np.testing.assert_array_equal(after[key], before[key])
  # Without the rule the subnet is not found.
  plain = wi.inherit_weights(classifier(backbone(
      ["block1", "block2", "sub2_block2"])), str(tmp_path / "serial.npz"))
  assert plain["aliased"] == {}
  assert plain["initialised"] == sorted(block_keys("sub2_block2"))
  with pytest.raises(ValueError, match=r"alias 0 \('\(', ''\): the pattern "
                     "does not compile"):
    wi.inherit_weights(child, str(tmp_path / "serial.npz"), [("(", "")])


def test_shape_mismatches_are_listed_and_not_copied(tmp_path):
  path = str(tmp_path / "parent.npz")
  parent_values = saved(classifier(backbone(["block1", "block2"])), path,
                        seed=4)
  # block2 doubles its channels (SP-NAS "d"): its variables, and the
  # classifier reading them, change shape.
  child = classifier(backbone(["block1", ("block2", 8)]))
  before = values(child)
  report = wi.inherit_weights(child, path)
  after = values(child)
  assert report["shape_mismatch"] == [
      {"key": "spnet/block2/conv1/kernel", "expected": [3, 3, 4, 8],
       "found": [3, 3, 4, 4], "source": path}] + [
           {"key": f"spnet/block2/bn/{name}", "expected": [8], "found": [4],
            "source": path}
           for name in ("gamma", "beta", "moving_mean", "moving_variance")
       ] + [{"key": "logits/kernel", "expected": [8, 3], "found": [4, 3],
             "source": path}]
  for entry in report["shape_mismatch"]:
    np.testing.assert_array_equal(after[entry["key"]], before[entry["key"]])
  assert sorted(report["inherited"]) == sorted(
      set(parent_values) - {e["key"] for e in report["shape_mismatch"]})
  np.testing.assert_array_equal(after["logits/bias"],
                                parent_values["logits/bias"])
  assert report["initialised"] == [] and report["num_unused"] == 0


def test_a_real_spnet_grown_by_expand_and_a_subnet_keeps_its_function(
    tmp_path):
  """SP-NAS Sec. 3.1 "expand" and Sec. 3.2 subnet copies on spnet.py."""
  parent_spec = spnet_spec.parse_serial("BB(11,d1,d1,d1)")
  child_spec = spnet_spec.expand(parent_spec, 2)  # New block id 8.
  parent = spnet((32, 32, 3), parent_spec, base_channels=8)
  child = spnet((32, 32, 3), child_spec, base_channels=8,
                parallel=(0, 1, 0, 0))
  parent_values = saved(parent, tmp_path / "parent.npz", seed=7)
  report = wi.inherit_weights(child, str(tmp_path / "parent.npz"),
                              SUBNET_ALIASES)
  keys = list(wi.variable_keys(child))
  new = [k for k in keys if k.startswith(("block8/", "sub1_block8/",
                                          "sub1_stage2_up/"))]
  # Two conv-BN pairs in block 8 and in its copy, and the up conv's two.
  assert len(new) == 22 and sorted(new) == report["initialised"]
  # Stage 2 holds blocks 2, 8 and 3; its copy inherits blocks 2 and 3.
  assert sorted(report["aliased"]) == sorted(
      k for k in keys if k.startswith(("sub1_block2/", "sub1_block3/")))
  assert sorted(report["inherited"]) == sorted(set(keys) - set(new))
  assert report["num_unused"] == 0 and report["shape_mismatch"] == []
  after = values(child)
  for key in report["aliased"]:
    source_key = key[len("sub1_"):]
    assert report["aliased"][key] == source_key
    assert after[key].tobytes() == parent_values[source_key].tobytes(), key
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
  expected = parent(x, training=False)
  actual = child(x, training=False)
  for level, value in expected.items():
    assert np.abs(np.asarray(value)).max() > 0.1
    np.testing.assert_allclose(actual[level], value, rtol=1e-4, atol=1e-4)


def test_missing_sources_name_the_run_that_should_have_written_them(
    tmp_path):
  model = classifier(backbone(["block1"]))
  with pytest.raises(FileNotFoundError) as e:
    wi.inherit_weights(model, [str(tmp_path)])
  assert (f"{tmp_path}/inheritable_weights.npz does not exist: the training "
          f"run in model_dir {tmp_path} writes it when it finishes with "
          "Trainer.save_inheritable_weights=True") in str(e.value)
  with pytest.raises(FileNotFoundError) as e:
    wi.inherit_weights(model, [str(tmp_path / "nope.npz")])
  assert f"{tmp_path}/nope.npz does not exist" in str(e.value)
  assert "save_inheritable_weights" in str(e.value)
  (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 not a zip")
  with pytest.raises(ValueError, match="torn.npz is not a readable .npz"):
    wi.inherit_weights(model, [str(tmp_path / "torn.npz")])


def test_save_is_atomic(tmp_path, monkeypatch):
  model = classifier(backbone(["block1"]))
  path = str(tmp_path / "w.npz")
  first = saved(model, path, seed=5)
  assert os.listdir(tmp_path) == ["w.npz"]  # No temporary file left.
  with np.load(path) as archive:
    assert sorted(archive.files) == sorted(first)
    for key, value in first.items():
      assert archive[key].tobytes() == value.tobytes(), key
  old_bytes = (tmp_path / "w.npz").read_bytes()

  # A save that fails once its temporary file is complete, just before the
  # rename (what a kill at that moment leaves): `path` keeps the old file.
  randomise(model, seed=6)
  def failing_rename(*unused_args, **unused_kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(tf.io.gfile, "rename", failing_rename)
  with pytest.raises(OSError, match="disk full"):
    wi.save_inheritable_weights(model, path)
  assert (tmp_path / "w.npz").read_bytes() == old_bytes
  assert os.listdir(tmp_path) == ["w.npz"]


class InsertedLayerToyTask(toy_task.ToyTask):
  """The toy task's model with a 1x1 conv "inserted" after the ReLU."""

  def build_model(self):
    inputs = keras.Input((8, 8, self.num_classes), name="images")
    x = keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=False,
                            name="conv")(inputs)
    x = keras.layers.BatchNormalization(synchronized=self.synchronized_bn,
                                        name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(self.filters, 1, name="inserted")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(self.num_classes, dtype="float32",
                                 name="logits")(x)
    return keras.Model(inputs, outputs, name="toy")


def make_trainer(task, model_dir, learning_rate=0.1, **kwargs):
  return trainer_lib.Trainer(
      task, str(model_dir), distribute.get_strategy("one_device"),
      train_epochs=1, train_batch_size=8, steps_per_loop=2,
      learning_rate_fn=functools.partial(
          schedules.learning_rate_schedule,
          base_learning_rate=learning_rate, decay="constant"), **kwargs)


def test_trainer_options_are_checked_when_made(tmp_path):
  task = toy_task.ToyTask(num_train_examples=16)
  with pytest.raises(ValueError, match="are both set; choose one"):
    make_trainer(task, tmp_path, inherit_weights_from=str(tmp_path / "a"),
                 init_checkpoint=str(tmp_path / "b"))
  with pytest.raises(ValueError, match=r"inherit_weights_from must be None, "
                     r"a path or a list of paths .*got \[3\]"):
    make_trainer(task, tmp_path, inherit_weights_from=[3])
  with pytest.raises(ValueError, match="alias 0 is 'x'; expected a"):
    make_trainer(task, tmp_path, inherit_weights_from=str(tmp_path),
                 inherit_weights_aliases=["x"])


def test_a_trial_inherits_the_weights_its_parent_run_saved(tmp_path,
                                                           monkeypatch):
  """Two runs of the toy task through the Trainer, then both resumed."""
  messages = []
  info = logging.info
  monkeypatch.setattr(logging, "info", lambda message, *args: (
      messages.append(message % args), info(message, *args)))
  parent_dir, child_dir = tmp_path / "parent", tmp_path / "child"
  saved_file = parent_dir / "inheritable_weights.npz"
  try:
    parent = make_trainer(toy_task.ToyTask(num_train_examples=16,
                                           synchronized_bn=False),
                          parent_dir, save_inheritable_weights=True)
    parent.train()
    assert int(parent.global_step.numpy()) == 2
    trained = values(parent.model)
    with np.load(saved_file) as archive:
      parent_saved = {k: archive[k] for k in archive.files}
    assert list(parent_saved) == ["conv/kernel", "bn/gamma", "bn/beta",
                                  "bn/moving_mean", "bn/moving_variance",
                                  "logits/kernel", "logits/bias"]
    for key, value in trained.items():
      assert parent_saved[key].tobytes() == value.tobytes(), key

    # The trial: a layer inserted, learning rate 0 so that the trainable
    # weights stay what they inherited.
    child = make_trainer(
        InsertedLayerToyTask(num_train_examples=16, synchronized_bn=False),
        child_dir, learning_rate=0.0,
        inherit_weights_from=[str(parent_dir)])
    assert child.inherit_weights_aliases == spnet_spec.INHERITANCE_ALIASES
    messages.clear()
    child.train()
    with open(child_dir / "inherited_weights.json") as f:
      report = json.load(f)
    assert report == child.inherit_report
    assert report["sources"] == [str(saved_file)]
    assert report["inherited"] == {k: str(saved_file) for k in parent_saved}
    assert report["initialised"] == ["inserted/bias", "inserted/kernel"]
    assert report["shape_mismatch"] == [] and report["num_unused"] == 0
    for variable in child.model.trainable_weights:
      key = variable.path  # Top-level layers: the path is the key.
      if key in parent_saved:
        assert variable.numpy().tobytes() == parent_saved[key].tobytes(), key
    logged = [m for m in messages if m.startswith("Inherited ")]
    assert logged and logged[0].startswith(
        f"Inherited 7 variables from {saved_file} (0 of them under an alias)")
    assert ("2 variables found in no source keep their initial values\n"
            "    inserted/bias\n    inserted/kernel") in logged[0]

    # Resumed with nothing left to train: no inheritance, and the parent
    # writes its (restored) weights again.
    os.remove(saved_file)
    messages.clear()
    resumed_parent = make_trainer(
        toy_task.ToyTask(num_train_examples=16, synchronized_bn=False),
        parent_dir, save_inheritable_weights=True)
    assert resumed_parent.train() == {}
    with np.load(saved_file) as archive:
      for key, value in parent_saved.items():
        assert archive[key].tobytes() == value.tobytes(), key
    resumed_child = make_trainer(
        InsertedLayerToyTask(num_train_examples=16, synchronized_bn=False),
        child_dir, learning_rate=0.0, inherit_weights_from=str(parent_dir))
    resumed_child.train()
    assert resumed_child.inherit_report is None
    assert any("inherit_weights_from=" in m and "is not applied: the run "
               "resumes from its own checkpoint" in m for m in messages)
  finally:
    keras.mixed_precision.set_global_policy("float32")
