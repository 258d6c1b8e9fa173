r"""Samples Eff-SpineNet resource distributions (paper Sec. 3.3, eq. 2-4).

  python -m official.resource_distribution \
    --gin_file=configs/experiments/retinanet/eff_spinenet_d0_coco.gin \
    --num_samples=5 --seed=0 --output=/tmp/sampled_widths.gin

For the experiment's Eff-SpineNet (its 18 block widths before the feature
multiplier, its repeats and input size) each sample draws beta_i from
{1, 5, 10, 15, 20} and redistributes the widths at equal analytic FLOPs
(modeling/backbones/resource_distribution.py). Each sample is built and
measured (the experiment's whole model, e.g. the RetinaNet), and its
multiply-adds and parameters are printed relative to the experiment's own.
--output writes the widths as gin: one macro per sample and
`eff_spinenet.block_filters = %SAMPLE_0`, so a found architecture trains with
  python -m official.train --gin_file=<experiment> --gin_file=/tmp/sampled_widths.gin
"""

import sys

from absl import app
from absl import flags
from absl import logging
import gin

from modeling import analysis
from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones import resource_distribution as rd
from modeling.backbones import spinenet_mbconv as mbconv_lib
from official import registry

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Experiment gin files (an Eff-SpineNet one).")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied last.")
flags.DEFINE_integer("num_samples", 5, "Architectures to sample.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_integer("divisor", 8, "Sampled widths are multiples of this.")
flags.DEFINE_string("output", None, "Write the sampled widths here as gin.")
flags.DEFINE_bool("measure", True, "Build and measure every sample.")


def _parse(gin_files, gin_params):
  gin.clear_config()
  with gin.unlock_config():
    gin.parse_config_files_and_bindings(gin_files, gin_params,
                                        skip_unknown=False)


def _measure(gin_files, gin_params):
  _parse(gin_files, gin_params)
  task = registry.experiment()
  model = task.build_model()
  return (analysis.count_params(model, trainable_only=True),
          analysis.count_multiply_adds(model, tuple(model.input_shape[1:])))


def base_architecture(gin_files, gin_params):
  """(widths, levels, image_size, repeats) of the experiment's Eff-SpineNet."""
  _parse(gin_files, gin_params)
  if gin.query_parameter("%BACKBONE").selector != "eff_spinenet":
    raise ValueError(f"{gin_files}: BACKBONE is not @eff_spinenet; the tool "
                     "redistributes Eff-SpineNet block widths.")
  def query(name, default):
    try:
      value = gin.query_parameter(f"eff_spinenet.{name}")
    except ValueError:
      return default
    return default if value is None else value
  model_id = str(query("model_id", "D0")).upper()
  scaling = eff_lib.SCALING_MAP[model_id]
  widths = list(query("block_filters", scaling.get(
      "block_filters", eff_lib.EFF_SPINENET_D0_FILTERS)))
  repeats = query("block_repeats", scaling["block_repeats"])
  repeats = repeats if isinstance(repeats, int) else list(repeats)
  task = registry.experiment()
  levels = rd.block_levels(mbconv_lib.MBCONV_BLOCK_SPECS)
  return widths, levels, int(task.image_size), repeats


def write_gin(path, samples, gin_files):
  lines = [f"# Eff-SpineNet block widths sampled by official.resource_distribution",
           f"# for {' '.join(gin_files)}; widths before the feature multiplier.",
           "# Pick a sample by changing the last line."]
  for i, s in enumerate(samples):
    lines.append(f"# sample {i}: betas {s['betas']}, analytic FLOPs x"
                 f"{s['relative_flops']:.3f}" + (
                     f", measured multiply-adds x{s['relative_madds']:.3f}, "
                     f"params x{s['relative_params']:.3f}"
                     if "relative_madds" in s else ""))
    lines.append(f"SAMPLE_{i} = {s['widths']}")
  lines.append("eff_spinenet.block_filters = %SAMPLE_0")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv):
  del argv
  if not FLAGS.gin_file:
    raise app.UsageError("Give --gin_file (an Eff-SpineNet experiment).")
  widths, levels, image_size, repeats = base_architecture(FLAGS.gin_file,
                                                         FLAGS.gin_param)
  samples = rd.sample(widths, levels, image_size, repeats, FLAGS.num_samples,
                      seed=FLAGS.seed, divisor=FLAGS.divisor)
  base = _measure(FLAGS.gin_file, FLAGS.gin_param) if FLAGS.measure else None
  if base:
    print(f"target: {base[0] / 1e6:.3f}M params, {base[1] / 1e9:.3f}B "
          f"multiply-adds, widths {widths}")
  for i, s in enumerate(samples):
    line = f"sample {i}: widths {s['widths']} analytic FLOPs x{s['relative_flops']:.3f}"
    if base:
      params, madds = _measure(
          FLAGS.gin_file,
          list(FLAGS.gin_param) + [f"eff_spinenet.block_filters = {s['widths']}"])
      s["relative_params"] = params / base[0]
      s["relative_madds"] = madds / base[1]
      line += (f" multiply-adds {madds / 1e9:.3f}B (x{s['relative_madds']:.3f})"
               f" params {params / 1e6:.3f}M (x{s['relative_params']:.3f})")
    print(line, flush=True)
  if FLAGS.output:
    write_gin(FLAGS.output, samples, FLAGS.gin_file)
    print(f"wrote {FLAGS.output}")
  return 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
