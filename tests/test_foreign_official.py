"""Another top-level `official` package (Model Garden's) beside ours is named, whichever wins.

A fake foreign `official` package (an `__init__.py` without our marker and
a `vision/` subpackage, as tf-models-official has) is put on the path;
`python -m official.train --helpfull` must end with the message of
official/package_check.py naming both install locations, not an ImportError.
"""

import os
import subprocess
import sys

import pytest

from official import package_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, "official")


def write_foreign(root):
  """A fake Model Garden `official` package under root; returns its path."""
  package = os.path.join(root, "official")
  os.makedirs(os.path.join(package, "vision"))
  for init in (package, os.path.join(package, "vision")):
    with open(os.path.join(init, "__init__.py"), "w") as f:
      f.write("# Not spinenet-keras.\n")
  return package


def run_train(cwd, pythonpath):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
             PYTHONPATH=os.pathsep.join(pythonpath))
  return subprocess.run([sys.executable, "-m", "official.train",
                         "--helpfull"], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_foreign_locations_lists_other_packages_and_foreign_subdirs(tmp_path):
  foreign = write_foreign(str(tmp_path / "site"))
  assert package_check.foreign_locations(
      OURS, [REPO, str(tmp_path / "site"), REPO]) == [foreign]
  assert package_check.foreign_locations(OURS, [REPO]) == []
  # Model Garden installed into our directory: its subpackage is named.
  assert package_check.foreign_locations(foreign, []) == [
      os.path.join(foreign, "vision")]


def test_ours_winning_ends_with_both_locations(tmp_path):
  foreign = write_foreign(str(tmp_path / "site"))
  # From the repository root ours comes first (the working directory leads
  # sys.path under -m); the foreign one is on PYTHONPATH after it.
  result = run_train(REPO, [str(tmp_path / "site")])
  assert "--gin_file" in result.stdout  # The help was printed...
  last = result.stderr.strip().splitlines()[-1]  # ...and the message ends it.
  assert last.startswith("official: two packages named 'official'"), last
  assert f"this project's (spinenet-keras) at {OURS}" in last
  assert f"at {foreign}" in last and "this project's is the one in use" in last
  assert "separate virtual environments" in last


def test_foreign_winning_exits_with_both_locations(tmp_path):
  # Model Garden and ours installed into one site-packages directory: its
  # __init__.py won, our modules sit beside its subpackages.
  site = tmp_path / "site"
  merged = write_foreign(str(site))
  for name in os.listdir(OURS):
    if name not in ("__init__.py", "__pycache__"):
      os.symlink(os.path.join(OURS, name), os.path.join(merged, name))
  result = run_train(str(tmp_path), [str(site), REPO])
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("official: two packages named 'official'"), last
  assert f"the package at {merged} is the one in use" in last
  assert os.path.join(merged, "vision") in last
  assert "Traceback" not in result.stderr and "ImportError" not in (
      result.stderr)


def _installed_official(cwd):
  """Where `official` is found from cwd with nothing on PYTHONPATH."""
  env = dict(os.environ, PYTHONPATH="")
  return subprocess.run(
      [sys.executable, "-c", "import importlib.util, os; s = importlib.util."
       "find_spec('official'); print(os.path.dirname(s.origin) if s and "
       "s.origin else '')"], cwd=cwd, env=env, capture_output=True,
      text=True, timeout=120).stdout.strip()


def test_foreign_first_on_path_with_ours_installed_editable(tmp_path):
  # The README's set-up (pip install -e .) beside tf-models-official in
  # another directory that comes first on sys.path (here PYTHONPATH, as a
  # site-packages directory would): Model Garden's __init__.py wins, the
  # editable install's finder still resolves official.train to ours, and it
  # exits with the message instead of `No module named official.train`.
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  if os.path.realpath(_installed_official(str(cwd)) or "/") != (
      os.path.realpath(OURS)):
    pytest.skip("this project is not installed into this environment "
                "(README set-up: pip install -e .)")
  foreign = write_foreign(str(tmp_path / "site"))
  result = run_train(str(cwd), [str(tmp_path / "site")])
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("official: two packages named 'official'"), last
  assert f"this project's (spinenet-keras) at {OURS}" in last
  assert f"the package at {foreign} is the one in use" in last
  assert "Traceback" not in result.stderr
