"""Parsing gin files with errors that say what and where; saving configs.

Config files and bindings are parsed with unknown names as errors: a typo in a
binding names the binding and the file (or the --gin_param) it came from. Files
are read through tf.io.gfile, so gs:// paths work.
"""

import json
import re
import uuid

import gin
import tensorflow as tf

gin.config.register_file_reader(tf.io.gfile.GFile, tf.io.gfile.exists)

CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"


class GinConfigError(ValueError):
  """A gin file or binding could not be parsed or names something unknown."""


def parse_gin(gin_files, gin_params, skip_unknown=False, clear=True):
  """Parses gin files in order, then bindings; raises naming what was wrong.

  Args:
    gin_files: list of paths (local or gs://).
    gin_params: list of binding strings ("Trainer.train_epochs = 2").
    skip_unknown: allow bindings of unknown configurables (off: a typo is an
      error).
    clear: first clear any bindings parsed before (in this process).

  Raises:
    FileNotFoundError: a gin file does not exist (the path is named).
    GinConfigError: an unknown configurable or parameter, or a syntax error;
      the message names the binding and the file or --gin_param.
  """
  if clear:
    gin.clear_config()
  for path in gin_files or ():
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"gin file {path!r} does not exist (from "
                              f"--gin_file).")
    try:
      gin.parse_config_file(path, skip_unknown=skip_unknown)
    except Exception as e:  # gin raises ValueError, SyntaxError, IOError...
      raise GinConfigError(_explain(e, f"gin file {path}")) from e
  for binding in gin_params or ():
    try:
      gin.parse_config(binding, skip_unknown=skip_unknown)
    except Exception as e:
      raise GinConfigError(_explain(e, f"--gin_param={binding!r}")) from e


def _explain(error, source):
  """Rewrites a gin error into one that leads with the binding and source."""
  text = str(error)
  unknown = re.search(r"No configurable matching '([^']+)'", text)
  param = re.search(r"Configurable '([^']+)' doesn't have a parameter named "
                    r"'([^']+)'", text)
  location = re.search(r'In file "([^"]+)", line (\d+)', text)
  where = (f"{location.group(1)}, line {location.group(2)}" if location
           else source)
  if unknown:
    head = (f"Unknown gin configurable {unknown.group(1)!r} in {where}. "
            f"Expected a name registered with gin: check the spelling, and "
            f"that its module is imported (official.registry, or an `import` "
            f"line in the gin file).")
  elif param:
    head = (f"Gin configurable {param.group(1)!r} has no parameter "
            f"{param.group(2)!r} (binding in {where}).")
  else:
    head = f"Could not parse {source}: {type(error).__name__}: {text}"
    return head
  return f"{head}\n{text}"


def atomic_write(path, text):
  """Writes `text` to `path` so that readers see the old or the new file.

  Writes a temporary file next to `path`, then renames it over `path`.

  Args:
    path: destination (local or gs://).
    text: the file's contents.

  Returns:
    `path`.
  """
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def write_config(model_dir, name, text):
  """Writes a config text to model_dir/name atomically; returns the path."""
  tf.io.gfile.makedirs(model_dir)
  return atomic_write(tf.io.gfile.join(model_dir, name), text)


def write_json(path, data):
  """Writes `data` as indented JSON to `path` atomically; returns the path."""
  return atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
