r"""Prints parameters and multiply-adds of a configured model.

  python -m official.model_stats --gin_file=configs/experiments/classification/spinenet49_imagenet.gin --json
  python -m official.model_stats --table

Multiply-adds are FLOPs as the SpineNet papers count them (REFERENCE.md §6):
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

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied last.")
flags.DEFINE_integer("image_size", None, "Override the task's square input size.")
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.DEFINE_bool("table", False,
                  "Print every registered variant beside the published numbers.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, experiment gin file, published params in millions, published
# multiply-adds in billions); REFERENCE.md §6.
PUBLISHED = (
    ("SpineNet-49 classifier 224", "classification/spinenet49_imagenet.gin",
     22.1, 3.5),
    ("SpineNet-96 classifier 224", "classification/spinenet96_imagenet.gin",
     36.5, 5.7),
    ("SpineNet-143 classifier 224", "classification/spinenet143_imagenet.gin",
     60.5, 9.1),
    ("SpineNet-190 classifier 224", "classification/spinenet190_imagenet.gin",
     127.1, 19.1),
    ("RetinaNet SpineNet-49S 640", "retinanet/spinenet49s_coco.gin", 11.9,
     33.8),
    ("RetinaNet SpineNet-49 640", "retinanet/spinenet49_coco.gin", 28.5, 85.4),
    ("RetinaNet SpineNet-96 1024", "retinanet/spinenet96_coco.gin", 43.0,
     265.4),
    ("RetinaNet SpineNet-143 1280", "retinanet/spinenet143_coco.gin", 67.0,
     524.0),
    ("RetinaNet SpineNet-190 1280", "retinanet/spinenet190_coco.gin", 163.6,
     1885.0),
    ("RetinaNet R50-FPN 640", "retinanet/r50_fpn_coco.gin", 34.0, 97.0),
    # MBConv scale-permuted models (issue 5; Eff-SpineNet paper, SpineNet
    # appendix A). 49XXS is the first paper version's figure.
    ("RetinaNet SpineNet-49 MBConv 384", "retinanet/spinenet49_mbconv_coco.gin",
     2.34, 1.0),
    ("RetinaNet SpineNet-49XXS MBConv 256",
     "retinanet/spinenet49xxs_mbconv_coco.gin", 0.85, 0.16),
    ("RetinaNet SP-EfficientNet-B0 512", "retinanet/sp_efficientnet_b0_coco.gin",
     4.4, 2.4),
    ("RetinaNet Eff-SpineNet-M0 256", "retinanet/eff_spinenet_m0_coco.gin",
     0.67, 0.15),
    ("RetinaNet Eff-SpineNet-M1 384", "retinanet/eff_spinenet_m1_coco.gin",
     0.99, 0.51),
    ("RetinaNet Eff-SpineNet-M2 384", "retinanet/eff_spinenet_m2_coco.gin",
     2.36, 0.97),
    ("RetinaNet Eff-SpineNet-D0 512", "retinanet/eff_spinenet_d0_coco.gin",
     3.6, 2.5),
    ("RetinaNet Eff-SpineNet-D0 no s2d",
     "retinanet/eff_spinenet_d0_coco_no_s2d.gin", 3.3, 2.4),
    ("RetinaNet Eff-SpineNet-D0 no s2d, sum",
     "retinanet/eff_spinenet_d0_coco_no_s2d_no_weighted.gin", 3.3, 2.4),
    ("RetinaNet Eff-SpineNet-D1 640", "retinanet/eff_spinenet_d1_coco.gin",
     5.2, 6.0),
    ("RetinaNet Eff-SpineNet-D2 768", "retinanet/eff_spinenet_d2_coco.gin",
     6.2, 10.3),
    # Mask R-CNN (issue 7): the inference graph, i.e. the Fast R-CNN head on
    # the 1000 test proposals and the mask head on the 100 detections.
    ("Mask R-CNN SpineNet-49 640", "maskrcnn/spinenet49_coco.gin", 40.8,
     215.7),
    ("Mask R-CNN SpineNet-96 1024", "maskrcnn/spinenet96_coco.gin", 55.2,
     314.6),
    ("Mask R-CNN SpineNet-143 1280", "maskrcnn/spinenet143_coco.gin", 79.2,
     498.4),
    ("Mask R-CNN SpineNet-190 1536", "maskrcnn/spinenet190_coco.gin", 168.2,
     1685.7),
    ("Mask R-CNN Eff-SpineNet-D0 512", "maskrcnn/eff_spinenet_d0_coco.gin",
     4.6, 4.7),
    ("Mask R-CNN Eff-SpineNet-D1 640", "maskrcnn/eff_spinenet_d1_coco.gin",
     6.4, 9.2),
    ("Mask R-CNN Eff-SpineNet-D2 768", "maskrcnn/eff_spinenet_d2_coco.gin",
     9.2, 16.0),
)


def backbone_of(model):
  """The first nested model whose output is a dict of levels (the backbone)."""
  for layer in model.layers:
    if hasattr(layer, "layers") and isinstance(getattr(layer, "output", None),
                                               dict):
      return layer
  return None


def model_stats(gin_files, gin_params=(), image_size=None):
  """Builds the experiment's model and returns its size and cost as a dict."""
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(gin_files, gin_params,
                                        skip_unknown=False)
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
  header = (f"{'model':38s} {'params (M)':>10s} {'published':>9s} {'diff':>7s} "
            f"{'MAdds (B)':>10s} {'published':>9s} {'diff':>7s}")
  print(header)
  print("-" * len(header))
  for name, experiment, params_m, madds_b in PUBLISHED:
    path = os.path.join(REPO_ROOT, "configs", "experiments", experiment)
    stats = model_stats([path])
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
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
