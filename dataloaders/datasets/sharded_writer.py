"""Writes sharded TFRecords, in this process or in spawned worker processes.

A converter plans its shards with `shard_paths` and `split`, and passes a
module-level (picklable) function that writes one shard, usually through
`write_records`, to `write_shards`. Each shard is written under a temporary
name and renamed when complete; when anything fails, every shard of the run
is removed, complete or not, so that a glob never picks up a partial set.
"""

import multiprocessing
import os
import uuid

import tensorflow as tf

# Set in each worker process by `_init_worker`: shared count of records done.
_progress_counter = None


def shard_paths(output_prefix, num_shards):
  """[(final path, temporary path)] of `<prefix>-SSSSS-of-NNNNN.tfrecord`."""
  width = max(5, len(str(num_shards)))
  # Temporary names share a token, so that the shards of workers stopped by
  # a failure elsewhere can be found and removed.
  token = uuid.uuid4().hex
  paths = []
  for shard in range(num_shards):
    path = (f"{output_prefix}-{shard:0{width}d}-of-"
            f"{num_shards:0{width}d}.tfrecord")
    paths.append((path, f"{path}.tmp-{token}"))
  return paths


def split(items, num_shards):
  """`items` cut into `num_shards` consecutive slices of near-equal size."""
  return [items[shard * len(items) // num_shards:
                (shard + 1) * len(items) // num_shards]
          for shard in range(num_shards)]


def _init_worker(counter):
  """Pool initializer: keeps the shared progress counter (a ctypes Value)."""
  global _progress_counter  # pylint: disable=global-statement
  _progress_counter = counter


def report_done(count=1):
  """Adds `count` records done to the progress (no-op outside a worker)."""
  if _progress_counter is not None:
    with _progress_counter.get_lock():
      _progress_counter.value += count


def write_records(path, tmp_path, records):
  """Writes serialized records to `tmp_path`, then renames it to `path`.

  Args:
    path: str, final shard path.
    tmp_path: str, temporary path; removed if writing fails.
    records: iterable of bytes (may raise; the error is passed on).

  Returns:
    (path, number of records written).
  """
  count = 0
  try:
    with tf.io.TFRecordWriter(tmp_path) as writer:
      for record in records:
        writer.write(record)
        count += 1
        report_done()
    tf.io.gfile.rename(tmp_path, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp_path):
      tf.io.gfile.remove(tmp_path)
    raise
  return path, count


def write_shards(write_shard_fn, tasks, paths, total, num_processes=None,
                 desc=None, show_progress=True):
  """Runs `write_shard_fn` on every task, removing all shards on failure.

  Args:
    write_shard_fn: module-level function task -> (path, records written,
      anything else the converter counts), reporting progress through
      `report_done` (or `write_records`).
    tasks: list, one picklable task per shard.
    paths: list of (final path, temporary path), one per shard.
    total: int, records of all shards, for the progress bar.
    num_processes: int, worker processes (each writes whole shards); None:
      min(shards, cpu count); 1 or 0: in this process.
    desc: str, progress bar label.
    show_progress: bool, show a tqdm progress bar.

  Returns:
    list of what write_shard_fn returned, in task order.
  """
  parents = {os.path.dirname(path) for path, _ in paths}
  for parent in sorted(p for p in parents if p):
    tf.io.gfile.makedirs(parent)
  if num_processes is None:
    num_processes = min(len(tasks), os.cpu_count() or 1)
  num_processes = max(1, min(int(num_processes), len(tasks)))
  progress = None
  if show_progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    progress = tqdm(total=total, unit="img", desc=desc)
  written = []
  try:
    if num_processes == 1:
      for task in tasks:
        written.append(write_shard_fn(task))
        if progress is not None:
          progress.update(written[-1][1])
    else:
      # spawn, not fork: the parent may have TF threads running, and a fork
      # of a threaded process can deadlock.
      context = multiprocessing.get_context("spawn")
      counter = context.Value("q", 0)
      with context.Pool(num_processes, initializer=_init_worker,
                        initargs=(counter,)) as pool:
        result = pool.map_async(write_shard_fn, tasks, chunksize=1)
        while not result.ready():
          result.wait(0.5)
          if progress is not None:
            progress.update(counter.value - progress.n)
        written = result.get()  # Re-raises a worker's error.
        if progress is not None:
          progress.update(total - progress.n)
  except BaseException:
    # The pool has been terminated (its workers joined) by now. Shards
    # already complete belong to a failed run: remove them as well.
    for path, tmp_path in paths:
      for leftover in (tmp_path, path):
        if tf.io.gfile.exists(leftover):
          tf.io.gfile.remove(leftover)
    raise
  finally:
    if progress is not None:
      progress.close()
  return written
