r"""Measures how closely TFLite exports agree with the SavedModel of a detector.

  python -m official.tflite_agreement --model_dir=DIR --saved_model=OUT \
    --tflite=m.tflite[,m_int8.tflite] --images='data/synthetic_coco/val/*.jpg' \
    [--max_images=50] [--min_score=0.3]

Each image goes through the SavedModel (input type image_tensor) and through
each TFLite model (input from official.serving.tflite_input, boxes mapped
back to the original image). Reference detections scoring >= min_score are
matched to the TFLite ones (official/evaluation/detection_agreement.py); the
summary gives, per TFLite model, the share that agree (IoU >= 0.9, same
class), the mean IoU and the mean score difference.
"""

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from official import exporting
from official import serving
from official.evaluation import detection_agreement
from official.tasks.retinanet import original_image_boxes


def run_tflite(interpreter_runner, pixels):
  """Runs a TFLite signature runner on float32 [1, S, S, 3] pixels."""
  return interpreter_runner(**{serving.INPUT_KEY: np.asarray(pixels)})


def tflite_runner(path):
  """The serving_default signature runner of a .tflite file."""
  interpreter = tf.lite.Interpreter(model_path=path)
  interpreter.allocate_tensors()
  return interpreter.get_signature_runner()


def compare(task, saved_model, tflite_paths, image_paths, min_score=0.3,
            iou_threshold=0.9):
  """Returns {tflite path: summary dict} (see the module docstring)."""
  serve = tf.saved_model.load(saved_model).signatures["serving_default"]
  runners = {path: tflite_runner(path) for path in tflite_paths}
  stats = {path: {"checked": 0, "agreed": 0, "ious": [], "score_diffs": []}
           for path in tflite_paths}
  for image_path in image_paths:
    image = serving.decode_image(tf.io.read_file(image_path))
    reference = serve(**{serving.INPUT_KEY: image[None]})
    pixels, image_info = serving.tflite_input(task, image)
    for path, runner in runners.items():
      outputs = run_tflite(runner, pixels)
      outputs["detection_boxes"] = original_image_boxes(
          tf.constant(outputs["detection_boxes"]), image_info[None]).numpy()
      result = detection_agreement.match_detections(
          reference, outputs, min_score, iou_threshold)
      summary = stats[path]
      summary["checked"] += result["checked"]
      summary["agreed"] += result["agreed"]
      summary["ious"].extend(result["ious"].tolist())
      summary["score_diffs"].extend(result["score_diffs"].tolist())
  return {
      path: {
          "images": len(image_paths),
          "checked": s["checked"],
          "agreed": s["agreed"],
          "agreement": s["agreed"] / max(s["checked"], 1),
          "mean_iou": float(np.mean(s["ious"])) if s["ious"] else 0.0,
          "mean_score_diff": (float(np.mean(s["score_diffs"]))
                              if s["score_diffs"] else 0.0),
      } for path, s in stats.items()
  }


FLAGS = flags.FLAGS


def define_flags():
  """Defines this tool's flags (only when it runs: other tools share names)."""
  flags.DEFINE_string("model_dir", None, "The training run both were "
                      "exported from.")
  flags.DEFINE_string("saved_model", None, "SavedModel (input image_tensor).")
  flags.DEFINE_list("tflite", [], "TFLite files to compare.")
  flags.DEFINE_string("images", None, "Image glob.")
  flags.DEFINE_integer("max_images", 50, "Images compared at most.")
  flags.DEFINE_float("min_score", 0.3, "Reference detections checked.")
  flags.DEFINE_float("iou_threshold", 0.9, "A matched pair agrees from this "
                     "IoU on (with the same class).")


def main(argv):
  del argv
  if not (FLAGS.model_dir and FLAGS.saved_model and FLAGS.tflite and
          FLAGS.images):
    raise app.UsageError("--model_dir, --saved_model, --tflite and --images "
                         "are required.")
  images = sorted(tf.io.gfile.glob(FLAGS.images))[:FLAGS.max_images]
  if not images:
    raise app.UsageError(f"--images={FLAGS.images!r} matches no file.")
  task = exporting.load_task(FLAGS.model_dir)
  results = compare(task, FLAGS.saved_model, FLAGS.tflite, images,
                    FLAGS.min_score, FLAGS.iou_threshold)
  for path, r in results.items():
    logging.info("%s", path)
    print(f"{path}: {r['agreed']}/{r['checked']} detections agree "
          f"({100 * r['agreement']:.1f}%; IoU >= {FLAGS.iou_threshold} and "
          f"same class) over "
          f"{r['images']} images; mean IoU {r['mean_iou']:.3f}, mean score "
          f"difference {r['mean_score_diff']:.4f}.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
