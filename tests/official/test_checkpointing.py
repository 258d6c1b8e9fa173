"""Checkpointer: save/keep/restore, eval restore, and mismatch reports."""

import numpy as np
import pytest
import tensorflow as tf

from official.core import checkpointing
from official.core import optimization
from tests.official import toy_task

# build_optimizer / learning_rate_schedule are gin-configurable.
pytestmark = pytest.mark.usefixtures("no_gin_bindings")


def _state(filters=8, num_classes=3):
  model = toy_task.ToyTask(filters=filters,
                           num_classes=num_classes).build_model()
  optimizer = optimization.build_optimizer(0.1)
  optimizer.build(model.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64, trainable=False)
  return model, optimizer, step


def test_saves_every_call_keeps_k_and_restores_the_latest(tmp_path):
  model_dir = str(tmp_path)
  model, optimizer, step = _state()
  ckpt = checkpointing.Checkpointer(model_dir, model, step, optimizer, keep=2)
  for s in (2, 4, 6):
    step.assign(s)
    model.get_layer("logits").bias.assign([s, s, s])
    ckpt.save()
  assert ckpt.latest.endswith("ckpt-6")
  assert not tf.io.gfile.glob(f"{model_dir}/ckpt-2.*")  # Kept 2.

  model2, optimizer2, step2 = _state()
  path, restored = checkpointing.Checkpointer(
      model_dir, model2, step2, optimizer2).restore_latest()
  assert path.endswith("ckpt-6") and restored == 6
  np.testing.assert_array_equal(model2.get_layer("logits").bias.numpy(), 6)


def test_restore_latest_without_checkpoint_is_a_fresh_start(tmp_path):
  model, optimizer, step = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), model, step, optimizer)
  assert ckpt.restore_latest() == (None, None)


def test_eval_restores_the_model_only(tmp_path):
  model, optimizer, step = _state()
  step.assign(5)
  checkpointing.Checkpointer(str(tmp_path), model, step, optimizer).save()
  model2, _, step2 = _state()
  _, restored = checkpointing.Checkpointer(
      str(tmp_path), model2, step2).restore_for_eval()
  assert restored == 5
  for a, b in zip(model.get_weights(), model2.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_eval_without_checkpoint_says_what_to_do(tmp_path):
  model, _, step = _state()
  with pytest.raises(checkpointing.NoCheckpointError) as e:
    checkpointing.Checkpointer(str(tmp_path), model, step).restore_for_eval()
  assert str(e.value) == (f"--mode=eval: no checkpoint in {tmp_path}; train "
                          f"first or pass a model_dir that has one.")


def test_shape_mismatch_lists_variables_with_both_shapes(tmp_path):
  model, optimizer, step = _state(filters=8, num_classes=3)
  checkpointing.Checkpointer(str(tmp_path), model, step, optimizer).save()
  model2, optimizer2, step2 = _state(filters=4, num_classes=3)
  ckpt = checkpointing.Checkpointer(str(tmp_path), model2, step2, optimizer2)
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    ckpt.restore_latest()
  message = str(e.value)
  assert "conv/kernel: expected [3, 3, 3, 4], found [3, 3, 3, 8]" in message
  assert "bn/moving_mean: expected [4], found [8]" in message
  assert "logits/kernel: expected [4, 3], found [8, 3]" in message
  assert "another config" in message


def test_mismatch_is_reported_for_eval_too(tmp_path):
  model, optimizer, step = _state(num_classes=3)
  checkpointing.Checkpointer(str(tmp_path), model, step, optimizer).save()
  model2, _, step2 = _state(num_classes=5)
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    checkpointing.Checkpointer(str(tmp_path), model2, step2).restore_for_eval()
  assert "logits/bias: expected [5], found [3]" in str(e.value)
