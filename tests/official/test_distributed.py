"""Strategies: 2 logical CPUs (tests/conftest.py) against one device.

The same global batches must give the same losses and updated weights under
MirroredStrategy as on one device: that checks the Task contract's loss
normalisation, the trainer's weight-decay split and that Keras 3's optimizer
sums (not averages) gradients over replicas.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from official.core import distribute
from official.core import optimization
from official.core import precision
from official.core import schedules
from official.core import trainer as trainer_lib
from tests.official import toy_task

STEPS = 2


@pytest.fixture(scope="module")
def strategies(mirrored_strategy):
  return {"one_device": distribute.get_strategy("one_device"),
          "mirrored": mirrored_strategy}


def _train(strategy, model_dir, init=None, synchronized_bn=True,
           clipnorm=None):
  """Trains STEPS steps of batch 8 from `init` weights; returns the trainer."""
  task = toy_task.ToyTask(shuffle=False, synchronized_bn=synchronized_bn)
  trainer = trainer_lib.Trainer(
      task, str(model_dir), strategy, train_epochs=1, train_batch_size=8,
      steps_per_loop=STEPS, checkpoint_every_steps=100,
      max_train_steps=STEPS, weight_decay=1e-2,
      optimizer_fn=functools.partial(optimization.build_optimizer,
                                     momentum=0.9, clipnorm=clipnorm),
      learning_rate_fn=functools.partial(schedules.learning_rate_schedule,
                                         base_learning_rate=0.5,
                                         decay="constant"))
  trainer.build()
  if init is not None:
    trainer.model.set_weights(init)
  trainer.losses = trainer.train()
  return trainer


def _weights(trainer):
  return {v.path: v.numpy() for v in trainer.model.variables}


def test_strategy_names(strategies):
  assert strategies["mirrored"].num_replicas_in_sync == 2
  assert strategies["one_device"].num_replicas_in_sync == 1
  assert precision.policy_for(strategies["mirrored"]) == "float32"
  assert precision.policy_for(strategies["mirrored"],
                              "mixed_bfloat16") == "mixed_bfloat16"
  with pytest.raises(ValueError, match="one_device, mirrored"):
    distribute.get_strategy("mirorred")


def test_tpu_that_does_not_exist_is_named():
  with pytest.raises(RuntimeError) as e:
    distribute.get_strategy("tpu", tpu="nonexistent")
  assert "no TPU named 'nonexistent' could be reached" in str(e.value)
  assert "--strategy" in str(e.value)


@pytest.mark.parametrize("clipnorm", [None, 0.05])
def test_mirrored_matches_one_device(strategies, tmp_path, clipnorm):
  # clipnorm=0.05 clips every step: the clipping must see the summed
  # gradient, not each replica's half (optimization.SGD).
  fresh = toy_task.ToyTask().build_model()
  init = fresh.get_weights()
  init_by_path = {w.path: w.numpy() for w in fresh.weights}
  one = _train(strategies["one_device"], tmp_path / "one", init,
               clipnorm=clipnorm)
  two = _train(strategies["mirrored"], tmp_path / "two", init,
               clipnorm=clipnorm)
  assert set(one.losses) == {"total_loss", "cross_entropy",
                             "weight_decay_loss"}
  for name, value in one.losses.items():
    assert two.losses[name] == pytest.approx(value, rel=1e-5), name
  w1, w2 = _weights(one), _weights(two)
  for path, value in w1.items():
    assert not np.allclose(value, init_by_path[path]), f"{path} unchanged"
    np.testing.assert_allclose(w2[path], value, rtol=1e-5, atol=1e-6,
                               err_msg=path)
  # Every replica holds the same copy.
  for v in two.model.trainable_variables:
    copies = two.strategy.experimental_local_results(v.value)
    np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
  assert int(two.optimizer.iterations.numpy()) == STEPS


def test_sync_batch_norm_moving_statistics_match_one_device(strategies,
                                                            tmp_path):
  init = toy_task.ToyTask().build_model().get_weights()
  one = _weights(_train(strategies["one_device"], tmp_path / "one", init))
  sync = _weights(_train(strategies["mirrored"], tmp_path / "sync", init))
  local = _weights(_train(strategies["mirrored"], tmp_path / "local", init,
                          synchronized_bn=False))
  for name in ("bn/moving_mean", "bn/moving_variance"):
    np.testing.assert_allclose(sync[name], one[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # Control: per-replica statistics of half batches differ (the check above
  # can fail).
  assert not np.allclose(local["bn/moving_variance"],
                         one["bn/moving_variance"], rtol=1e-4)


def test_mirrored_evaluation_sees_every_example_once(strategies, tmp_path):
  # 20 examples in per-replica batches of 4: replica 0 gets 3 batches,
  # replica 1 gets 2 and then padding.
  init = toy_task.ToyTask().build_model().get_weights()
  results = {}
  for name, strategy in strategies.items():
    trainer = trainer_lib.Trainer(
        toy_task.ToyTask(), str(tmp_path / name), strategy, train_epochs=1,
        train_batch_size=8)
    trainer.build(for_training=False)
    trainer.model.set_weights(init)
    results[name] = trainer.evaluate()
  assert results["mirrored"]["num_examples"] == 20
  assert results["mirrored"] == results["one_device"]


def test_float16_overflow_on_one_replica_skips_the_step_everywhere(
    strategies, tmp_path):
  # Keras 3's LossScaleOptimizer looks at the first replica's gradients
  # only; the trainer makes the replicas agree.
  # Without sync BN, whose backward pass would spread the overflow itself.
  task = toy_task.ToyTask(shuffle=False, overflow_replica=1,
                          synchronized_bn=False)
  trainer = trainer_lib.Trainer(
      task, str(tmp_path), strategies["mirrored"], train_epochs=1,
      train_batch_size=8, steps_per_loop=1, max_train_steps=1,
      precision="mixed_float16",
      learning_rate_fn=functools.partial(schedules.learning_rate_schedule,
                                         base_learning_rate=0.5,
                                         decay="constant"))
  try:
    trainer.build()
    before = [v.numpy() for v in trainer.model.trainable_variables]
    trainer.train()
    optimizer = trainer.optimizer
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 14  # Halved.
    assert int(optimizer.iterations.numpy()) == 0  # Skipped.
    for v in trainer.model.trainable_variables:
      for copy in trainer.strategy.experimental_local_results(v.value):
        assert np.all(np.isfinite(copy.numpy())), v.path
    # Trainable weights untouched (BN moving statistics did move: the
    # forward pass ran).
    for a, v in zip(before, trainer.model.trainable_variables):
      np.testing.assert_array_equal(a, v.numpy(), err_msg=v.path)
  finally:
    precision.set_global_policy("float32")


def test_jit_compile_on_one_device_matches_graph_mode(strategies, tmp_path):
  init = toy_task.ToyTask().build_model().get_weights()
  plain = _train(strategies["one_device"], tmp_path / "plain", init)
  task = toy_task.ToyTask(shuffle=False)
  jit = trainer_lib.Trainer(
      task, str(tmp_path / "jit"), strategies["one_device"], train_epochs=1,
      train_batch_size=8, steps_per_loop=STEPS, max_train_steps=STEPS,
      weight_decay=1e-2, jit_compile=True,
      learning_rate_fn=functools.partial(schedules.learning_rate_schedule,
                                         base_learning_rate=0.5,
                                         decay="constant"))
  jit.build()
  jit.model.set_weights(init)
  losses = jit.train()
  assert losses["total_loss"] == pytest.approx(plain.losses["total_loss"],
                                               rel=1e-4)


def test_jit_compile_under_mirrored_cpus_is_refused(strategies, tmp_path):
  with pytest.raises(ValueError, match="needs every replica on a GPU"):
    trainer_lib.Trainer(toy_task.ToyTask(), str(tmp_path),
                        strategies["mirrored"], train_epochs=1,
                        train_batch_size=8, jit_compile=True)
