"""Chooses the tf.distribute strategy a run trains under.

`get_strategy` turns the --strategy/--tpu flags into a strategy:

  auto                   TPU when `tpu` is given; else MirroredStrategy over all
                         local GPUs when there are two or more; else
                         OneDeviceStrategy on the single GPU or on the CPU.
  one_device             OneDeviceStrategy on the first GPU, or the CPU.
  mirrored               MirroredStrategy over the local GPUs; on a machine
                         without GPUs, over the local logical CPU devices
                         (tests create two with
                         tf.config.set_logical_device_configuration).
  multi_worker_mirrored  MultiWorkerMirroredStrategy; the cluster comes from
                         the TF_CONFIG environment variable.
  tpu                    TPUStrategy on the TPU named by `tpu` (a name, or
                         grpc://host:port; "local" for a TPU VM).

The strategy must be created before anything else initialises the TensorFlow
runtime (multi-worker collectives and logical devices are configured at start).
"""

import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def get_strategy(name="auto", tpu=None, num_gpus=None):
  """Returns the tf.distribute.Strategy that `name` selects.

  Args:
    name: one of STRATEGIES.
    tpu: TPU name or address for "tpu" (and for "auto", which then picks the
      TPU).
    num_gpus: use at most this many local GPUs (None: all of them).

  Returns:
    A tf.distribute.Strategy.

  Raises:
    ValueError: `name` is not one of STRATEGIES, or "tpu" without `tpu`.
    RuntimeError: "tpu" and no TPU named `tpu` can be reached.
  """
  if name not in STRATEGIES:
    raise ValueError(f"Unknown strategy {name!r}; expected one of "
                     f"{', '.join(STRATEGIES)}.")
  if name == "multi_worker_mirrored":
    # Before anything else touches the runtime (listing devices does):
    # collectives are configured when the context starts.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _log(strategy)
    return strategy
  if name == "tpu" or (name == "auto" and tpu):
    strategy = _tpu_strategy(tpu)
    _log(strategy)
    return strategy

  gpus = tf.config.list_logical_devices("GPU")
  if num_gpus is not None:
    gpus = gpus[:num_gpus]
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device"
  if name == "one_device":
    device = gpus[0].name if gpus else "/cpu:0"
    strategy = tf.distribute.OneDeviceStrategy(device)
  else:  # mirrored
    if gpus:
      devices = [d.name for d in gpus]
    else:
      devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
  _log(strategy)
  return strategy


def _log(strategy):
  logging.info("Strategy %s: %d replica(s) on %s.", type(strategy).__name__,
               strategy.num_replicas_in_sync,
               ", ".join(strategy.extended.worker_devices))


def _tpu_strategy(tpu):
  """Connects to and initialises the TPU `tpu`; returns a TPUStrategy."""
  if not tpu:
    raise ValueError("--strategy=tpu needs --tpu=NAME (a TPU name, "
                     "grpc://host:port, or 'local' on a TPU VM).")
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except Exception as e:  # The resolver raises many types (URLError, ...).
    raise RuntimeError(
        f"--strategy=tpu: no TPU named {tpu!r} could be reached "
        f"({type(e).__name__}: {e}). Check --tpu, or run without a TPU with "
        f"--strategy=auto, one_device or mirrored.") from e
  return tf.distribute.TPUStrategy(resolver)


def is_tpu(strategy):
  """True when `strategy` runs on TPU cores."""
  types = tuple(t for t in (getattr(tf.distribute, "TPUStrategy", None),
                            getattr(tf.distribute.experimental, "TPUStrategy",
                                    None)) if t is not None)
  return isinstance(strategy, types)


def uses_gpus(strategy):
  """True when every replica of `strategy` is a GPU."""
  devices = strategy.extended.worker_devices
  return bool(devices) and all("GPU" in d.upper() for d in devices)


def is_chief(strategy):
  """True on the worker that writes checkpoints, configs and summaries.

  Single-host strategies have one worker, the chief. Under
  MultiWorkerMirroredStrategy it is the task of type "chief", or worker 0
  when the cluster has no "chief" task.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type is None or task_type == "chief":
    return True
  if task_type == "worker" and task_id == 0:
    return "chief" not in resolver.cluster_spec().as_dict()
  return False


def worker_id(strategy):
  """A short name of this worker ("worker_1"), for temporary paths and logs."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or resolver.task_type is None:
    return "chief"
  return f"{resolver.task_type}_{resolver.task_id}"
