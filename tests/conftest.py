"""Session-wide test set-up: two logical CPU devices.

Multi-device code is tested on 2 logical CPUs (DESIGN.md, Tests). Logical
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
