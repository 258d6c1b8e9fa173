"""Gin errors name what was wrong and where; configs are written atomically."""

import gin
import pytest
import tensorflow as tf

from official.core import gin_config
from official.core import trainer  # noqa: F401  (registers Trainer)
from tests.official import toy_task  # noqa: F401  (registers ToyTask)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_parses_files_then_params(tmp_path):
  f = _write(tmp_path / "a.gin", "Trainer.train_epochs = 3\n")
  gin_config.parse_gin([f], ["Trainer.train_batch_size = 16"])
  assert gin.query_parameter("Trainer.train_epochs") == 3
  assert gin.query_parameter("Trainer.train_batch_size") == 16


def test_missing_file_names_the_path(tmp_path):
  missing = str(tmp_path / "nope.gin")
  with pytest.raises(FileNotFoundError, match="nope.gin"):
    gin_config.parse_gin([missing], [])


def test_unknown_configurable_names_binding_and_file(tmp_path):
  f = _write(tmp_path / "typo.gin",
             "Trainer.train_epochs = 3\nTrainr.train_batch_size = 8\n")
  with pytest.raises(gin_config.GinConfigError) as e:
    gin_config.parse_gin([f], [])
  message = str(e.value)
  assert "'Trainr'" in message and "typo.gin, line 2" in message


def test_unknown_parameter_names_binding_and_file(tmp_path):
  f = _write(tmp_path / "param.gin", "Trainer.train_epoch = 3\n")
  with pytest.raises(gin_config.GinConfigError) as e:
    gin_config.parse_gin([f], [])
  assert "'Trainer' has no parameter 'train_epoch'" in str(e.value)
  assert "param.gin, line 1" in str(e.value)


def test_unknown_gin_param_names_the_flag():
  with pytest.raises(gin_config.GinConfigError) as e:
    gin_config.parse_gin([], ["ToyTask.num_clases = 4"])
  assert "'ToyTask' has no parameter 'num_clases'" in str(e.value)
  assert "--gin_param='ToyTask.num_clases = 4'" in str(e.value)


def test_syntax_error_names_the_file(tmp_path):
  f = _write(tmp_path / "broken.gin", "Trainer.train_epochs = (3,\n")
  with pytest.raises(gin_config.GinConfigError, match="broken.gin"):
    gin_config.parse_gin([f], [])


def test_write_config_is_atomic_and_leaves_no_temporary(tmp_path):
  model_dir = str(tmp_path / "run")
  path = gin_config.write_config(model_dir, "config.gin", "A.b = 1\n")
  assert tf.io.gfile.GFile(path).read() == "A.b = 1\n"
  gin_config.write_config(model_dir, "config.gin", "A.b = 2\n")
  assert tf.io.gfile.GFile(path).read() == "A.b = 2\n"
  assert tf.io.gfile.listdir(model_dir) == ["config.gin"]
