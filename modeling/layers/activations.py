"""Activation functions selected by name: relu, swish, hard_swish."""

import tensorflow as tf

_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "swish": tf.nn.silu,
    "hard_swish": lambda x: x * tf.nn.relu6(x + 3.0) / 6.0,
    "linear": lambda x: x,
}


def get_activation(name):
  """Returns the activation function called `name`.

  Args:
    name: one of "relu", "swish", "hard_swish", "linear".
  Raises:
    ValueError: naming the unknown activation and the known ones.
  """
  if name not in _ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; expected one of "
                     f"{sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


def check_activation(name):
  """Raises ValueError early (at layer construction) for an unknown name."""
  get_activation(name)
  return name
