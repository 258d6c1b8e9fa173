"""Learning-rate schedules: exact values at the boundaries."""

import keras
import numpy as np
import pytest

from official.core import schedules

# learning_rate_schedule is gin-configurable: bindings another test parsed in
# this process would fill the arguments left at their defaults here.
pytestmark = pytest.mark.usefixtures("no_gin_bindings")


def lr_at(schedule, step):
  return float(schedule(step))


def test_spinenet_step_decay_at_the_last_30_and_10_epochs():
  # 350 epochs of 10 steps: x0.1 from epoch 320, x0.01 from epoch 340.
  s = schedules.learning_rate_schedule(
      base_learning_rate=0.08, steps_per_epoch=10, total_epochs=350,
      decay="step", step_decay_last_epochs=(30, 10),
      step_decay_factors=(0.1, 0.01))
  assert s.total_steps == 3500
  assert s.boundaries == [3200, 3400]
  assert lr_at(s, 0) == pytest.approx(0.08, rel=1e-6)
  assert lr_at(s, 3199) == pytest.approx(0.08, rel=1e-6)
  assert lr_at(s, 3200) == pytest.approx(0.008, rel=1e-6)
  assert lr_at(s, 3399) == pytest.approx(0.008, rel=1e-6)
  assert lr_at(s, 3400) == pytest.approx(0.0008, rel=1e-6)
  assert lr_at(s, 3499) == pytest.approx(0.0008, rel=1e-6)


def test_linear_warmup_from_a_start_ratio():
  s = schedules.learning_rate_schedule(
      base_learning_rate=0.1, steps_per_epoch=10, total_epochs=100,
      warmup_epochs=5, warmup_start_ratio=0.1, decay="step")
  assert s.warmup_steps == 50
  assert lr_at(s, 0) == pytest.approx(0.01, rel=1e-6)
  assert lr_at(s, 25) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5), rel=1e-6)
  assert lr_at(s, 49) == pytest.approx(0.1 * (0.1 + 0.9 * 49 / 50), rel=1e-6)
  assert lr_at(s, 50) == pytest.approx(0.1, rel=1e-6)
  # Warmup from 0 by default.
  s0 = schedules.learning_rate_schedule(
      base_learning_rate=0.1, steps_per_epoch=10, total_epochs=100,
      warmup_epochs=1)
  assert lr_at(s0, 0) == 0.0
  assert lr_at(s0, 5) == pytest.approx(0.05, rel=1e-6)


def test_cosine_decays_from_end_of_warmup_to_zero_at_the_last_step():
  s = schedules.learning_rate_schedule(
      base_learning_rate=1.0, steps_per_epoch=10, total_epochs=10,
      warmup_epochs=1, decay="cosine")
  assert (s.total_steps, s.warmup_steps) == (100, 10)
  assert lr_at(s, 5) == pytest.approx(0.5, rel=1e-6)  # Warmup.
  assert lr_at(s, 10) == pytest.approx(1.0, rel=1e-6)
  assert lr_at(s, 40) == pytest.approx(0.5 * (1 + np.cos(np.pi / 3)),
                                       rel=1e-6)
  assert lr_at(s, 55) == pytest.approx(0.5, rel=1e-6)
  assert lr_at(s, 99) == pytest.approx(
      0.5 * (1 + np.cos(np.pi * 89 / 90)), rel=1e-4)
  assert lr_at(s, 100) == pytest.approx(0.0, abs=1e-7)
  assert lr_at(s, 150) == pytest.approx(0.0, abs=1e-7)


def test_constant_after_warmup():
  s = schedules.learning_rate_schedule(
      base_learning_rate=0.3, steps_per_epoch=4, total_epochs=3,
      warmup_epochs=0.5, decay="constant")
  assert s.warmup_steps == 2
  assert lr_at(s, 1) == pytest.approx(0.15, rel=1e-6)
  assert lr_at(s, 2) == lr_at(s, 11) == pytest.approx(0.3, rel=1e-6)


def test_linear_scaling_by_global_batch_size():
  # Classification protocol: 0.1 per 256 examples -> 1.6 at batch 4096.
  s = schedules.learning_rate_schedule(
      base_learning_rate=0.1, steps_per_epoch=312, total_epochs=200,
      decay="constant", reference_batch_size=256, global_batch_size=4096)
  assert s.base_learning_rate == pytest.approx(1.6)
  assert lr_at(s, 0) == pytest.approx(1.6, rel=1e-6)
  with pytest.raises(ValueError, match="global_batch_size"):
    schedules.learning_rate_schedule(
        base_learning_rate=0.1, steps_per_epoch=10, total_epochs=1,
        reference_batch_size=256)


def test_fractional_epochs_and_small_datasets_give_at_least_one_step():
  assert schedules.epochs_to_steps(0.1, 3) == 1
  assert schedules.epochs_to_steps(2.5, 3) == 8  # round(7.5) -> 8.
  assert schedules.epochs_to_steps(0, 3) == 0
  s = schedules.learning_rate_schedule(
      base_learning_rate=0.1, steps_per_epoch=3, total_epochs=0.1,
      decay="cosine")
  assert s.total_steps == 1
  assert lr_at(s, 0) == pytest.approx(0.1, rel=1e-6)


def test_step_decay_longer_than_the_run_applies_from_step_0():
  s = schedules.learning_rate_schedule(
      base_learning_rate=1.0, steps_per_epoch=2, total_epochs=20)
  assert s.boundaries == [0, 20]
  assert lr_at(s, 0) == pytest.approx(0.1)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="differ in length"):
    schedules.learning_rate_schedule(
        base_learning_rate=0.1, steps_per_epoch=10, total_epochs=350,
        step_decay_last_epochs=(30, 10), step_decay_factors=(0.1,))
  with pytest.raises(ValueError, match="must decrease"):
    schedules.learning_rate_schedule(
        base_learning_rate=0.1, steps_per_epoch=10, total_epochs=350,
        step_decay_last_epochs=(10, 30))
  with pytest.raises(ValueError, match="Unknown decay 'linear'"):
    schedules.learning_rate_schedule(
        base_learning_rate=0.1, steps_per_epoch=10, total_epochs=1,
        decay="linear")
  with pytest.raises(ValueError, match="steps_per_epoch"):
    schedules.learning_rate_schedule(base_learning_rate=0.1, total_epochs=1)


def test_serializes_and_drives_an_optimizer():
  s = schedules.learning_rate_schedule(
      base_learning_rate=0.5, steps_per_epoch=10, total_epochs=10,
      warmup_epochs=1, warmup_start_ratio=0.2, decay="cosine")
  config = keras.optimizers.schedules.serialize(s)
  restored = keras.optimizers.schedules.deserialize(config)
  assert isinstance(restored, schedules.WarmupDecaySchedule)
  assert restored.get_config() == s.get_config()
  for step in (0, 5, 10, 57, 100):
    assert lr_at(restored, step) == lr_at(s, step)
  optimizer = keras.optimizers.SGD(learning_rate=s)
  optimizer.iterations.assign(57)
  assert float(optimizer.learning_rate) == pytest.approx(lr_at(s, 57))
