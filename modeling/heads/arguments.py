"""Argument checks shared by the heads (errors name the head and argument)."""


def check_integers(head_name, checks):
  """Raises ValueError unless each value is an integer >= its lower bound.

  Args:
    head_name: the head's class name, for the message.
    checks: iterable of (argument name, value, lower bound).
  """
  for name, value, low in checks:
    if int(value) != value or value < low:
      raise ValueError(f"{head_name}: {name} must be an integer >= {low}, "
                       f"got {value!r}.")
