r"""Draws the configured scale-permuted backbone (SpineNet paper, Figure 3).

  python -m official.draw_architecture \
    --gin_file=configs/experiments/retinanet/spinenet49_coco.gin \
    --output=spinenet49.svg
  python -m official.draw_architecture \
    --gin_file=configs/backbones/eff_spinenet_d1.gin --output=d1.png

--gin_file is an experiment (it binds `experiment.task`; the task's backbone
is drawn) or a backbone file from configs/backbones/ (it binds the BACKBONE
macro). The format comes from the --output extension (.svg or .png). Only the
backbone is built, at 128 px (the smallest input every level range accepts);
no weights or data are read. Prints the path written.
"""

import os
import sys

import gin
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from modeling import architecture_drawing
from modeling import architecture_graph
from official import registry
from official.core import gin_config

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, parsed after files.")
flags.DEFINE_string("output", None, "Where to write the drawing: a .svg or "
                    ".png path (local or gs://).")
flags.DEFINE_string("title", None, "Heading (default: model name and block "
                    "types).")
flags.DEFINE_integer("png_scale", 2, "PNG pixels per SVG unit.")

# The block graph does not depend on the input size, so the backbone is built
# at the smallest size divisible by 2^max_level for any max_level <= 7.
BUILD_SIZE = 2 ** 7


def configured_backbone_fn(gin_files):
  """The gin-bound backbone builder: the task's, else the BACKBONE macro's.

  Call after the gin files are parsed. `gin_files` only goes into messages.

  Raises:
    ValueError: the files bind neither an experiment task with a backbone nor
      the BACKBONE macro.
  """
  try:
    gin.query_parameter("experiment.task")
    has_task = True
  except ValueError:
    has_task = False
  if has_task:
    task = registry.experiment()
    backbone_fn = getattr(task, "backbone_fn", None)
    if backbone_fn is None:
      raise ValueError(
          f"The task {type(task).__name__} of {', '.join(gin_files)} has no "
          "backbone_fn; the drawing needs a task built on a gin-bound "
          "backbone (the detection, classification and segmentation tasks).")
    return backbone_fn
  try:
    reference = gin.query_parameter("%BACKBONE")
  except ValueError:
    reference = None
  if not isinstance(reference, gin.config.ConfigurableReference):
    raise ValueError(
        f"{', '.join(gin_files)}: binds neither `experiment.task` (an "
        "experiment file, configs/experiments/...) nor the BACKBONE macro (a "
        "backbone file, configs/backbones/...); pass one of those as "
        "--gin_file.")
  if reference.evaluate:
    raise ValueError(
        f"BACKBONE is bound to {reference!r}(), a call; bind the builder "
        f"itself (BACKBONE = {reference!r}) as configs/backbones/*.gin do.")
  return reference.scoped_configurable_fn


def draw_architecture(gin_files, gin_params, output, title=None, png_scale=2):
  """Parses the config, builds its backbone and writes the drawing.

  Args:
    gin_files: experiment or backbone gin files, parsed in order.
    gin_params: gin bindings parsed after them.
    output: .svg or .png path (tf.io.gfile, so gs:// works).
    title: heading, or None for "<model> (<block types> blocks)".
    png_scale: PNG pixels per SVG unit.

  Returns:
    The ArchitectureGraph that was drawn.

  Raises:
    ValueError: an output extension other than .svg/.png, a config without a
      backbone, or a backbone that is not scale-permuted (e.g. ResNet).
    FileNotFoundError, gin_config.GinConfigError: from parsing the gin files.
  """
  fmt = architecture_drawing.format_for_path(output)  # Fail before building.
  if not gin_files:
    raise ValueError("No --gin_file given: pass an experiment "
                     "(configs/experiments/...) or a backbone file "
                     "(configs/backbones/...).")
  gin_config.parse_gin(gin_files, gin_params, skip_unknown=False)
  backbone_fn = configured_backbone_fn(gin_files)
  backbone = registry.build_backbone(backbone_fn,
                                     (BUILD_SIZE, BUILD_SIZE, 3))
  try:
    graph = architecture_graph.graph_from_backbone(backbone)
  except ValueError as e:
    raise ValueError(f"{', '.join(gin_files)}: {e}") from e
  data = architecture_drawing.render(graph, fmt, scale=png_scale, title=title)
  parent = os.path.dirname(output)
  if parent and not tf.io.gfile.exists(parent):
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(output, "wb") as f:
    f.write(data)
  return graph


def main(argv):
  del argv
  if not FLAGS.output:
    raise app.UsageError("Pass --output=PATH.svg or --output=PATH.png.")
  try:
    draw_architecture(FLAGS.gin_file, FLAGS.gin_param, FLAGS.output,
                      FLAGS.title, FLAGS.png_scale)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  print(FLAGS.output)
  return 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
