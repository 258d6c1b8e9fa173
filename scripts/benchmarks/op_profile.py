"""Where a step's CPU time goes, by TensorFlow op type (benchmark.py --op_profile).

Shared by benchmark.py and peer_model_garden.py, so it imports nothing but
the standard library and TensorFlow (the two sides run in different
environments). The steps are run under the TensorFlow profiler
(tf.profiler.experimental) and its XSpace is read back: every op the
executor ran on the host CPU ("/host:CPU" plane, the "tf_Compute" thread
lines) is summed by op type, so the figures exist only for steps that run
on the CPU.

Op time is the sum of the ops' own durations. It is not wall time: on a
machine with several cores the executor runs independent ops at once, so
the total can exceed the step's wall time, and an op slowed by a neighbour
counts its slowed time. The shares are what the comparison with the peer
needs: how much of the step is spent in the convolution and batch-norm
kernels both sides call (the same oneDNN kernels on the CPU), and hence
how much any change outside those kernels can gain at most.
"""

import collections
import glob
import os
import tempfile

# Op-type groups, matched on the type name with TensorFlow's oneDNN prefixes
# (_MklNative, _Mkl) removed. Conv2D covers Conv2D, FusedConv2D (conv +
# bias/batch norm + activation, which grappler fuses at inference),
# Conv2DBackpropInput, Conv2DBackpropFilter(WithBias) and the depthwise ops.
GROUPS = (
    ("convolution", ("Conv2D", "DepthwiseConv2dNative")),
    ("batch_norm", ("FusedBatchNorm",)),
)
_PREFIXES = ("_MklNative", "_Mkl", "_")


def normalized_type(op_type):
  """`op_type` without TensorFlow's oneDNN prefixes: _MklNativeConv2D ->
  Conv2D, _MklNativeFusedConv2D -> FusedConv2D, _FusedConv2D ->
  FusedConv2D."""
  for prefix in _PREFIXES:
    if op_type.startswith(prefix):
      return op_type[len(prefix):]
  return op_type


def group_of(op_type):
  """The GROUPS name whose patterns occur in `op_type`, else "other"."""
  name = normalized_type(op_type)
  for group, patterns in GROUPS:
    if any(p in name for p in patterns):
      return group
  return "other"


def summarize(durations_ms, counts, steps, top=12):
  """Figures per step from per-type totals over `steps` steps.

  Args:
    durations_ms: op type -> summed duration (ms) over all profiled steps.
    counts: op type -> number of executions over all profiled steps.
    steps: how many steps the totals cover (>= 1).
    top: how many op types to list.

  Returns:
    dict op_time_ms (per step), share (group -> fraction of op time; the
    groups of GROUPS plus "other"), top_ops (list of [type, ms per step,
    executions per step], longest first), steps.

  Raises:
    ValueError: `steps` < 1 or no op was recorded.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  total = sum(durations_ms.values())
  if total <= 0:
    raise ValueError("the profile recorded no op on the host CPU: the steps "
                     "ran on another device, or the profiler captured "
                     "nothing")
  share = collections.Counter()
  for op_type, ms in durations_ms.items():
    share[group_of(op_type)] += ms
  groups = [g for g, _ in GROUPS] + ["other"]
  ranked = sorted(durations_ms, key=lambda t: -durations_ms[t])[:top]
  return {
      "op_time_ms": round(total / steps, 2),
      "share": {g: round(share[g] / total, 4) for g in groups},
      "top_ops": [[t, round(durations_ms[t] / steps, 2),
                   round(counts[t] / steps, 1)] for t in ranked],
      "steps": steps,
  }


def read_xspace(logdir):
  """Per-op-type totals of the host CPU ops in the profile under `logdir`.

  Returns:
    (durations_ms, counts): op type -> summed ms, op type -> executions.

  Raises:
    FileNotFoundError: no .xplane.pb under `logdir`.
  """
  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                    recursive=True)
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {logdir}: the profiler "
                            f"wrote nothing")
  space = xplane_pb2.XSpace()
  with open(paths[0], "rb") as f:
    space.ParseFromString(f.read())
  durations = collections.Counter()
  counts = collections.Counter()
  for plane in space.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        # Op events are "node_name:OpType"; "::" marks C++ scopes (not ops).
        if ":" not in name or "::" in name:
          continue
        op_type = name.rsplit(":", 1)[1]
        durations[op_type] += event.duration_ps / 1e9
        counts[op_type] += 1
  return durations, counts


def profile_steps(tf, step, next_args, steps, top=12):
  """Runs `steps` calls of `step` under the profiler; their op-time figures.

  Args:
    tf: the tensorflow module (passed in: the peer imports it late).
    step: callable(*args) -> nest of tensors, already traced (warm).
    next_args: callable() -> the args of the next call.
    steps: profiled calls (>= 1).
    top: op types to list.

  Returns:
    summarize()'s dict; {"skipped": reason} when a GPU is visible (its
    kernels run on the device, and the host's op events would time their
    launches, not their work); {"error": "..."} when profiling fails (a
    profiler already running, nothing recorded): the caller's timing
    figures are kept either way.
  """
  if tf.config.list_physical_devices("GPU"):
    return {"skipped": "op_profile times ops run on the CPU; this process "
                       "runs its steps on a GPU"}
  def block(value):
    for leaf in tf.nest.flatten(value):
      if hasattr(leaf, "numpy"):
        leaf.numpy()
  try:
    with tempfile.TemporaryDirectory(prefix="op_profile_") as logdir:
      tf.profiler.experimental.start(logdir)
      try:
        for _ in range(steps):
          block(step(*next_args()))
      finally:
        tf.profiler.experimental.stop()
      durations, counts = read_xspace(logdir)
    return summarize(durations, counts, steps, top)
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {e}"}
