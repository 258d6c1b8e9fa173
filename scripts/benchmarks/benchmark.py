r"""Input, training, inference and serving speed and memory of an experiment.

  python scripts/benchmarks/benchmark.py \
    --gin_file=configs/experiments/quickstart.gin \
    [--gin_param=...] [--batch_size=8] [--image_size=N] [--steps=10] \
    [--warmup_steps=2] [--mode=input,train,forward,serve] [--peer] \
    [--op_profile=N]

Prints one JSON object on stdout; progress and logs go to stderr. Modes:

  forward  images/s of `model(images, training=False)` in a tf.function
           (raw head outputs: no box decoding or NMS).
  train    images/s of full steps in a tf.function: forward, the task's
           losses plus the experiment's weight decay, gradients, SGD update.
  input    images/s of `task.build_inputs(training=True)` alone: the task's
           real tf.data pipeline, batches pulled to the host and dropped.
  serve    latency (p50, p90) and images/s at batch 1 of the exported
           SavedModel: a freshly built model (random weights) written by
           official.exporting.export_saved_model (what `python -m
           official.export` calls; input_type image_tensor, batch 1),
           loaded back with tf.saved_model.load in this process, its
           `serving_default` signature called on one fixed uint8
           [1, S, S, 3] image (S the experiment's image size): the task's
           serving preprocessing, the model and post-processing (box
           decoding and NMS for detectors). Not part of the default --mode.

--op_profile=N adds, to forward and train, the CPU op time of N more steps
by op type, taken with TensorFlow's profiler (scripts/benchmarks/
op_profile.py): how much of a step the convolution and batch-norm kernels
take.

Each mode runs `warmup_steps` steps first (the first one traces and compiles;
its time is reported as `first_step_s`, `first_call_s` for serve), then
`steps` timed steps, each waited for and timed on its own (mean and median;
serve: percentiles). The modes always run in the order forward, train,
input, serve, so `peak_host_memory_mb` (the process's peak resident memory
so far: VmHWM, the ru_maxrss of this program alone; see peak_host_memory_mb)
of a mode includes the modes before it. On a GPU `peak_device_memory_mb` is
the mode's own peak (the allocator's statistics are reset before each mode).

By default (--synthetic_inputs) forward and train feed fixed random tensors
with the exact element_spec of the task's training dataset, found by building
the task's pipeline over a placeholder file list (nothing is read, so no data
set is needed). Integer labels are 0 (every anchor is background), float
labels uniform in [0, 1). The input mode always uses the real data; the
task's prepare_data() may first write the synthetic COCO or digits sets.

--peer also times Model Garden's equivalent model (tf-models-official, Keras
2) in its own virtual environment (.venv-peer, created on first use) in a
subprocess, and prints {"ours": ..., "peer": ..., "ratio": ...}; ratio is
ours / peer for every number both report (above 1: ours is faster for
images_per_sec, uses more memory for *_memory_mb, writes a larger
SavedModel for serve_saved_model_mb), except the serve latencies, given as
speedups: serve_speedup_p50 and serve_speedup_p90 are peer latency / our
latency, so there too above 1 means ours is faster. The peer's serve mode
is Model Garden's own export (official.vision.serving: DetectionModule or
ClassificationModule through export_saved_model_lib), timed the same way;
NMS settings are mapped from ours (`peer_serve_spec`) and what does not map
is listed in its "differences". The peer never runs in this process: its
top-level package is also called `official`.
"""

import contextlib
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from unittest import mock

# scripts/ is not a package: make the repository importable from any cwd.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from dataloaders import readers
from modeling.backbones import spinenet as spinenet_lib
from official import exporting
from official import registry
from official.core import gin_config
from official.core import optimization
from official.core import precision as precision_lib
from scripts.benchmarks import op_profile
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs as a command: tests
  import this module beside other entry points' --gin_file."""
  flags.DEFINE_multi_string("gin_file", [], "Experiment gin files, in order.")
  flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied last.")
  flags.DEFINE_integer("batch_size", 8, "Batch size (one device).",
                       lower_bound=1)
  flags.DEFINE_integer("image_size", None,
                       "Override the task's square input size in pixels.")
  flags.DEFINE_integer("steps", 10, "Timed steps (batches) per mode.",
                       lower_bound=1)
  flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per mode before "
                       "timing; the first traces and compiles (>= 1).",
                       lower_bound=1)
  flags.DEFINE_list("mode", ["input", "train", "forward"],
                    "Modes to run: any of input, train, forward, serve "
                    "(serve: latency of the exported SavedModel at batch 1).")
  flags.DEFINE_bool("synthetic_inputs", True,
                    "train/forward feed fixed random tensors of the "
                    "dataset's element_spec instead of real batches.")
  flags.DEFINE_enum("precision", "float32", list(precision_lib.POLICIES),
                    "Keras dtype policy (float16 adds dynamic loss scaling).")
  flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")
  flags.DEFINE_integer("op_profile", 0, "forward/train: after timing, run "
                       "this many more steps under the TensorFlow profiler "
                       "and report their CPU op time by op type "
                       "(scripts/benchmarks/op_profile.py); 0: off. Not "
                       "with --jit_compile (XLA runs no TensorFlow ops).",
                       lower_bound=0)
  flags.DEFINE_float("learning_rate", 0.01, "Constant SGD learning rate of "
                     "the timed training steps.")
  flags.DEFINE_bool("peer", False, "Also time Model Garden's equivalent "
                    "model in its own virtual environment.")
  flags.DEFINE_string("peer_venv", os.path.join(REPO_ROOT, ".venv-peer"),
                      "The peer's virtual environment (created when "
                      "missing).")
  flags.DEFINE_string("peer_requirement", "tf-models-official==2.20.0",
                      "What pip installs into a new peer environment.")
  flags.DEFINE_integer("peer_timeout", 3600,
                       "Seconds the peer run may take.")
  flags.DEFINE_string("peer_nms_version", None, "serve: Model Garden's "
                      "DetectionGenerator.nms_version for the peer's export "
                      "(default: the one running our nms_method's algorithm, "
                      "see NMS_VERSION_OF).")


MODES = ("forward", "train", "input", "serve")  # The order they run in.
# Our nms_method (modeling/ops/postprocess.py) -> the Model Garden
# DetectionGenerator.nms_version closest to it. "combined" is the same
# kernel (tf.image.combined_non_max_suppression); "batched" and "tflite"
# have no identical counterpart and their differences are listed.
NMS_VERSION_OF = {"combined": "batched", "batched": "v2", "tflite": "v1"}
PEER_NMS_VERSIONS = ("batched", "v1", "v2", "v3")
SERVE_IMAGE_SEED = 0  # Passed to the peer, which draws the same image.
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "peer_model_garden.py")


def log(message, *args):
  print("[benchmark] " + (message % args if args else message),
        file=sys.stderr, flush=True)


# Machine and memory.


def peak_host_memory_mb():
  """Peak resident memory of this process so far, in MiB.

  Linux: VmHWM of /proc/self/status, the high-water mark of this program's
  own address space. getrusage's ru_maxrss is the same number except that it
  survives fork + exec: a child started by a large process (the peer, by
  benchmark.py) would report its parent's resident size as its own peak.
  Elsewhere: ru_maxrss.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0  # kB
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (2**20 if sys.platform == "darwin" else 1024.0)


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_info():
  """{"type": "GPU" or "CPU", "name": ..., "cpu": ..., "cpu_cores": ...}."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count())
  info = {"cpu": _cpu_name(), "cpu_cores": cores}
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    details = tf.config.experimental.get_device_details(gpus[0])
    info.update(type="GPU", name=details.get("device_name", gpus[0].name),
                gpu_count=len(gpus))
  else:
    info.update(type="CPU", name=info["cpu"])
  return info


def _reset_device_memory():
  if tf.config.list_physical_devices("GPU"):
    tf.config.experimental.reset_memory_stats("GPU:0")


def _memory(result):
  """Adds this mode's peak host (and device) memory to `result`."""
  result["peak_host_memory_mb"] = round(peak_host_memory_mb(), 1)
  if tf.config.list_physical_devices("GPU"):
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    result["peak_device_memory_mb"] = round(peak / 2**20, 1)
  return result


# Timing.


def _block(value):
  """Waits for `value` (a nest of tensors) to be computed."""
  for leaf in tf.nest.flatten(value):
    if hasattr(leaf, "numpy"):
      leaf.numpy()
      return


def time_steps(step, next_args, batch_size, steps, warmup_steps):
  """Runs warmup then timed steps; returns the throughput figures.

  Every step is waited for, so each has its own time: the median is robust
  to another process taking the cores for a moment (this matters on a
  shared 2-core machine); the mean is the plain throughput.

  Args:
    step: callable(*args) -> nest of tensors.
    next_args: callable() -> the args of the next call.
    batch_size: images per step.
    steps: timed steps.
    warmup_steps: untimed steps first (>= 1; the first traces).

  Returns:
    dict images_per_sec (steps * batch / total time), images_per_sec_median
    (batch / median step time), step_time_ms (mean), step_time_ms_median,
    step_time_ms_min, step_time_ms_max, steps, warmup_steps, first_step_s
    (the first warmup step: tracing, compilation and one step).
  """
  start = time.perf_counter()
  _block(step(*next_args()))
  first = time.perf_counter() - start
  for _ in range(warmup_steps - 1):
    _block(step(*next_args()))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    _block(step(*next_args()))
    times.append(time.perf_counter() - start)
  return step_figures(times, batch_size, warmup_steps, first)


def step_figures(times, batch_size, warmup_steps, first):
  """The figures of `time_steps` from per-step times in seconds."""
  median = float(np.median(times))
  return {"images_per_sec": round(len(times) * batch_size / sum(times), 3),
          "images_per_sec_median": round(batch_size / median, 3),
          "step_time_ms": round(1000.0 * sum(times) / len(times), 2),
          "step_time_ms_median": round(1000.0 * median, 2),
          "step_time_ms_min": round(1000.0 * min(times), 2),
          "step_time_ms_max": round(1000.0 * max(times), 2),
          "steps": len(times), "warmup_steps": warmup_steps,
          "first_step_s": round(first, 2)}


def serve_image(size, seed=SERVE_IMAGE_SEED):
  """The fixed serving input: uint8 [1, size, size, 3], uniform in 0..255.

  numpy's PCG64 generator, which the peer uses with the same seed, so both
  sides time the same image.
  """
  return np.random.default_rng(seed).integers(
      0, 256, size=(1, size, size, 3), dtype=np.uint8)


def time_calls(call, steps, warmup_steps):
  """Times `call()` as a server would: every output fetched to the host.

  Args:
    call: callable() -> nest of tensors (a SavedModel signature).
    steps: timed calls.
    warmup_steps: untimed calls first (>= 1; the first traces).

  Returns:
    (times, first, outputs): the timed calls' wall times in seconds, the
    first warmup call's, and the last call's outputs as numpy arrays.
  """
  def fetch(value):
    return tf.nest.map_structure(
        lambda t: t.numpy() if hasattr(t, "numpy") else t, value)
  start = time.perf_counter()
  outputs = fetch(call())
  first = time.perf_counter() - start
  for _ in range(warmup_steps - 1):
    fetch(call())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    outputs = fetch(call())
    times.append(time.perf_counter() - start)
  return times, first, outputs


def latency_figures(times, warmup_steps, first):
  """Batch-1 serving figures from per-call times in seconds.

  Returns:
    dict latency_ms_p50, latency_ms_p90 (numpy's linear-interpolation
    percentiles), latency_ms_mean, latency_ms_min, latency_ms_max,
    images_per_sec (calls / total time; one image per call), steps,
    warmup_steps, first_call_s (the first warmup call: the signature's
    first execution and one call).
  """
  p50, p90 = np.percentile(times, [50, 90])
  return {"latency_ms_p50": round(1000.0 * float(p50), 2),
          "latency_ms_p90": round(1000.0 * float(p90), 2),
          "latency_ms_mean": round(1000.0 * sum(times) / len(times), 2),
          "latency_ms_min": round(1000.0 * min(times), 2),
          "latency_ms_max": round(1000.0 * max(times), 2),
          "images_per_sec": round(len(times) / sum(times), 3),
          "steps": len(times), "warmup_steps": warmup_steps,
          "first_call_s": round(first, 2)}


def directory_mb(path):
  """Total size of the files under path, in MiB."""
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total / 2**20


# The task's data, real or synthetic.


def _placeholder_data(task):
  """The task's data dict, pointing at a file that is never opened."""
  return dict(train_pattern="/nonexistent/benchmark-placeholder",
              eval_pattern="/nonexistent/benchmark-placeholder",
              num_train=1, num_eval=1, annotation_file=None,
              num_classes=getattr(task, "num_classes", None))


def training_element_spec(task, batch_size):
  """element_spec of task.build_inputs(training=True), reading no data.

  The task's own pipeline is built over a placeholder file list: tf.data
  opens files only when iterated, so the spec is exact and nothing needs to
  exist. Tasks that do not take their data from `task.data_fn` and
  dataloaders.readers get their real data prepared instead.
  """
  if hasattr(task, "data_fn"):
    probe = copy.copy(task)
    probe.data_fn = lambda: _placeholder_data(task)
    if hasattr(probe, "_data"):
      probe._data = None  # pylint: disable=protected-access
    try:
      with mock.patch.object(readers, "list_files", lambda pattern: [pattern]):
        return probe.build_inputs(training=True,
                                  global_batch_size=batch_size).element_spec
    except Exception as e:  # pylint: disable=broad-except
      log("Could not build the input spec without data (%s: %s); preparing "
          "the real data.", type(e).__name__, e)
  with _stdout_is_stderr():
    task.prepare_data()
  return task.build_inputs(training=True,
                           global_batch_size=batch_size).element_spec


def synthetic_batch(spec, seed=0):
  """Fixed tensors of `spec`: floats uniform in [0, 1), ints 0, bools True."""
  generator = tf.random.Generator.from_seed(seed)
  def make(s):
    shape = s.shape.as_list()
    if s.dtype.is_floating:
      return generator.uniform(shape, dtype=tf.float32) if (
          s.dtype == tf.float32) else tf.cast(generator.uniform(shape),
                                              s.dtype)
    if s.dtype == tf.bool:
      return tf.ones(shape, tf.bool)
    if s.dtype == tf.string:
      return tf.fill(shape, "")
    return tf.zeros(shape, s.dtype)
  return tf.nest.map_structure(make, spec)


@contextlib.contextmanager
def _stdout_is_stderr():
  """Sends fd 1 (ours and child processes') to stderr: stdout is the JSON."""
  sys.stdout.flush()
  saved = os.dup(1)
  os.dup2(2, 1)
  try:
    yield
  finally:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


# Our model.


def find_backbone(model):
  """The SpineNet inside `model` (depth first), or None."""
  if isinstance(model, spinenet_lib.SpineNet):
    return model
  for layer in getattr(model, "layers", ()):
    found = find_backbone(layer)
    if found is not None:
      return found
  return None


def _gin_value(name, default):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return default


def build_train_step(task, model, optimizer, batch_size, weight_decay):
  """One training step as the trainer runs it on one replica."""
  variables = model.trainable_variables

  @tf.function(jit_compile=FLAGS.jit_compile)
  def train_step(features, labels):
    with tf.GradientTape() as tape:
      outputs = model(features, training=True)
      losses = task.compute_losses(outputs, labels, batch_size)
      total = tf.cast(losses["total_loss"], tf.float32)
      total += optimization.weight_decay_loss(variables, weight_decay)
      scaled = optimizer.scale_loss(total)
    grads = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return total
  return train_step


def _export_task(task):
  """The task as exporting sees it, its data a placeholder (nothing read).

  export_saved_model reads the task's data dict only for the label map
  (assets/label_map.json), which nothing in the timed call uses; an
  experiment whose record patterns are unset (configs/datasets/coco.gin)
  could not even build that dict.
  """
  if not hasattr(task, "data_fn"):
    return task
  probe = copy.copy(task)
  probe.data_fn = lambda: _placeholder_data(task)
  if hasattr(probe, "_data"):
    probe._data = None  # pylint: disable=protected-access
  return probe


def run_serve(task):
  """Exports a freshly built model and times its serving signature.

  The model is built anew (random weights as initialised) so that the train
  mode's updates do not change what is served; the peer does the same. The
  SavedModel is written by official.exporting.export_saved_model, the
  function `python -m official.export` calls, so whatever that export does
  (batch-norm folding included) is what is timed.

  Returns:
    dict: latency_figures plus export_s (export_saved_model's wall time),
    saved_model_mb (MiB on disk, assets included), load_s
    (tf.saved_model.load), input, outputs (names), num_detections
    (detectors: of the timed image) and nms (detectors: our
    post-processing settings).
  """
  size = task.image_size
  model = task.build_model()
  figures = {}
  with tempfile.TemporaryDirectory(prefix="benchmark-serve-") as scratch:
    path = os.path.join(scratch, "saved_model")
    start = time.perf_counter()
    exporting.export_saved_model(_export_task(task), model, path,
                                 input_type="image_tensor", batch_size=1)
    export_s = time.perf_counter() - start
    saved_model_mb = directory_mb(path)
    start = time.perf_counter()
    loaded = tf.saved_model.load(path)
    load_s = time.perf_counter() - start
    signature = loaded.signatures["serving_default"]
    (key,) = signature.structured_input_signature[1]
    image = tf.constant(serve_image(size))
    times, first, outputs = time_calls(
        lambda: signature(**{key: image}), FLAGS.steps, FLAGS.warmup_steps)
    figures.update(latency_figures(times, FLAGS.warmup_steps, first))
    figures.update(export_s=round(export_s, 2),
                   saved_model_mb=round(saved_model_mb, 2),
                   load_s=round(load_s, 2),
                   input=f"image_tensor uint8 [1, {size}, {size}, 3]",
                   outputs=sorted(outputs))
    if "num_detections" in outputs:
      figures["num_detections"] = int(np.sum(outputs["num_detections"]))
    if isinstance(getattr(task, "postprocess_args", None), dict):
      figures["nms"] = dict(task.postprocess_args)
    del loaded, signature
  del model
  return figures


def run_ours(task, modes, batch_size):
  """Times our model; returns the result dict (without peer)."""
  result = {}
  policy = FLAGS.precision
  precision_lib.set_global_policy(policy)
  if FLAGS.synthetic_inputs and {"forward", "train"} & set(modes):
    batch = synthetic_batch(training_element_spec(task, batch_size))
    next_batch = lambda: batch
  elif {"forward", "train"} & set(modes):
    with _stdout_is_stderr():
      task.prepare_data()
    batches = iter(task.build_inputs(training=True,
                                     global_batch_size=batch_size))
    next_batch = lambda: next(batches)

  log("Building the model.")
  model = task.build_model()
  result["params"] = int(model.count_params())
  result["trainable_params"] = int(
      sum(int(np.prod(v.shape)) for v in model.trainable_variables))
  result["model"] = model.name
  backbone = find_backbone(model)
  result["backbone"] = backbone.name if backbone is not None else None
  failed = False

  if "forward" in modes:
    log("forward: %d warmup + %d timed steps of batch %d.",
        FLAGS.warmup_steps, FLAGS.steps, batch_size)
    forward = tf.function(lambda images: model(images, training=False),
                          jit_compile=FLAGS.jit_compile)
    _reset_device_memory()
    try:
      result["forward"] = _memory(time_steps(
          forward, lambda: (next_batch()[0],), batch_size, FLAGS.steps,
          FLAGS.warmup_steps))
      if FLAGS.op_profile:
        result["forward"]["op_profile"] = op_profile.profile_steps(
            tf, forward, lambda: (next_batch()[0],), FLAGS.op_profile)
    except Exception as e:  # pylint: disable=broad-except
      failed = True
      result["forward"] = {"error": f"{type(e).__name__}: {e}"}
    log("forward: %s", result["forward"])

  if "train" in modes:
    weight_decay = _gin_value("Trainer.weight_decay", 0.0) or 0.0
    optimizer = precision_lib.wrap_optimizer(
        optimization.build_optimizer(learning_rate=FLAGS.learning_rate),
        policy)
    optimizer.build(model.trainable_variables)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    result["optimizer"] = dict(
        name=type(inner).__name__, learning_rate=FLAGS.learning_rate,
        momentum=float(inner.momentum), nesterov=bool(inner.nesterov),
        clipnorm=inner.global_clipnorm, weight_decay=weight_decay)
    log("train: %d warmup + %d timed steps of batch %d.",
        FLAGS.warmup_steps, FLAGS.steps, batch_size)
    step = build_train_step(task, model, optimizer, batch_size, weight_decay)
    _reset_device_memory()
    try:
      result["train"] = _memory(time_steps(
          step, next_batch, batch_size, FLAGS.steps, FLAGS.warmup_steps))
      if FLAGS.op_profile:
        result["train"]["op_profile"] = op_profile.profile_steps(
            tf, step, next_batch, FLAGS.op_profile)
    except Exception as e:  # pylint: disable=broad-except
      failed = True
      result["train"] = {"error": f"{type(e).__name__}: {e}"}
    log("train: %s", result["train"])

  if "input" in modes:
    log("input: preparing the data and building the training pipeline.")
    _reset_device_memory()
    try:
      with _stdout_is_stderr():
        task.prepare_data()
      iterator = iter(task.build_inputs(training=True,
                                        global_batch_size=batch_size))
      result["input"] = _memory(time_steps(
          lambda: next(iterator), lambda: (), batch_size, FLAGS.steps,
          FLAGS.warmup_steps))
    except Exception as e:  # pylint: disable=broad-except
      failed = True
      result["input"] = {"error": f"{type(e).__name__}: {e}"}
    log("input: %s", result["input"])

  if "serve" in modes:
    log("serve: exporting a SavedModel (image_tensor, batch 1, %d px), then "
        "%d warmup + %d timed calls.", task.image_size, FLAGS.warmup_steps,
        FLAGS.steps)
    _reset_device_memory()
    try:
      result["serve"] = _memory(run_serve(task))
    except Exception as e:  # pylint: disable=broad-except
      failed = True
      result["serve"] = {"error": f"{type(e).__name__}: {e}"}
    log("serve: %s", result["serve"])
  return result, model, failed


def peer_spec(task, model, batch_size, result):
  """What the peer must build to match our model, as a JSON-able dict."""
  backbone = find_backbone(model)
  if backbone is None:
    return {"error": "Only SpineNet backbones have a Model Garden peer "
                     f"here; {model.name} has none."}
  config = backbone.get_config()
  model_id = _gin_value("spinenet.model_id", None)
  spec = {
      "steps": FLAGS.steps, "warmup_steps": FLAGS.warmup_steps,
      "batch_size": batch_size, "image_size": task.image_size,
      "precision": FLAGS.precision, "jit_compile": FLAGS.jit_compile,
      "op_profile": FLAGS.op_profile,
      "modes": [m for m in ("forward", "train", "serve") if m in result],
      "num_classes": task.num_classes,
      "model_id": str(model_id) if model_id is not None else None,
      "backbone": {k: config[k] for k in (
          "min_level", "max_level", "endpoints_num_filters",
          "resample_alpha", "block_repeats", "filter_size_scale",
          "init_stochastic_depth_rate", "activation", "use_sync_bn",
          "norm_momentum", "norm_epsilon", "fusion_mode",
          "dropblock_keep_prob", "block_fn_override")},
      "block_specs": [list(s[:2]) + [list(s[2]), s[3]]
                      for s in config["block_specs"]],
      "optimizer": result.get("optimizer", dict(
          learning_rate=FLAGS.learning_rate, momentum=0.9, nesterov=False,
          clipnorm=None, weight_decay=0.0)),
  }
  name = type(task).__name__
  if name == "RetinaNetTask":
    spec.update(
        task="retinanet", min_level=task.min_level, max_level=task.max_level,
        num_scales=task.num_scales, aspect_ratios=list(task.aspect_ratios),
        anchor_size=task.anchor_size, head_num_convs=task.head_num_convs,
        head_num_filters=task.head_num_filters,
        head_use_separable_conv=task.head_use_separable_conv,
        losses=dict(task.loss_args))
  elif name == "ClassificationTask":
    spec.update(task="classification",
                label_smoothing=task.label_smoothing,
                dropout_rate=task.dropout_rate, head_levels=task.head_levels)
  else:
    return {"error": f"No Model Garden peer for {name}."}
  if "serve" in result:
    try:
      spec["serve"] = peer_serve_spec(task, FLAGS.peer_nms_version)
    except ValueError as e:
      return {"error": str(e)}
  return spec


def peer_serve_spec(task, nms_version=None):
  """What Model Garden's export must set to serve as ours does.

  Both exports take image_tensor uint8 [1, S, S, 3]. For a RetinaNet the
  task's post-processing settings become Model Garden's DetectionGenerator
  fields; our nms_method picks the nms_version (NMS_VERSION_OF) unless
  nms_version is given.

  Args:
    task: our RetinaNetTask or ClassificationTask (its class name decides).
    nms_version: Model Garden's nms_version to use instead of the mapped
      one (one of PEER_NMS_VERSIONS), or None.

  Returns:
    dict image_size, batch_size (1), input_type ("image_tensor"),
    image_seed (of serve_image, so both sides time the same image),
    detection_generator (RetinaNet: Model Garden's field names and values;
    None for a classifier) and differences (sentences: what does not map).

  Raises:
    ValueError: nms_version is not one of PEER_NMS_VERSIONS, our nms_method
      is unknown, or the task has no Model Garden serving module here.
  """
  name = type(task).__name__
  spec = {"image_size": task.image_size, "batch_size": 1,
          "input_type": "image_tensor", "image_seed": SERVE_IMAGE_SEED,
          "detection_generator": None, "differences": []}
  notes = spec["differences"]
  if name == "ClassificationTask":
    notes.append("Model Garden's ClassificationModule returns logits and "
                 "probs; ours also returns the top-5 classes and "
                 "probabilities (official/tasks/classification.py, "
                 "serving_outputs).")
    return spec
  if name != "RetinaNetTask":
    raise ValueError(f"serve: no Model Garden serving module for {name} "
                     f"here (RetinaNetTask and ClassificationTask only).")
  args = task.postprocess_args
  method = args["nms_method"]
  if method not in NMS_VERSION_OF:
    raise ValueError(f"serve: RetinaNetTask.nms_method={method!r} has no "
                     f"Model Garden counterpart; expected one of "
                     f"{sorted(NMS_VERSION_OF)}.")
  if nms_version is not None and nms_version not in PEER_NMS_VERSIONS:
    raise ValueError(f"--peer_nms_version={nms_version!r}: expected one of "
                     f"{', '.join(PEER_NMS_VERSIONS)}.")
  version = nms_version or NMS_VERSION_OF[method]
  k = args["pre_nms_top_k"]
  spec["detection_generator"] = {
      "apply_nms": True, "nms_version": version, "pre_nms_top_k": k,
      "pre_nms_score_threshold": args["score_threshold"],
      "nms_iou_threshold": args["nms_iou_threshold"],
      "max_num_detections": args["max_detections"]}
  ours = (f"ours ({method}) keeps the top {k} (anchor, class) pairs over "
          f"all levels and classes and decodes only their boxes "
          f"(modeling/ops/postprocess.py)")
  if nms_version is not None and nms_version != NMS_VERSION_OF[method]:
    notes.append(f"nms_version {version!r} set by --peer_nms_version; the "
                 f"one matching our {method!r} NMS is "
                 f"{NMS_VERSION_OF[method]!r}.")
  if version == "batched":
    notes.append(f"Model Garden's 'batched' NMS is the kernel of our "
                 f"'combined' (tf.image.combined_non_max_suppression) but "
                 f"takes no pre_nms_top_k: it decodes every anchor's box "
                 f"and runs over every (anchor, class) score above "
                 f"pre_nms_score_threshold; {ours}.")
  elif version == "v1":
    notes.append(f"Model Garden's 'v1' NMS keeps the top pre_nms_top_k "
                 f"anchors per class and runs one "
                 f"tf.image.non_max_suppression_padded per class and image "
                 f"on all decoded boxes; {ours}, then one class-shifted NMS "
                 f"per image.")
  elif version == "v2":
    notes.append(f"Model Garden's 'v2' NMS keeps the top pre_nms_top_k "
                 f"anchors per class and runs one padded NMS per class on "
                 f"all decoded boxes; {ours}, then one class-shifted NMS.")
  else:
    notes.append(f"Model Garden's 'v3' NMS (edge-TPU friendly, refined "
                 f"per class) has no counterpart here; {ours}.")
  notes.append("Model Garden's detection signature also returns "
               "image_info; ours returns the boxes already mapped to the "
               "original image.")
  return spec


# The peer.


def ensure_peer_venv(venv, requirement):
  """Returns the peer venv's python, creating the venv when needed.

  Raises:
    RuntimeError: naming the step that failed (creation or pip install).
  """
  python = os.path.join(venv, "bin", "python")
  probe = [python, "-c", "import official.vision, tf_keras"]
  if os.path.exists(python) and subprocess.run(
      probe, capture_output=True, cwd=tempfile.gettempdir(),
      env=_peer_env()).returncode == 0:
    return python
  log("Creating the peer environment %s with `pip install %s` (large: "
      "TensorFlow, tf-keras and Model Garden; once).", venv, requirement)
  steps = [[sys.executable, "-m", "venv", venv],
           [python, "-m", "pip", "install", requirement]]
  for command in steps:
    done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr,
                          env=_peer_env())
    if done.returncode:
      raise RuntimeError(f"`{' '.join(command)}` failed with exit status "
                         f"{done.returncode} (see stderr).")
  if subprocess.run(probe, capture_output=True, cwd=tempfile.gettempdir(),
                    env=_peer_env()).returncode:
    raise RuntimeError(f"{venv} was created but `import official.vision, "
                       f"tf_keras` fails there.")
  return python


def _peer_env():
  """Our environment without anything that would put our code on its path."""
  env = dict(os.environ)
  for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
    env.pop(name, None)
  env["PYTHONNOUSERSITE"] = "1"
  return env


def run_peer(spec):
  """Runs peer_model_garden.py in the peer venv; returns its JSON or error."""
  if "error" in spec:
    return spec
  try:
    python = ensure_peer_venv(FLAGS.peer_venv, FLAGS.peer_requirement)
  except (RuntimeError, OSError) as e:
    return {"error": f"Model Garden peer unavailable: {e}"}
  log("Running the Model Garden peer (%s) on --spec=%s", python,
      json.dumps(spec))
  with tempfile.TemporaryDirectory(prefix="peer-benchmark-") as cwd:
    try:
      done = subprocess.run(
          [python, PEER_SCRIPT, "--spec=" + json.dumps(spec)], cwd=cwd,
          env=_peer_env(), stdout=subprocess.PIPE, stderr=sys.stderr,
          text=True, timeout=FLAGS.peer_timeout)
    except subprocess.TimeoutExpired:
      return {"error": f"The peer ran past --peer_timeout="
                       f"{FLAGS.peer_timeout}s."}
  lines = [l for l in done.stdout.splitlines() if l.strip()]
  try:
    peer = json.loads(lines[-1])
  except (IndexError, ValueError):
    peer = {"error": f"The peer exited with status {done.returncode} and "
                     f"printed no JSON (its log is on stderr)."}
  if done.returncode and "error" not in peer:
    peer["error"] = f"The peer exited with status {done.returncode}."
  return peer


def ratios(ours, peer):
  """ours / peer for every number both report."""
  out = {}
  if isinstance(ours.get("params"), int) and peer.get("params"):
    out["params"] = round(ours["params"] / peer["params"], 4)
  for mode in ("forward", "train"):
    a, b = ours.get(mode) or {}, peer.get(mode) or {}
    # Throughput ratios from the step times (ms, two decimals): at under one
    # image/s the rounded images_per_sec keep only three digits. Both sides
    # run the same batch, so peer step time / ours is ours / peer images/s.
    for key, time_key in (("images_per_sec", "step_time_ms"),
                          ("images_per_sec_median", "step_time_ms_median")):
      if a.get(time_key) and isinstance(b.get(time_key), (int, float)):
        out[f"{mode}_{key}"] = round(b[time_key] / a[time_key], 4)
    for key in ("peak_host_memory_mb", "peak_device_memory_mb"):
      if isinstance(a.get(key), (int, float)) and b.get(key):
        out[f"{mode}_{key}"] = round(a[key] / b[key], 3)
  a, b = ours.get("serve") or {}, peer.get("serve") or {}
  # Latencies as speedups (peer / ours): above 1 is ours faster, as for
  # images_per_sec.
  for key in ("p50", "p90"):
    if a.get(f"latency_ms_{key}") and isinstance(
        b.get(f"latency_ms_{key}"), (int, float)):
      out[f"serve_speedup_{key}"] = round(
          b[f"latency_ms_{key}"] / a[f"latency_ms_{key}"], 3)
  for key in ("images_per_sec", "saved_model_mb", "peak_host_memory_mb",
              "peak_device_memory_mb"):
    if isinstance(a.get(key), (int, float)) and b.get(key):
      out[f"serve_{key}"] = round(a[key] / b[key], 3)
  return out


def parse_gin(gin_files, gin_params):
  """Parses the experiment, resolving `include 'configs/...'` from any cwd.

  Includes are written relative to the repository root. Parsed from another
  directory, gin's package-resource reader takes 'configs/experiments' for a
  Python package, finds the namespace package that the repository root on
  sys.path makes of configs/, and fails on its missing origin before it
  tries the repository root search path. Parsing with the repository root as
  the working directory resolves them as `python -m official.train` does;
  paths inside the bindings (data directories) are not touched by parsing.
  """
  gin_files = [f if "://" in f else os.path.abspath(f) for f in gin_files]
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)
  try:
    gin_config.parse_gin(gin_files, gin_params, skip_unknown=False)
  finally:
    os.chdir(cwd)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.gin_file:
    raise app.UsageError("Pass --gin_file=EXPERIMENT.gin.")
  modes = [m.strip() for m in FLAGS.mode if m.strip()]
  unknown = sorted(set(modes) - set(MODES))
  if unknown or not modes:
    raise app.UsageError(f"--mode: unknown {unknown}; expected a "
                         f"comma-separated subset of {','.join(MODES)}.")
  if FLAGS.op_profile and FLAGS.jit_compile:
    raise app.UsageError(
        f"--op_profile={FLAGS.op_profile} with --jit_compile: the profile "
        f"times TensorFlow ops, and XLA-compiled steps run none. Drop one.")
  if FLAGS.peer_nms_version not in (None, *PEER_NMS_VERSIONS):
    raise app.UsageError(f"--peer_nms_version={FLAGS.peer_nms_version!r}: "
                         f"expected one of {', '.join(PEER_NMS_VERSIONS)}.")

  # Whatever the libraries or the data converters print, stdout is the JSON.
  json_out = os.fdopen(os.dup(1), "w")
  with _stdout_is_stderr():
    parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    task = registry.experiment()
    if FLAGS.image_size:
      task.image_size = FLAGS.image_size
    batch_size = FLAGS.batch_size
    ours = {
        "experiment": FLAGS.gin_file[-1] if len(FLAGS.gin_file) == 1
                      else FLAGS.gin_file,
        "gin_params": FLAGS.gin_param,
        "task": type(task).__name__,
        "image_size": getattr(task, "image_size", None),
        "batch_size": batch_size,
        "precision": FLAGS.precision,
        "jit_compile": FLAGS.jit_compile,
        "synthetic_inputs": FLAGS.synthetic_inputs,
        "device": device_info(),
        "versions": {"python": platform.python_version(),
                     "tensorflow": tf.__version__,
                     "keras": keras.__version__},
        "host_memory_after_import_mb": round(peak_host_memory_mb(), 1),
    }
    measured, model, failed = run_ours(task, modes, batch_size)
    ours.update(measured)
    output = ours
    if FLAGS.peer:
      spec = peer_spec(task, model, batch_size, measured)
      del model
      peer = run_peer(spec)
      output = {"ours": ours, "peer": peer, "ratio": ratios(ours, peer)}
  json_out.write(json.dumps(output, indent=1, sort_keys=False) + "\n")
  json_out.close()
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  logging.set_stderrthreshold("warning")
  app.run(main)
