"""Preemption: on SIGTERM, a checkpoint at the next step boundary, then exit.

Cloud TPU VMs and spot (preemptible) GPU hosts are sent SIGTERM about 30 s
before they are stopped. Without a handler Python dies at once and the run
loses every step since its last periodic checkpoint. With `Watcher` around
the train loop (official/core/train_loop.py):

- SIGTERM sets a flag (the handler only sets it; Python runs signal handlers
  between bytecodes of the main thread, i.e. once the host loop that is
  running returns);
- after that host loop the trainer saves MODEL_DIR/ckpt-<step> (the training
  state is checked for NaN/Inf first, as before every save) and raises
  `diagnostics.PreemptedError`;
- `python -m official.train` then prints "official.train: PreemptedError:
  ..." (the step and the checkpoint; rerun the same command to resume) as
  its last line and exits with status EXIT_CODE;
- the next start resumes from that checkpoint as from any other.

The time from the signal to the save is at most one host loop
(`Trainer.steps_per_loop` steps) plus the save itself: keep steps_per_loop x
step time well under the notice. A SIGTERM during the final evaluation of
train_and_eval, after the last step, is not caught (the last checkpoint is
already written).

EXIT_CODE is 143 (128 + SIGTERM), the status TensorFlow's own preemption
handler exits with on Google Cloud to ask for a restart
(`_RESTARTABLE_EXIT_CODE` in tensorflow/python/distribute/failure_handling/
failure_handling_util.py); it is also what a shell reports for a process
that SIGTERM killed, so a supervisor that restarts on 143 restarts both.
The last line of the output tells the two apart.

Strategies:
- one_device, mirrored and TPUStrategy: the flag above. TensorFlow's
  `tf.distribute.experimental.PreemptionCheckpointHandler` is not used for
  TPUStrategy: on a Cloud TPU VM it detects the platform GCE_TPU, logs that
  it does not support it, and neither watches for a signal nor saves.
- multi_worker_mirrored with more than one worker: every worker must stop
  after the same step, or the others wait in an all-reduce until they are
  killed. `PreemptionCheckpointHandler` agrees on that step through the
  coordination service: it polls the flag of this module
  (TerminationConfig.termination_watcher_fn, so a SIGTERM on any worker
  counts, on every platform), makes every worker save at the agreed step
  through the trainer's checked save (save_fn), and ends with exit_fn, which
  raises PreemptedError on every worker. Host loops go through
  `Watcher.run` for this. The handler adds its run counter
  ("checkpointed_runs") to the checkpoints of such runs; other runs restore
  them all the same.

Tested here on CPU: one device (tests/official/test_training_state.py) and
two MultiWorkerMirroredStrategy workers on one host
(tests/official/test_preemption_multi_worker.py). Not tested: TPUStrategy
(no TPU), GPU hosts, and the real notice of a cloud platform.
"""

import signal
import threading

import tensorflow as tf
from absl import logging

from official.core import diagnostics

EXIT_CODE = 143


def _is_multi_worker(strategy):
  """MultiWorkerMirroredStrategy over a cluster of more than one worker."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  jobs = resolver.cluster_spec().as_dict()
  return len(jobs.get("chief", [])) + len(jobs.get("worker", [])) > 1


class Watcher:
  """Catches SIGTERM for the duration of a `with` block (the train loop).

  Args:
    strategy: the tf.distribute.Strategy the loop runs under.
    save: callable() -> checkpoint path; saves the training state (every
      worker calls it under MultiWorkerMirroredStrategy).
    step: callable() -> int, steps completed.
    latest: callable() -> path of the latest checkpoint (for the message).
    checkpoint_manager_fn: callable() -> a tf.train.CheckpointManager of the
      model directory; PreemptionCheckpointHandler needs one (it restores the
      latest checkpoint when made). Only called for multi-worker strategies.

  The handler can only be installed from the main thread; elsewhere (a
  notebook's worker thread) SIGTERM keeps its previous behaviour and a
  warning says so.
  """

  def __init__(self, strategy, save, step, latest,
               checkpoint_manager_fn=None):
    self._strategy = strategy
    self._save = save
    self._step = step
    self._latest = latest
    self._checkpoint_manager_fn = checkpoint_manager_fn
    self._event = threading.Event()
    self._previous = None
    self._installed = False
    self._handler = None

  @property
  def requested(self):
    """True once SIGTERM was received."""
    return self._event.is_set()

  def request(self):
    """Acts as if SIGTERM had been received (the signal handler calls it)."""
    if not self._event.is_set():
      logging.warning("SIGTERM received: saving a checkpoint at the next step "
                      "boundary, then exiting (status %d).", EXIT_CODE)
    self._event.set()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM,
                                     lambda signum, frame: self.request())
      self._installed = True
    else:
      logging.warning("Not in the main thread: SIGTERM cannot be caught, so a "
                      "preemption loses the steps since the last checkpoint.")
    if _is_multi_worker(self._strategy):
      config = tf.distribute.experimental.TerminationConfig(
          termination_watcher_fn=self._event.is_set,
          exit_fn=self._raise_preempted, grace_period=0,
          save_fn=lambda *args, **kwargs: self._save())
      self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
          self._strategy.cluster_resolver, self._checkpoint_manager_fn(),
          termination_config=config)
    return self

  def __exit__(self, *exc_info):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
    if self._handler is not None:
      # Stops its watcher threads now (its __del__ does the same, but when
      # is up to the garbage collector).
      # pylint: disable=protected-access
      self._handler._stop_poll_termination_signal_thread()
      self._handler._stop_cluster_wise_termination_watcher_thread()
      # pylint: enable=protected-access
      self._handler = None
    return False

  def run(self, function, *args):
    """Runs a host loop (through PreemptionCheckpointHandler: multi-worker).

    Raises:
      diagnostics.PreemptedError: multi-worker only, when the handler saved
        the agreed checkpoint (before running `function`).
    """
    if self._handler is not None:
      return self._handler.run(function, *args)
    return function(*args)

  def stop_if_requested(self, saved):
    """After a host loop: saves (unless `saved`) and raises if preempted.

    Args:
      saved: whether the loop's boundary already wrote a checkpoint.

    Raises:
      diagnostics.PreemptedError: SIGTERM was received (single worker; under
        a multi-worker strategy PreemptionCheckpointHandler decides when).
    """
    if self._handler is not None or not self.requested:
      return
    if not saved:
      self._save()
    self._raise_preempted()

  def _raise_preempted(self):
    raise diagnostics.PreemptedError(
        diagnostics.preempted_message(self._step(), self._latest(),
                                      EXIT_CODE))
