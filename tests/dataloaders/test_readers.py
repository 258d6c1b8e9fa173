"""Tests of dataloaders.readers (TFRecord and TFDS sources)."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from dataloaders import readers
from tests.dataloaders import helpers


def test_list_files_no_match_names_pattern(tmp_path):
  pattern = str(tmp_path / "missing-*.tfrecord")
  with pytest.raises(FileNotFoundError, match="missing-"):
    readers.list_files(pattern)
  with pytest.raises(FileNotFoundError) as info:
    readers.tfrecord_dataset(pattern, training=False)
  assert pattern in str(info.value)


def test_list_files_comma_separated_sorted_unique(tmp_path):
  for name in ["b-1", "a-1", "a-2"]:
    (tmp_path / name).write_bytes(b"")
  pattern = f"{tmp_path}/b-*, {tmp_path}/a-*,{tmp_path}/a-1"
  assert readers.list_files(pattern) == [
      str(tmp_path / n) for n in ["a-1", "a-2", "b-1"]]
  # A part that matches nothing is an error naming that part.
  with pytest.raises(FileNotFoundError, match="typo-"):
    readers.list_files(f"{tmp_path}/a-*,{tmp_path}/typo-*")


def test_eval_reads_everything_once(tmp_path):
  pattern = helpers.write_records(str(tmp_path), num_files=3, num_examples=11)
  dataset = readers.tfrecord_dataset(pattern, training=False)
  indices = helpers.record_indices(dataset)
  assert sorted(indices) == list(range(11))
  # Deterministic order.
  assert helpers.record_indices(dataset) == indices


@pytest.mark.parametrize("num_files", [1, 3])
def test_sharding_disjoint_and_complete(tmp_path, num_files):
  # 3 files >= 2 pipelines: files are sharded; 1 file: records are sharded.
  pattern = helpers.write_records(str(tmp_path), num_files=num_files,
                                  num_examples=13)
  shards = []
  for k in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=k)
    shards.append(set(helpers.record_indices(readers.tfrecord_dataset(
        pattern, training=False, input_context=context))))
  assert shards[0] and shards[1]
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(13))


@pytest.mark.parametrize("num_files", [1, 3])
def test_training_shuffles_and_repeats(tmp_path, num_files):
  pattern = helpers.write_records(str(tmp_path), num_files=num_files,
                                  num_examples=10)
  dataset = readers.tfrecord_dataset(pattern, training=True, seed=1,
                                     shuffle_buffer_size=100)
  indices = helpers.record_indices(dataset.take(100))
  assert len(indices) == 100
  assert set(indices) == set(range(10))
  assert indices[:10] != sorted(indices[:10])
  # Seeded: the same order again.
  again = readers.tfrecord_dataset(pattern, training=True, seed=1,
                                   shuffle_buffer_size=100)
  assert helpers.record_indices(again.take(100)) == indices


def test_tfds_missing_package_says_pip_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    readers.tfds_dataset("digits_test", "train", "/nonexistent",
                         training=False)


def _tiny_tfds_dataset(data_dir):
  """Prepares a 12-image, 3-class TFDS dataset offline; returns its name."""
  tfds = pytest.importorskip("tensorflow_datasets")
  # tfds' download_and_prepare (not reading) imports it, yet tfds 4.9.10 on
  # Python >= 3.11 does not declare it.
  pytest.importorskip("importlib_resources",
                      reason="preparing a TFDS dataset needs "
                      "importlib_resources")

  class TinyGrayImages(tfds.core.GeneratorBasedBuilder):
    """12 grayscale 6x5 images, labels 0..2."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(6, 5, 1)),
              "label": tfds.features.ClassLabel(num_classes=3),
          }))

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {"train": self._generate_examples(12)}

    def _generate_examples(self, num):
      for i in range(num):
        image = np.full((6, 5, 1), i * 10, np.uint8)
        yield i, {"image": image, "label": i % 3}

  builder = TinyGrayImages(data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          try_download_gcs=False))
  return builder.name


def test_tfds_dataset_from_local_data_dir(tmp_path):
  data_dir = str(tmp_path / "tfds")
  name = _tiny_tfds_dataset(data_dir)
  dataset = readers.tfds_dataset(name, "train", data_dir, training=False)
  assert dataset.element_spec["image"].shape.as_list() == [6, 5, 3]
  assert dataset.element_spec["image"].dtype == tf.uint8
  assert dataset.element_spec["label"].dtype == tf.int32
  examples = list(dataset.as_numpy_iterator())
  assert len(examples) == 12
  for example in examples:
    value = int(example["image"][0, 0, 0])
    assert (example["image"] == value).all()  # Gray copied to 3 channels.
    assert example["label"] == (value // 10) % 3

  # One file, two pipelines: records are sharded, disjoint and complete.
  values = []
  for k in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=k)
    shard = readers.tfds_dataset(name, "train", data_dir, training=False,
                                 input_context=context)
    values.append({int(e["image"][0, 0, 0]) for e in shard.as_numpy_iterator()})
  assert not values[0] & values[1]
  assert values[0] | values[1] == {10 * i for i in range(12)}

  train = readers.tfds_dataset(name, "train", data_dir, training=True, seed=3)
  assert len(list(train.take(30).as_numpy_iterator())) == 30  # Repeats.

  with pytest.raises(FileNotFoundError, match="not"):
    readers.tfds_dataset(name, "train", str(tmp_path / "empty"),
                         training=False)
  with pytest.raises(ValueError, match="no split 'test'"):
    readers.tfds_dataset(name, "test", data_dir, training=False)
  assert os.path.isdir(data_dir)
