"""Name -> builder registries filled by decorators next to each builder.

modeling/backbones/registry.py, modeling/decoders/registry.py and
modeling/heads/registry.py hold one dict each and write their contract at the
top; this module is the decorator they share. Registration is plain Python (a
name and a function or class): gin bindings are made from the registered
builders in official/core/registry.py, outside the networks.
"""

import inspect


def check_explicit_signature(kind, name, builder, required):
  """Raises TypeError unless `builder` names `required` and has no *args/**kwargs.

  Args:
    kind: "backbone", "decoder", "head" (for the message).
    name: the registered name.
    builder: the function (or class, whose __init__ is checked) registered.
    required: parameter names the registry's contract requires.
  """
  parameters = inspect.signature(builder).parameters
  variadic = [p.name for p in parameters.values()
              if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
  where = f"{builder.__module__}.{builder.__qualname__}"
  if variadic:
    raise TypeError(
        f"{kind} builder {name!r} ({where}) takes variadic arguments "
        f"{variadic}; list its arguments explicitly so that a misspelt "
        f"argument is rejected rather than ignored.")
  missing = [arg for arg in required if arg not in parameters]
  if missing:
    raise TypeError(
        f"{kind} builder {name!r} ({where}) lacks the arguments {missing} "
        f"that every {kind} builder takes (expected all of {list(required)}).")


def register(registry, kind, name, required=(), explicit=True):
  """A decorator that adds a builder to `registry` under `name`, unchanged.

  Args:
    registry: the dict name -> builder.
    kind: "backbone", "decoder", "head" (for messages).
    name: the name configurations use.
    required: parameter names the builder must take.
    explicit: also reject *args/**kwargs (Keras layer classes forward
      **kwargs to keras.layers.Layer, so heads pass False).
  Raises:
    ValueError: `name` is already registered (when the decorator is applied).
    TypeError: see check_explicit_signature.
  """

  def decorator(builder):
    if name in registry:
      previous = registry[name]
      raise ValueError(
          f"{kind} name {name!r} is registered twice: "
          f"{previous.__module__}.{previous.__qualname__} and "
          f"{builder.__module__}.{builder.__qualname__}.")
    if explicit:
      check_explicit_signature(kind, name, builder, required)
    else:
      parameters = inspect.signature(builder).parameters
      missing = [arg for arg in required if arg not in parameters]
      if missing:
        raise TypeError(f"{kind} {name!r} ({builder.__qualname__}) lacks the "
                        f"arguments {missing}.")
    registry[name] = builder
    return builder

  return decorator
