r"""Measures how closely .tflite and .onnx exports agree with the SavedModel, and their size and latency.

  python -m official.export_agreement --model_dir=DIR --saved_model=OUT \
    --exports=m.tflite,m_int8.tflite,m.onnx \
    --images='data/synthetic_coco/val/*.jpg' [--max_images=50] \
    [--min_score=0.3] [--iou_threshold=0.9] [--latency_runs=20]

(`python -m official.tflite_agreement`, this tool's former name, still runs
it; --tflite is another name for --exports.)

Each image goes through the SavedModel (input type image_tensor) and through
each export, run by official/runtimes.py (LiteRT for .tflite, ONNX Runtime
for .onnx) on official.serving.tflite_input's pixels. What is compared
depends on the SavedModel's outputs:

- detectors: reference detections scoring >= min_score are matched to the
  export's (boxes mapped back to the original image;
  official/evaluation/detection_agreement.py); a detection agrees at IoU >=
  iou_threshold with the same class. Also the share at IoU >= 0.5, the mean
  IoU and the mean score difference.
- classifiers: the share of images whose top-1 class is the same, and the
  largest probability difference.
- segmenters: the share of pixels of the image (the padding left out) whose
  class is the same in both class maps.

Then one table, a row per model with the SavedModel first: format, size
(MB; a SavedModel's directory in all), latency at batch 1 on this machine
(median of --latency_runs calls on the first image after two warm-up
calls; the SavedModel's includes its in-graph resize, the exports' take
resized pixels) and the agreement.
"""

import os
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

# First: another top-level `official` (Model Garden's) is named, not an
# ImportError from deep inside (official/package_check.py).
from official import package_check  # pylint: disable=g-bad-import-order
package_check.ensure_ours()

from official import exporting
from official import runtimes
from official import serving
from official.evaluation import detection_agreement
from official.tasks.retinanet import original_image_boxes

DETECTION = "detection"
CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"


def output_kind(output_names):
  """DETECTION, CLASSIFICATION or SEGMENTATION from a model's output names.

  Raises:
    ValueError: none of the three output sets (the names are listed).
  """
  names = set(output_names)
  if {"num_detections", "detection_boxes", "detection_scores",
      "detection_classes"} <= names:
    return DETECTION
  if "class_map" in names:
    return SEGMENTATION
  if "probabilities" in names:
    return CLASSIFICATION
  raise ValueError(f"Outputs {sorted(names)} are not those of a detector "
                   f"(num_detections, detection_*), a classifier "
                   f"(probabilities) or a segmenter (class_map).")


def path_size(path):
  """Bytes of a file, or of all files under a directory."""
  if not tf.io.gfile.isdir(path):
    return tf.io.gfile.stat(path).length
  total = 0
  for root, _, files in tf.io.gfile.walk(path):
    total += sum(tf.io.gfile.stat(os.path.join(root, f)).length
                 for f in files)
  return total


def median_latency_ms(call, runs):
  """Median wall time of call() in milliseconds, after two warm-up calls."""
  for _ in range(2):
    call()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.median(times))


class _Tally:
  """Running agreement of one export with the reference."""

  def __init__(self, kind):
    self.kind = kind
    self.checked = self.agreed = self.agreed_050 = 0
    self.ious, self.diffs = [], []

  def add(self, reference, outputs, image_info, min_score, iou_threshold):
    if self.kind == DETECTION:
      outputs = dict(outputs)
      outputs["detection_boxes"] = original_image_boxes(
          tf.constant(outputs["detection_boxes"]), image_info[None]).numpy()
      result = detection_agreement.match_detections(
          reference, outputs, min_score, iou_threshold)
      self.checked += result["checked"]
      self.agreed += result["agreed"]
      self.agreed_050 += int(np.sum((result["ious"] >= 0.5) &
                                    result["same_class"]))
      self.ious.extend(result["ious"].tolist())
      self.diffs.extend(result["score_diffs"].tolist())
    elif self.kind == CLASSIFICATION:
      want = np.asarray(reference["probabilities"])[0]
      got = np.asarray(outputs["probabilities"])[0]
      self.checked += 1
      self.agreed += int(np.argmax(want) == np.argmax(got))
      self.diffs.append(float(np.max(np.abs(want - got))))
    else:
      # The image's part of the model input: image_info row 1 is its scaled
      # (height, width) at the top-left (dataloaders/segmentation_input.py).
      height, width = np.ceil(image_info.numpy()[1]).astype(int)
      want = np.asarray(reference["class_map"])[0, :height, :width]
      got = np.asarray(outputs["class_map"])[0, :height, :width]
      self.checked += want.size
      self.agreed += int(np.sum(want == got))

  def summary(self, images):
    result = {"images": images, "checked": self.checked,
              "agreed": self.agreed,
              "agreement": self.agreed / max(self.checked, 1)}
    if self.kind == DETECTION:
      result["agreement_iou_050"] = self.agreed_050 / max(self.checked, 1)
      result["mean_iou"] = float(np.mean(self.ious)) if self.ious else 0.0
      result["mean_score_diff"] = (float(np.mean(self.diffs))
                                   if self.diffs else 0.0)
    elif self.kind == CLASSIFICATION:
      result["max_probability_diff"] = (float(np.max(self.diffs))
                                        if self.diffs else 0.0)
    return result


def compare(task, saved_model, export_paths, image_paths, min_score=0.3,
            iou_threshold=0.9, latency_runs=20, num_threads=None):
  """Compares exports with the SavedModel on images.

  Args:
    task: the task the exports were made from (exporting.load_task).
    saved_model: the SavedModel directory (input type image_tensor).
    export_paths: .tflite / .onnx files.
    image_paths: image files (JPEG, PNG, ...).
    min_score: detectors: reference detections checked from this score.
    iou_threshold: detectors: a matched pair agrees from this IoU on.
    latency_runs: timed batch-1 calls per model (0: no latency).
    num_threads: interpreter threads of the exports (None: the runtime's
      default).
  Returns:
    (kind, rows): kind is DETECTION, CLASSIFICATION or SEGMENTATION; rows
    is a list of dicts, the SavedModel's first, with "path", "format",
    "size_bytes", "latency_ms" (None when latency_runs is 0) and, for the
    exports, the agreement summary (module docstring).
  Raises:
    ValueError: an export's outputs differ from the SavedModel's kind.
    runtimes.ExportFileError: an export cannot be loaded.
  """
  serve = tf.saved_model.load(saved_model).signatures["serving_default"]
  kind = output_kind(serve.structured_outputs)
  exports = [runtimes.load(path, num_threads) for path in export_paths]
  for exported in exports:
    if output_kind(exported.output_names) != kind:
      raise ValueError(f"{exported.path} returns {list(exported.output_names)}"
                       f"; the SavedModel {saved_model} is a {kind} model.")
  tallies = [_Tally(kind) for _ in exports]
  first = None
  for image_path in image_paths:
    image = serving.decode_image(tf.io.read_file(image_path))
    reference = {k: v.numpy() for k, v in
                 serve(**{serving.INPUT_KEY: image[None]}).items()}
    pixels, image_info = serving.tflite_input(task, image)
    pixels = pixels.numpy()
    if first is None:
      first = (image, pixels)
    for exported, tally in zip(exports, tallies):
      tally.add(reference, exported(pixels), image_info, min_score,
                iou_threshold)

  def latency(call):
    return median_latency_ms(call, latency_runs) if latency_runs else None

  rows = [{"path": saved_model, "format": "saved_model",
           "size_bytes": path_size(saved_model),
           "latency_ms": latency(lambda: serve(
               **{serving.INPUT_KEY: first[0][None]}))}]
  for exported, tally in zip(exports, tallies):
    row = {"path": exported.path, "format": exported.format,
           "size_bytes": path_size(exported.path),
           "latency_ms": latency(lambda e=exported: e(first[1]))}
    row.update(tally.summary(len(image_paths)))
    rows.append(row)
  return kind, rows


def table(kind, rows, iou_threshold=0.9):
  """The comparison as a Markdown table (one line per model)."""
  if kind == DETECTION:
    header = ["model", "format", "size", "batch-1 latency",
              f"IoU >= {iou_threshold:g}, same class",
              "IoU >= 0.5, same class", "mean IoU"]
  elif kind == CLASSIFICATION:
    header = ["model", "format", "size", "batch-1 latency", "same top-1",
              "max probability difference"]
  else:
    header = ["model", "format", "size", "batch-1 latency",
              "same class per pixel"]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for row in rows:
    latency = ("-" if row["latency_ms"] is None
               else f"{row['latency_ms']:.1f} ms")
    cells = [os.path.basename(row["path"].rstrip("/")), row["format"],
             f"{row['size_bytes'] / 2**20:.1f} MB", latency]
    if "agreement" not in row:
      cells += ["reference"] + [""] * (len(header) - 5)
    else:
      share = (f"{100 * row['agreement']:.2f}% "
               f"({row['agreed']}/{row['checked']})")
      cells.append(share)
      if kind == DETECTION:
        cells += [f"{100 * row['agreement_iou_050']:.1f}%",
                  f"{row['mean_iou']:.3f}"]
      elif kind == CLASSIFICATION:
        cells.append(f"{row['max_probability_diff']:.2e}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Defines this tool's flags (only when it runs: other tools share names)."""
  flags.DEFINE_string("model_dir", None, "The training run the exports were "
                      "made from.")
  flags.DEFINE_string("saved_model", None, "SavedModel (input image_tensor).")
  flags.DEFINE_list("exports", [], ".tflite and .onnx files to compare.")
  flags.DEFINE_alias("tflite", "exports")
  flags.DEFINE_string("images", None, "Image glob.")
  flags.DEFINE_integer("max_images", 50, "Images compared at most.")
  flags.DEFINE_float("min_score", 0.3, "Detectors: reference detections "
                     "checked.")
  flags.DEFINE_float("iou_threshold", 0.9, "Detectors: a matched pair agrees "
                     "from this IoU on (with the same class).")
  flags.DEFINE_integer("latency_runs", 20, "Timed batch-1 calls per model "
                       "(0: skip latency).")
  flags.DEFINE_integer("num_threads", None, "Interpreter threads of the "
                       "exports (default: the runtime's).")


def main(argv):
  del argv
  if not (FLAGS.model_dir and FLAGS.saved_model and FLAGS.exports and
          FLAGS.images):
    raise app.UsageError("--model_dir, --saved_model, --exports and --images "
                         "are required.")
  if FLAGS.max_images < 1:
    raise app.UsageError(f"--max_images={FLAGS.max_images}; expected at "
                         f"least 1.")
  images = sorted(tf.io.gfile.glob(FLAGS.images))[:FLAGS.max_images]
  if not images:
    raise app.UsageError(f"--images={FLAGS.images!r} matches no file.")
  try:
    task = exporting.load_task(FLAGS.model_dir)
    kind, rows = compare(task, FLAGS.saved_model, FLAGS.exports, images,
                         FLAGS.min_score, FLAGS.iou_threshold,
                         FLAGS.latency_runs, FLAGS.num_threads)
  except (exporting.ExportError, runtimes.ExportFileError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  for row in rows[1:]:
    logging.info("%s: %d/%d agree.", row["path"], row["agreed"],
                 row["checked"])
  what = {DETECTION: f"reference detections scoring >= {FLAGS.min_score:g}",
          CLASSIFICATION: "images, top-1 class",
          SEGMENTATION: "pixels of the images, class"}[kind]
  print(f"{kind}: {len(images)} images ({FLAGS.images}); agreement with "
        f"the SavedModel over {what}.")
  print(table(kind, rows, FLAGS.iou_threshold))


def run():
  """The command line (module docstring)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
