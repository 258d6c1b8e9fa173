"""Detects another top-level package named `official` beside ours (TensorFlow Model Garden's).

tf-models-official installs a top-level package `official`, as this project
does (docs/design.md, Stack). In one environment one of them shadows the
other without a word: whichever comes first on sys.path is imported, and
the other's modules then fail to import deep inside, or the wrong code runs.

- `official/__init__.py` calls `note_foreign_packages()` at import: when
  another `official` package is on sys.path, or Model Garden's files were
  installed into our own package directory, a message naming both
  locations and what to do is printed to stderr when the process exits, so
  that it ends the output of every entry point (help text included).
- The entry points call `ensure_ours()` first: when the `official` package
  imported is not ours (another one came first on sys.path, or a merged
  install ran its `__init__.py`), they exit with that message instead of an
  ImportError from deep inside a module.

Only os.path checks of the sys.path entries and one directory listing:
cheap enough for every import.
"""

import atexit
import os
import sys

# The marker `official/__init__.py` sets; another package of that name has
# no such attribute.
MARKER = "SPINENET_KERAS"
# What our `official` directory holds; anything else in it was installed by
# another distribution into the same directory.
OWN_SUBPACKAGES = frozenset(("core", "evaluation", "search", "tasks",
                             "__pycache__"))

_OURS = os.path.dirname(os.path.abspath(__file__))
_noted = []


def _real(path):
  return os.path.normcase(os.path.realpath(path))


def foreign_locations(ours=_OURS, path=None):
  """Directories of other `official` packages, and foreign parts of ours.

  Args:
    ours: our `official` package directory.
    path: the module search path (default sys.path).
  Returns:
    A list of directories: every `official` package on `path` that is not
    `ours`, then the subdirectories of `ours` that this project does not
    ship (another distribution installed into the same directory).
  """
  found = []
  for entry in sys.path if path is None else path:
    candidate = os.path.join(os.path.abspath(entry or os.curdir), "official")
    if (os.path.isfile(os.path.join(candidate, "__init__.py")) and
        _real(candidate) != _real(ours) and
        _real(candidate) not in map(_real, found)):
      found.append(candidate)
  try:
    names = os.listdir(ours)
  except OSError:
    names = []
  found += sorted(os.path.join(ours, name) for name in names
                  if name not in OWN_SUBPACKAGES and
                  os.path.isdir(os.path.join(ours, name)))
  return found


def message(ours, others, in_use):
  """What happened and what to do, naming both install locations."""
  listed = ", ".join(others)
  return (
      f"official: two packages named 'official' are installed in this "
      f"environment: this project's (spinenet-keras) at {ours}, and another "
      f"(TensorFlow Model Garden's tf-models-official, most likely) at "
      f"{listed}. Python imports whichever comes first on sys.path; "
      f"{in_use} is the one in use here, and the other's modules cannot be "
      f"imported. Install them into separate virtual environments (python3 "
      f"-m venv), or remove the other one (pip uninstall tf-models-official); "
      f"see README.md, Set-up.")


def _print_at_exit(text):
  # Whatever was printed before (help text) goes out first, so this ends it.
  sys.stdout.flush()
  print(text, file=sys.stderr, flush=True)


def note_foreign_packages():
  """Prints message() when the process exits if another `official` exists."""
  if _noted:
    return
  _noted.append(True)
  others = foreign_locations()
  if others:
    atexit.register(_print_at_exit, message(_OURS, others, "this project's"))


def ensure_ours():
  """Exits with message() when the imported `official` is not this project's.

  Called at the top of the entry points, before they import anything else
  of ours.
  """
  # The entry point reached this module as official.package_check, so the
  # package `official` it belongs to is imported (no import here: that
  # would be a cycle with official/__init__.py).
  package = sys.modules.get("official")
  if getattr(package, MARKER, False):
    return
  where = os.path.dirname(os.path.abspath(
      getattr(package, "__file__", None) or _OURS))
  others = [where] if _real(where) != _real(_OURS) else (
      foreign_locations() or [where])
  sys.exit(message(_OURS, others, f"the package at {where}"))
