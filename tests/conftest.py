"""Session-wide test set-up: two logical CPU devices.

Multi-device code is tested on 2 logical CPUs (docs/design.md, Tests). Logical
devices can only be configured before TensorFlow initialises its runtime, and
pytest imports every test module into one process, so it is done here, once,
before any test module is collected. Single-device tests use /cpu:0.
"""

import tensorflow as tf

_CPUS = tf.config.list_physical_devices("CPU")
try:
  tf.config.set_logical_device_configuration(
      _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # The runtime was initialised first (e.g. by a plugin).
  pass


import gin  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def no_gin_bindings():
  """Clears gin bindings parsed by earlier tests in this process.

  Tests of gin-configurable functions called with some arguments left at
  their defaults use it: otherwise an experiment parsed by another test
  (which one depends on the xdist schedule) fills those arguments.
  """
  gin.clear_config()
  yield


@pytest.fixture(scope="session")
def mirrored_strategy():
  """The one MirroredStrategy over the 2 logical CPUs shared by all tests.

  Two strategies alive in one process hand out the same collective instance
  keys, and their all-reduces then collide ("Shape mismatch in the collective
  instance"): in-process tests must share this one.
  """
  if len(tf.config.list_logical_devices("CPU")) < 2:
    pytest.skip("needs the 2 logical CPUs configured above")
  from official.core import distribute  # pylint: disable=g-import-not-at-top
  return distribute.get_strategy("mirrored")
