r"""Times Model Garden's SpineNet RetinaNet or classifier: benchmark.py's peer.

Runs only with the peer environment's python (tf-models-official, which
brings tf-keras / Keras 2 and its own top-level `official` package), from a
directory outside this repository and with PYTHONPATH cleared, so that this
repository's `official` cannot be imported by mistake. benchmark.py starts
it; by hand:

  .venv-peer/bin/python scripts/benchmarks/peer_model_garden.py --spec='{...}'

The spec (JSON, written by benchmark.py's `peer_spec`) describes our model:
task ("retinanet" or "classification"), image and batch size, the resolved
SpineNet scaling and block specs, norm/activation, head, anchors, losses,
optimizer, steps. The model is built with Model Garden's own classes:
`exp_factory.get_exp_config('retinanet_spinenet_coco')` (or
'image_classification') edited to match, its SpineNet built explicitly with
our scaling (Model Garden's config knows only the model id's scaling), then
`factory.build_retinanet` / `factory.build_classification_model` and the
task's own `train_step` (losses, L2 regularisation, optimizer update) inside
a tf.function, on synthetic tensors shaped like Model Garden's input
pipeline's. Forward is backbone -> decoder -> head with training=False (raw
outputs, like ours; no box decoding or NMS).

Serve (spec["modes"] has "serve"; spec["serve"] from benchmark.py's
`peer_serve_spec`): a freshly built model of the same network, its
DetectionGenerator set from spec["serve"]["detection_generator"], exported
by Model Garden's own path, official.vision.serving.export_saved_model_lib
.export_inference_graph with a DetectionModule (RetinaNet) or
ClassificationModule (classifier) around it, input image_tensor, batch 1,
no checkpoint (random weights, as ours); then loaded with
tf.saved_model.load and its `serving_default` signature timed on the same
fixed uint8 image as ours (`serve_image`), every output fetched, with
benchmark.py's figures (`latency_figures`).

Prints one JSON line on stdout; progress on stderr.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

# Beside this file; imports only TensorFlow, so it runs in the peer's venv.
import op_profile  # pylint: disable=g-import-not-at-top


def log(message, *args):
  print("[peer] " + (message % args if args else message), file=sys.stderr,
        flush=True)


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


def check_isolated():
  """Fails unless `official` is Model Garden's, from this environment."""
  import official  # pylint: disable=g-import-not-at-top
  where = os.path.realpath(os.path.dirname(official.__file__))
  prefix = os.path.realpath(sys.prefix)
  if not where.startswith(prefix + os.sep):
    raise RuntimeError(
        f"`official` resolves to {where}, not to Model Garden in {prefix}: "
        f"run this script with the peer venv's python, outside the "
        f"repository, with PYTHONPATH unset.")
  return where


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_info(tf):
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


def time_steps(step, args, batch_size, steps, warmup_steps):
  """The protocol and figures of benchmark.py's time_steps (fixed inputs)."""
  def block(value):
    for leaf in tf.nest.flatten(value):
      if hasattr(leaf, "numpy"):
        leaf.numpy()
        return
  start = time.perf_counter()
  block(step(*args))
  first = time.perf_counter() - start
  for _ in range(warmup_steps - 1):
    block(step(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    block(step(*args))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"images_per_sec": round(len(times) * batch_size / sum(times), 3),
          "images_per_sec_median": round(batch_size / median, 3),
          "step_time_ms": round(1000.0 * sum(times) / len(times), 2),
          "step_time_ms_median": round(1000.0 * median, 2),
          "step_time_ms_min": round(1000.0 * min(times), 2),
          "step_time_ms_max": round(1000.0 * max(times), 2),
          "steps": len(times), "warmup_steps": warmup_steps,
          "first_step_s": round(first, 2)}


def serve_image(size, seed):
  """benchmark.py's serve_image: uint8 [1, size, size, 3] from PCG64(seed)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.default_rng(seed).integers(
      0, 256, size=(1, size, size, 3), dtype=np.uint8)


def time_calls(call, steps, warmup_steps):
  """benchmark.py's time_calls: (times, first, last outputs as numpy)."""
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
  """benchmark.py's latency_figures (the same keys and percentiles)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
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
  """Total size of the files under path, in MiB (benchmark.py's)."""
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total / 2**20


def memory(result):
  result["peak_host_memory_mb"] = round(peak_host_memory_mb(), 1)
  if tf.config.list_physical_devices("GPU"):
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    result["peak_device_memory_mb"] = round(peak / 2**20, 1)
  return result


def reset_device_memory():
  if tf.config.list_physical_devices("GPU"):
    tf.config.experimental.reset_memory_stats("GPU:0")


# Building Model Garden's model.


def build_backbone(spec, input_specs, l2):
  """Model Garden's SpineNet with our resolved scaling and block specs."""
  from official.vision.modeling.backbones import spinenet  # pylint: disable=g-import-not-at-top
  b = spec["backbone"]
  block_specs = spinenet.build_block_specs(
      [(s[0], s[1], tuple(s[2]), s[3]) for s in spec["block_specs"]])
  return spinenet.SpineNet(
      input_specs=input_specs, min_level=b["min_level"],
      max_level=b["max_level"], block_specs=block_specs,
      endpoints_num_filters=b["endpoints_num_filters"],
      resample_alpha=b["resample_alpha"], block_repeats=b["block_repeats"],
      filter_size_scale=b["filter_size_scale"],
      init_stochastic_depth_rate=b["init_stochastic_depth_rate"] or 0.0,
      kernel_regularizer=l2, activation=b["activation"],
      use_sync_bn=b["use_sync_bn"], norm_momentum=b["norm_momentum"],
      norm_epsilon=b["norm_epsilon"])


def differences(spec):
  """What Model Garden cannot mirror of our configuration."""
  b = spec["backbone"]
  notes = []
  if b.get("fusion_mode") not in (None, "sum"):
    notes.append(f"our fusion_mode={b['fusion_mode']!r}; Model Garden sums.")
  if b.get("dropblock_keep_prob"):
    notes.append(f"our backbone applies DropBlock (keep "
                 f"{b['dropblock_keep_prob']}) in training; Model Garden's "
                 f"SpineNet has none.")
  if b.get("block_fn_override"):
    notes.append(f"our block_fn_override={b['block_fn_override']!r} is not "
                 f"mirrored.")
  if spec["task"] == "classification":
    notes.append("Model Garden's classifier pools only the highest level "
                 "(P7); ours averages the levels upsampled to P3 "
                 "(modeling/heads/classification.py).")
  return notes


def optimizer_config(spec):
  from official.modeling import optimization  # pylint: disable=g-import-not-at-top
  o = spec["optimizer"]
  sgd = {"momentum": o["momentum"], "nesterov": o["nesterov"]}
  if o.get("clipnorm"):
    sgd["global_clipnorm"] = o["clipnorm"]
  return optimization.OptimizationConfig({
      "optimizer": {"type": "sgd", "sgd": sgd},
      "learning_rate": {"type": "constant",
                        "constant": {"learning_rate": o["learning_rate"]}}})


def retinanet(spec, batch_size):
  """(config, task, model, forward_fn, labels) for a RetinaNet."""
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  from official.vision.modeling import factory  # pylint: disable=g-import-not-at-top
  size = spec["image_size"]
  b = spec["backbone"]
  config = exp_factory.get_exp_config("retinanet_spinenet_coco")
  model_cfg = config.task.model
  model_cfg.num_classes = spec["num_classes"]
  model_cfg.input_size = [size, size, 3]
  model_cfg.min_level = spec["min_level"]
  model_cfg.max_level = spec["max_level"]
  model_cfg.backbone.spinenet.model_id = spec["model_id"] or "49"
  model_cfg.backbone.spinenet.min_level = b["min_level"]
  model_cfg.backbone.spinenet.max_level = b["max_level"]
  model_cfg.backbone.spinenet.stochastic_depth_drop_rate = (
      b["init_stochastic_depth_rate"] or 0.0)
  model_cfg.anchor.num_scales = spec["num_scales"]
  model_cfg.anchor.aspect_ratios = spec["aspect_ratios"]
  model_cfg.anchor.anchor_size = spec["anchor_size"]
  model_cfg.head.num_convs = spec["head_num_convs"]
  model_cfg.head.num_filters = spec["head_num_filters"]
  model_cfg.head.use_separable_conv = spec["head_use_separable_conv"]
  # Serving only: forward and train never reach the detection generator.
  for key, value in ((spec.get("serve") or {}).get("detection_generator")
                     or {}).items():
    setattr(model_cfg.detection_generator, key, value)
  model_cfg.norm_activation.activation = b["activation"]
  model_cfg.norm_activation.use_sync_bn = b["use_sync_bn"]
  model_cfg.norm_activation.norm_momentum = b["norm_momentum"]
  model_cfg.norm_activation.norm_epsilon = b["norm_epsilon"]
  losses = spec["losses"]
  config.task.losses.focal_loss_alpha = losses["alpha"]
  config.task.losses.focal_loss_gamma = losses["gamma"]
  config.task.losses.huber_loss_delta = losses["huber_delta"]
  config.task.losses.box_loss_weight = losses["box_loss_weight"]
  weight_decay = spec["optimizer"]["weight_decay"] or 0.0
  config.task.losses.l2_weight_decay = weight_decay
  config.trainer.optimizer_config = optimizer_config(spec)
  config.validate()

  task = task_factory.get_task(config.task)
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  # As RetinaNetTask.build_model: L2 / 2 matches wd * sum(tf.nn.l2_loss).
  l2 = tf_keras.regularizers.l2(weight_decay / 2.0) if weight_decay else None
  model = factory.build_retinanet(
      input_specs=input_specs, model_config=model_cfg, l2_regularizer=l2,
      backbone=build_backbone(spec, input_specs, l2))

  # Synthetic labels in the layout of Model Garden's RetinaNet parser: every
  # anchor background (cls 0, weight 1), no box positives, like ours.
  anchors = spec["num_scales"] * len(spec["aspect_ratios"])
  cls_targets, box_targets, anchor_boxes = {}, {}, {}
  total = 0
  for level in range(spec["min_level"], spec["max_level"] + 1):
    side = -(-size // 2**level)
    total += side * side * anchors
    cls_targets[str(level)] = tf.zeros([batch_size, side, side, anchors],
                                       tf.int32)
    box_targets[str(level)] = tf.random.uniform(
        [batch_size, side, side, anchors * 4], seed=level)
    anchor_boxes[str(level)] = tf.random.uniform(
        [batch_size, side, side, anchors * 4], seed=level)
  labels = {
      "cls_targets": cls_targets, "box_targets": box_targets,
      "anchor_boxes": anchor_boxes,
      "cls_weights": tf.ones([batch_size, total]),
      "box_weights": tf.zeros([batch_size, total]),
      "image_info": tf.random.uniform([batch_size, 4, 2]),
  }

  def forward(images):
    features = model.backbone(images, training=False)
    if model.decoder is not None:
      features = model.decoder(features, training=False)
    return model.head(features, training=False)
  return config, task, model, forward, labels


def classification(spec, batch_size):
  """(config, task, model, forward_fn, labels) for a classifier."""
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  from official.core import task_factory  # pylint: disable=g-import-not-at-top
  from official.vision.configs import backbones  # pylint: disable=g-import-not-at-top
  from official.vision.modeling import factory  # pylint: disable=g-import-not-at-top
  size = spec["image_size"]
  b = spec["backbone"]
  config = exp_factory.get_exp_config("image_classification")
  model_cfg = config.task.model
  model_cfg.num_classes = spec["num_classes"]
  model_cfg.input_size = [size, size, 3]
  model_cfg.dropout_rate = spec["dropout_rate"] or 0.0
  model_cfg.backbone = backbones.Backbone(
      type="spinenet", spinenet=backbones.SpineNet(
          model_id=spec["model_id"] or "49", min_level=b["min_level"],
          max_level=b["max_level"],
          stochastic_depth_drop_rate=b["init_stochastic_depth_rate"] or 0.0))
  model_cfg.norm_activation.activation = b["activation"]
  model_cfg.norm_activation.use_sync_bn = b["use_sync_bn"]
  model_cfg.norm_activation.norm_momentum = b["norm_momentum"]
  model_cfg.norm_activation.norm_epsilon = b["norm_epsilon"]
  config.task.losses.label_smoothing = spec["label_smoothing"] or 0.0
  weight_decay = spec["optimizer"]["weight_decay"] or 0.0
  config.task.losses.l2_weight_decay = weight_decay
  config.trainer.optimizer_config = optimizer_config(spec)

  task = task_factory.get_task(config.task)
  input_specs = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
  l2 = tf_keras.regularizers.l2(weight_decay / 2.0) if weight_decay else None
  model = factory.build_classification_model(
      input_specs=input_specs, model_config=model_cfg, l2_regularizer=l2,
      backbone=build_backbone(spec, input_specs, l2))
  labels = tf.zeros([batch_size], tf.int32)
  forward = lambda images: model(images, training=False)
  return config, task, model, forward, labels


def serve(spec, build):
  """Exports a fresh model with Model Garden's exporter and times it.

  Returns:
    dict: latency_figures plus export_s, saved_model_mb (MiB on disk,
    params.yaml included), load_s, input, outputs (names), num_detections
    (detectors: of the timed image), detection_generator (detectors: its
    configured fields) and module (the export module's class).
  """
  from official.vision.serving import detection  # pylint: disable=g-import-not-at-top
  from official.vision.serving import export_saved_model_lib  # pylint: disable=g-import-not-at-top
  from official.vision.serving import image_classification  # pylint: disable=g-import-not-at-top
  size = spec["image_size"]
  config, _, model, _, _ = build[spec["task"]](spec, 1)
  module_class = {"retinanet": detection.DetectionModule,
                  "classification": image_classification.ClassificationModule
                  }[spec["task"]]
  module = module_class(params=config, batch_size=1,
                        input_image_size=[size, size],
                        input_type="image_tensor", model=model)
  figures = {"module": module_class.__name__}
  with tempfile.TemporaryDirectory(prefix="peer-serve-") as scratch:
    path = os.path.join(scratch, "export")
    start = time.perf_counter()
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor", batch_size=1,
        input_image_size=[size, size], params=config, checkpoint_path=None,
        export_dir=path, export_module=module)
    export_s = time.perf_counter() - start
    saved_model_mb = directory_mb(path)
    start = time.perf_counter()
    loaded = tf.saved_model.load(path)
    load_s = time.perf_counter() - start
    signature = loaded.signatures["serving_default"]
    (key,) = signature.structured_input_signature[1]
    image = tf.constant(serve_image(size, spec["serve"]["image_seed"]))
    times, first, outputs = time_calls(
        lambda: signature(**{key: image}), spec["steps"],
        spec["warmup_steps"])
    figures.update(latency_figures(times, spec["warmup_steps"], first))
    figures.update(export_s=round(export_s, 2),
                   saved_model_mb=round(saved_model_mb, 2),
                   load_s=round(load_s, 2),
                   input=f"image_tensor uint8 [1, {size}, {size}, 3]",
                   outputs=sorted(outputs))
    if "num_detections" in outputs:
      figures["num_detections"] = int(outputs["num_detections"].sum())
    if spec["task"] == "retinanet":
      figures["detection_generator"] = (
          config.task.model.detection_generator.as_dict())
    del loaded, signature
  return figures


def run(spec):
  """Builds and times the peer; returns the result dict."""
  from official.modeling import optimization  # pylint: disable=g-import-not-at-top
  from official.modeling import performance  # pylint: disable=g-import-not-at-top
  result = {
      "source": check_isolated(),
      "versions": {"python": platform.python_version(),
                   "tensorflow": tf.__version__,
                   "tf_keras": tf_keras.__version__},
      "device": device_info(tf),
      "image_size": spec["image_size"], "batch_size": spec["batch_size"],
      "precision": spec["precision"], "jit_compile": spec["jit_compile"],
      "host_memory_after_import_mb": round(peak_host_memory_mb(), 1),
  }
  # As Model Garden's train.py: the policy is set before the model is built.
  performance.set_mixed_precision_policy(
      {"float32": "float32", "mixed_float16": "float16",
       "mixed_bfloat16": "bfloat16"}[spec["precision"]])
  batch_size = spec["batch_size"]
  build = {"retinanet": retinanet, "classification": classification}
  _, task, model, forward, labels = build[spec["task"]](spec, batch_size)
  result["model"] = f"Model Garden {type(model).__name__} + SpineNet"
  notes = differences(spec)
  if "serve" in spec["modes"]:
    notes += spec["serve"]["differences"]
  if notes:
    result["differences"] = notes
  images = tf.random.uniform([batch_size, spec["image_size"],
                              spec["image_size"], 3], seed=0)
  jit = bool(spec["jit_compile"])

  if "forward" in spec["modes"]:
    log("forward: %d warmup + %d timed steps of batch %d.",
        spec["warmup_steps"], spec["steps"], batch_size)
    reset_device_memory()
    forward_fn = tf.function(forward, jit_compile=jit)
    result["forward"] = memory(time_steps(
        forward_fn, (images,), batch_size, spec["steps"],
        spec["warmup_steps"]))
    if spec.get("op_profile"):
      result["forward"]["op_profile"] = op_profile.profile_steps(
          tf, forward_fn, lambda: (images,), spec["op_profile"])
    log("forward: %s", result["forward"])

  if "train" in spec["modes"]:
    opt_factory = optimization.OptimizerFactory(optimizer_config(spec))
    optimizer = opt_factory.build_optimizer(
        opt_factory.build_learning_rate())
    # As Model Garden's base task: loss scaling for float16.
    optimizer = performance.configure_optimizer(
        optimizer, use_float16=spec["precision"] == "mixed_float16")
    result["optimizer"] = type(optimizer).__name__

    @tf.function(jit_compile=jit)
    def train_step(features, labels):
      logs = task.train_step((features, labels), model, optimizer)
      return logs[task.loss]

    log("train: %d warmup + %d timed steps of batch %d.",
        spec["warmup_steps"], spec["steps"], batch_size)
    reset_device_memory()
    result["train"] = memory(time_steps(
        train_step, (images, labels), batch_size, spec["steps"],
        spec["warmup_steps"]))
    if spec.get("op_profile"):
      result["train"]["op_profile"] = op_profile.profile_steps(
          tf, train_step, lambda: (images, labels), spec["op_profile"])
    log("train: %s", result["train"])

  if "serve" in spec["modes"]:
    log("serve: exporting with Model Garden (image_tensor, batch 1, %d px), "
        "then %d warmup + %d timed calls.", spec["image_size"],
        spec["warmup_steps"], spec["steps"])
    reset_device_memory()
    result["serve"] = memory(serve(spec, build))
    log("serve: %s", result["serve"])

  # Model Garden's RetinaNetModel is subclassed, and with an identity decoder
  # its head is built only when first called: count the weights now.
  if not {"forward", "train"} & set(spec["modes"]):
    forward(images)
  result["params"] = sum(v.shape.num_elements() for v in model.weights)
  result["trainable_params"] = sum(
      v.shape.num_elements() for v in model.trainable_weights)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--spec", required=True, help="JSON from benchmark.py")
  args = parser.parse_args()
  spec = json.loads(args.spec)
  global tf, tf_keras  # pylint: disable=global-variable-undefined
  try:
    check_isolated()
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
    import tf_keras  # pylint: disable=g-import-not-at-top,redefined-outer-name
    from official.vision import registry_imports  # pylint: disable=g-import-not-at-top,unused-import
    result = run(spec)
  except Exception as e:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc(file=sys.stderr)
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    sys.exit(1)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
