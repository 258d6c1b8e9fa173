"""Mixed-precision policy per accelerator.

bfloat16 on TPU (same exponent range as float32: no loss scaling needed),
float16 on GPU (needs dynamic loss scaling, so the optimizer is wrapped in
keras.optimizers.LossScaleOptimizer), float32 on CPU. On the CPU both
alternatives were measured slower with `scripts/benchmarks/benchmark.py
--gin_file=configs/experiments/quickstart.gin --batch_size=16
--mode=forward,train [--precision=mixed_bfloat16 | --jit_compile]` on a
2-core Xeon with AMX bfloat16 units (TensorFlow 2.21, 2026-11-30, median
step): mixed_bfloat16 forward 108 ms against 63-73 ms in float32 (the
casts outweigh the small convolutions), and XLA (Trainer.jit_compile,
off by default) forward 140 ms against 73 ms and training 900 ms against
435 ms. The trainer sets the
global Keras policy before the task builds the model; layers that must stay in
float32 (logits, losses, fusion weights) ask for it themselves.
"""

import keras

from official.core import distribute

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def policy_for(strategy, requested="auto"):
  """Returns the Keras dtype policy name for `strategy`.

  Args:
    strategy: the tf.distribute.Strategy the model will train under.
    requested: "auto", or one of POLICIES to override the choice.

  Returns:
    "mixed_bfloat16" on TPU, "mixed_float16" when every replica is a GPU,
    "float32" otherwise; or `requested` when it is not "auto".

  Raises:
    ValueError: `requested` is neither "auto" nor one of POLICIES.
  """
  if requested != "auto":
    if requested not in POLICIES:
      raise ValueError(f"Unknown precision {requested!r}; expected 'auto' or "
                       f"one of {', '.join(POLICIES)}.")
    return requested
  if distribute.is_tpu(strategy):
    return "mixed_bfloat16"
  if distribute.uses_gpus(strategy):
    return "mixed_float16"
  return "float32"


def set_global_policy(policy):
  """Sets the Keras global dtype policy; call before the model is built."""
  keras.mixed_precision.set_global_policy(policy)


def wrap_optimizer(optimizer, policy):
  """Wraps `optimizer` for dynamic loss scaling when `policy` is float16.

  Args:
    optimizer: a keras.optimizers.Optimizer.
    policy: the dtype policy name the model was built with.

  Returns:
    keras.optimizers.LossScaleOptimizer(optimizer) for "mixed_float16",
    otherwise `optimizer` itself.
  """
  if policy == "mixed_float16" and not isinstance(
      optimizer, keras.optimizers.LossScaleOptimizer):
    return keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer
