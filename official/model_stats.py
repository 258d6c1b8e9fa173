r"""Prints parameters and multiply-adds of a configured model.

  python -m official.model_stats --gin_file=configs/experiments/classification/spinenet49_imagenet.gin --json
  python -m official.model_stats --table

Multiply-adds are FLOPs as the papers count them (docs/measurements.md):
profiler float operations / 2, one image, inference mode. `params` counts the
trainable parameters (what the papers report); `all_weights` adds the batch
norm moving statistics.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import gin

from modeling import analysis
from official import registry
from official.core import expectations

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags, defined only when it runs as a command: the
  library functions below (declarations, published_sizes) are imported by
  code that defines its own --gin_file."""
  flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
  flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied last.")
  flags.DEFINE_integer("image_size", None,
                       "Override the task's square input size.")
  flags.DEFINE_bool("json", False, "Print one JSON object.")
  flags.DEFINE_bool(
      "table", False,
      "Print every registered variant beside the published numbers.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENTS_DIR = os.path.join(REPO_ROOT, "configs", "experiments")

# Row order of --table. The rows are the experiment files that declare
# `published_size.*` (official/core/expectations.py), and the figures come
# from those declarations; a declaring file missing here is printed last.
TABLE_ORDER = (
    "classification/spinenet49_imagenet.gin",
    "classification/spinenet96_imagenet.gin",
    "classification/spinenet143_imagenet.gin",
    "classification/spinenet190_imagenet.gin",
    "retinanet/spinenet49s_coco.gin",
    "retinanet/spinenet49_coco.gin",
    "retinanet/spinenet96_coco.gin",
    "retinanet/spinenet143_coco.gin",
    "retinanet/spinenet190_coco.gin",
    "retinanet/r50_fpn_coco.gin",
    "retinanet/spinenet49_mbconv_coco.gin",
    "retinanet/spinenet49xxs_mbconv_coco.gin",
    "retinanet/sp_efficientnet_b0_coco.gin",
    "retinanet/eff_spinenet_m0_coco.gin",
    "retinanet/eff_spinenet_m1_coco.gin",
    "retinanet/eff_spinenet_m2_coco.gin",
    "retinanet/eff_spinenet_d0_coco.gin",
    "retinanet/eff_spinenet_d0_coco_no_s2d.gin",
    "retinanet/eff_spinenet_d0_coco_no_s2d_no_weighted.gin",
    "retinanet/eff_spinenet_d1_coco.gin",
    "retinanet/eff_spinenet_d2_coco.gin",
    # Mask R-CNN: the inference graph, i.e. the Fast R-CNN head on the 1000
    # test proposals and the mask head on the 100 detections.
    "maskrcnn/spinenet49_coco.gin",
    "maskrcnn/spinenet96_coco.gin",
    "maskrcnn/spinenet143_coco.gin",
    "maskrcnn/spinenet190_coco.gin",
    "maskrcnn/eff_spinenet_d0_coco.gin",
    "maskrcnn/eff_spinenet_d1_coco.gin",
    "maskrcnn/eff_spinenet_d2_coco.gin",
)


def experiment_files(experiments_dir=EXPERIMENTS_DIR):
  """Paths of every experiment gin file, relative to experiments_dir, sorted."""
  found = []
  for root, _, names in os.walk(experiments_dir):
    for name in names:
      if name.endswith(".gin"):
        found.append(os.path.relpath(os.path.join(root, name),
                                     experiments_dir))
  return sorted(found)


def _parse(gin_files, gin_params=()):
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(gin_files, gin_params,
                                        skip_unknown=False)


def declarations(gin_file):
  """(Expectation or None, PublishedSize or None) that a gin file declares."""
  _parse([gin_file])
  return expectations.expected_result(), expectations.published_size()


def published_sizes(experiments_dir=EXPERIMENTS_DIR):
  """[(experiment path relative to experiments_dir, PublishedSize)] in the
  table's row order (TABLE_ORDER, then any other declaring file)."""
  found = {}
  for rel in experiment_files(experiments_dir):
    _, size = declarations(os.path.join(experiments_dir, rel))
    if size is not None:
      found[rel] = size
  rows = [rel for rel in TABLE_ORDER if rel in found]
  rows += [rel for rel in sorted(found) if rel not in TABLE_ORDER]
  return [(rel, found[rel]) for rel in rows]


def backbone_of(model):
  """The first nested model whose output is a dict of levels (the backbone)."""
  for layer in model.layers:
    if hasattr(layer, "layers") and isinstance(getattr(layer, "output", None),
                                               dict):
      return layer
  return None


def model_stats(gin_files, gin_params=(), image_size=None):
  """Builds the experiment's model and returns its size and cost as a dict."""
  _parse(gin_files, gin_params)
  task = registry.experiment()
  if image_size:
    task.image_size = image_size
  model = task.build_model()
  input_shape = tuple(model.input_shape[1:])
  backbone = backbone_of(model)
  return {
      "params": analysis.count_params(model, trainable_only=True),
      "all_weights": analysis.count_params(model),
      "backbone_params": (analysis.count_params(backbone, trainable_only=True)
                          if backbone else None),
      "multiply_adds": analysis.count_multiply_adds(model, input_shape),
      "image_size": input_shape[0],
  }


def _relative(measured, published):
  return f"{100.0 * (measured - published) / published:+.1f}%"


def print_table():
  """Prints measured against published size for every declaring experiment."""
  header = (f"{'model':38s} {'params (M)':>10s} {'published':>9s} {'diff':>7s} "
            f"{'MAdds (B)':>10s} {'published':>9s} {'diff':>7s}")
  print(header)
  print("-" * len(header))
  for experiment, size in published_sizes():
    name, params_m, madds_b = size.name, size.params_m, size.multiply_adds_b
    stats = model_stats([os.path.join(EXPERIMENTS_DIR, experiment)])
    p, m = stats["params"] / 1e6, stats["multiply_adds"] / 1e9
    print(f"{name:38s} {p:10.2f} {params_m:9g} {_relative(p, params_m):>7s} "
          f"{m:10.2f} {madds_b:9g} {_relative(m, madds_b):>7s}", flush=True)


def main(argv):
  del argv
  if FLAGS.table:
    print_table()
    return 0
  if not FLAGS.gin_file:
    raise app.UsageError("Give --gin_file (an experiment) or --table.")
  stats = model_stats(FLAGS.gin_file, FLAGS.gin_param, FLAGS.image_size)
  if FLAGS.json:
    print(json.dumps(stats))
  else:
    for key, value in stats.items():
      print(f"{key:18s} {value:,}" if isinstance(value, int) else
            f"{key:18s} {value}")
  return 0


if __name__ == "__main__":
  define_flags()
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
