"""Readers: where serialized examples come from (sharded TFRecords or TFDS).

A reader yields one element per example and knows nothing about its content;
decoders and parsers come after it. Both readers follow the input rules of
`official.core.task`: one reader per input pipeline, sharded by the
`tf.distribute.InputContext`; in training they shuffle and repeat forever, in
evaluation they make one pass in a deterministic order.

Sharding: when there are at least as many files as input pipelines, each
pipeline reads its own subset of the files (cheap, nothing read twice).
Otherwise every pipeline reads all files and keeps every n-th record; then the
files are read in a fixed order (no file shuffle, deterministic interleave) so
that the pipelines' records are disjoint and together are the whole set.
"""

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# Read-ahead per TFRecord file; large sequential reads matter on GCS.
_READ_BUFFER_BYTES = 8 * 1024 * 1024


def list_files(file_pattern):
  """Expands a comma-separated list of glob patterns into sorted file paths.

  Args:
    file_pattern: str, one or more glob patterns separated by commas, e.g.
      "gs://bucket/train-*.tfrecord" or "/data/a-*,/data/b-*". Any filesystem
      that tf.io.gfile knows is accepted.

  Returns:
    A sorted list of unique file paths (str).

  Raises:
    FileNotFoundError: when the pattern, or one of its comma-separated parts,
      matches no file; the message names the pattern.
  """
  patterns = [p.strip() for p in str(file_pattern).split(",") if p.strip()]
  if not patterns:
    raise FileNotFoundError(
        f"No files match the TFRecord pattern '{file_pattern}': it is empty; "
        "expected one or more comma-separated glob patterns.")
  files = set()
  for pattern in patterns:
    try:
      matches = tf.io.gfile.glob(pattern)
    except tf.errors.NotFoundError:
      matches = []
    if not matches:
      where = "" if pattern == file_pattern else (
          f" (part of '{file_pattern}')")
      raise FileNotFoundError(
          f"No files match the TFRecord pattern '{pattern}'{where}; expected "
          "at least one existing file (check the path, or create the records "
          "first with the dataset's converter in scripts/).")
    files.update(matches)
  return sorted(files)


def _pipelines(input_context):
  """Returns (num_input_pipelines, input_pipeline_id) of an InputContext."""
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def tfrecord_dataset(file_pattern, training, input_context=None, seed=None,
                     shuffle_buffer_size=10000, cycle_length=None,
                     deterministic=None):
  """Serialized records of sharded TFRecord files, for one input pipeline.

  Args:
    file_pattern: str, comma-separated glob patterns (see `list_files`).
    training: bool. True: shuffle files and records, repeat forever.
      False: one pass in a deterministic order.
    input_context: optional tf.distribute.InputContext; this pipeline reads
      shard `input_pipeline_id` of `num_input_pipelines`.
    seed: optional int, seed of the file and record shuffles.
    shuffle_buffer_size: int, records in the shuffle buffer (training only).
    cycle_length: optional int, files read in parallel; default AUTOTUNE.
    deterministic: optional bool, whether the interleave keeps a fixed order.
      Default: True in evaluation or when `seed` is given, else False (faster).
      Forced True when records (not files) are sharded across pipelines.

  Returns:
    A tf.data.Dataset of scalar tf.string (serialized tf.Example) tensors.

  Raises:
    FileNotFoundError: when `file_pattern` matches nothing.
  """
  files = list_files(file_pattern)
  num_pipelines, pipeline_id = _pipelines(input_context)
  shard_records = num_pipelines > 1 and len(files) < num_pipelines
  if deterministic is None:
    deterministic = (not training) or seed is not None
  if shard_records:
    deterministic = True

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if num_pipelines > 1 and not shard_records:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  if training and not shard_records:
    # Record sharding needs every pipeline to read the files in the same
    # order, which an unseeded shuffle cannot promise: shuffle files only here.
    dataset = dataset.shuffle(len(files), seed=seed,
                              reshuffle_each_iteration=True).repeat()
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(
          path, buffer_size=_READ_BUFFER_BYTES),
      cycle_length=cycle_length or AUTOTUNE, block_length=1,
      num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if shard_records:
    dataset = dataset.shard(num_pipelines, pipeline_id)
    if training:
      dataset = dataset.repeat()
  if training:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed,
                              reshuffle_each_iteration=True)
  return dataset


def tfds_dataset(name, split, data_dir, training, input_context=None,
                 seed=None, shuffle_buffer_size=10000):
  """Examples of an image classification dataset prepared by TFDS in data_dir.

  Nothing is downloaded: the dataset must already be prepared in `data_dir`
  (e.g. with `tfds build NAME --data_dir=DIR` on a machine with network
  access, then copied). The features must include "image" (uint8, 1 or 3
  channels) and "label" (ClassLabel or integer).

  Args:
    name: str, TFDS name, optionally with config and version
      ("imagenet2012", "oxford_flowers102:2.1.1").
    split: str, TFDS split, slices allowed ("train", "train[:90%]").
    data_dir: str, folder holding the prepared dataset (gs:// allowed).
    training: bool. True: shuffle files and records, repeat forever.
      False: one pass in a deterministic order.
    input_context: optional tf.distribute.InputContext for sharding; files
      are sharded when the split has at least as many files as pipelines,
      records otherwise.
    seed: optional int, seed of the file and record shuffles.
    shuffle_buffer_size: int, records in the shuffle buffer (training only).

  Returns:
    A tf.data.Dataset of dicts {"image": uint8 [height, width, 3],
    "label": int32 scalar}, i.e. already decoded (skip the decoder).

  Raises:
    ImportError: when tensorflow-datasets is not installed.
    FileNotFoundError: when the dataset is not prepared in `data_dir`.
    ValueError: when the split or the features are not as expected.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"Reading the TFDS dataset '{name}' needs tensorflow-datasets, which "
        "is not installed: pip install tensorflow-datasets") from e

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends.
    raise FileNotFoundError(
        f"TFDS dataset '{name}' was not found in data_dir '{data_dir}': {e}. "
        "Expected a dataset already prepared there (nothing is downloaded at "
        "run time).") from e
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset '{name}' is not prepared in data_dir '{data_dir}' "
        f"(nothing at '{builder.data_dir}'). Prepare it beforehand, e.g. "
        f"`tfds build {name} --data_dir={data_dir}`; nothing is downloaded "
        "at run time.")
  features = builder.info.features
  for key in ("image", "label"):
    if key not in features:
      raise ValueError(
          f"TFDS dataset '{name}' has no '{key}' feature; expected an image "
          f"classification dataset with 'image' and 'label', found "
          f"{sorted(features.keys())}.")
  image_dtype = tf.as_dtype(features["image"].dtype)
  channels = features["image"].shape[-1]
  if image_dtype != tf.uint8:
    raise ValueError(
        f"TFDS dataset '{name}': 'image' is {image_dtype.name}; expected "
        "uint8.")
  if channels not in (1, 3):
    raise ValueError(
        f"TFDS dataset '{name}': 'image' has {channels} channels "
        f"(shape {features['image'].shape}); expected 1 or 3.")
  try:
    split_info = builder.info.splits[split]
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"TFDS dataset '{name}' has no split '{split}': {e}. Known splits: "
        f"{sorted(builder.info.splits.keys())}.") from e

  num_pipelines, pipeline_id = _pipelines(input_context)
  shard_records = num_pipelines > 1 and split_info.num_shards < num_pipelines
  read_config = tfds.ReadConfig(
      input_context=None if shard_records else input_context,
      shuffle_seed=seed,
      # Our pipeline prefetches once at the end.
      skip_prefetch=True,
      # A cached, never reshuffled training set would repeat one order.
      try_autocache=not training)
  dataset = builder.as_dataset(
      split=split, shuffle_files=training and not shard_records,
      read_config=read_config)
  if shard_records:
    dataset = dataset.shard(num_pipelines, pipeline_id)

  def to_example(example):
    image = example["image"]
    if channels == 1:
      image = tf.image.grayscale_to_rgb(image)
    return {"image": image,
            "label": tf.cast(example["label"], tf.int32)}

  dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE)
  if training:
    dataset = dataset.repeat().shuffle(shuffle_buffer_size, seed=seed,
                                       reshuffle_each_iteration=True)
  return dataset


def locate_corrupt_record(file_pattern):
  """Finds the first record that fails its TFRecord checksum.

  Reads every file matching `file_pattern` in order (slow on big datasets: call
  it only after a tf.errors.DataLossError).

  Returns:
    (path, record_index) of the first corrupted record, or None.
  """
  for path in list_files(file_pattern):
    index = 0
    try:
      for _ in tf.data.TFRecordDataset(path):
        index += 1
    except tf.errors.DataLossError:
      return path, index
  return None
