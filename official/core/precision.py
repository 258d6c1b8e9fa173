"""Mixed-precision policy per accelerator.

bfloat16 on TPU (same exponent range as float32: no loss scaling needed),
float16 on GPU (needs dynamic loss scaling, so the optimizer is wrapped in
keras.optimizers.LossScaleOptimizer), float32 on CPU.

On the CPU, measured with `scripts/benchmarks/benchmark.py --mode=forward,train
[--precision=mixed_bfloat16]` on a 2-core Xeon with AMX bfloat16 units
(TensorFlow 2.21, 2026-11-30, median step; scripts/benchmarks/README.md,
"Measured on this machine", has the tables and the run-to-run drift):
mixed_bfloat16 is the large win at 640 px (spinenet49_coco.gin, batch 2:
forward 669 ms against 1689 ms, training 4263 ms against 5625 ms), because
oneDNN runs bfloat16 convolutions on the AMX tiles; at 128 px it is small
or nothing (quickstart.gin forward 42 against 55 ms, training 236 against
277 ms; digits forward 68 against 67 ms). float32 stays the CPU default:
a CPU without AMX has no fast bfloat16 convolution, and bfloat16 changes
the numerics that the CPU tests and the experiments' expected results were
measured with. On an AMX CPU with large images pass the policy by hand
(`--gin_param="Trainer.precision = 'mixed_bfloat16'"`). XLA
(Trainer.jit_compile, off by default) was measured slower on the CPU
(quickstart.gin, `--jit_compile`): forward 140 against 73 ms and training
900 against 435 ms. The trainer sets the global Keras policy before the task builds the model; layers that must stay in
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
