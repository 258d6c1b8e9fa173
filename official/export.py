r"""Exports a trained model as a SavedModel (TF Serving), a TFLite or an ONNX model.

  python -m official.export --model_dir=DIR --export_dir=OUT \
    [--checkpoint=CKPT] [--input_type=image_tensor|image_bytes|tf_example] \
    [--batch_size=N] [--image_size=N] [--gin_param=...] [--overwrite] \
    [--fold_batch_norms=false]

  python -m official.export --model_dir=DIR --export_dir=OUT.tflite \
    --format=tflite [--quantization=float32|float16|int8]

  python -m official.export --model_dir=DIR --export_dir=OUT.onnx \
    --format=onnx [--batch_size=N] [--opset=17]

The model is rebuilt from DIR/config.gin (written when it was trained);
--gin_param overrides serving settings such as
"RetinaNetTask.score_threshold = 0.3". The latest checkpoint of DIR is
restored unless --checkpoint names one; a checkpoint that does not fit the
rebuilt model fails before anything is written, listing the variables that
differ (name, expected shape, found shape).

SavedModel: signature `serving_default`, input "images" (official/serving.py
describes the three input types), outputs num_detections, detection_boxes
(ymin, xmin, ymax, xmax in original-image pixels), detection_scores,
detection_classes for detectors; logits, probabilities, top_k_classes,
top_k_probabilities for classifiers. assets/ holds config.gin and, when the
dataset names its classes, label_map.json ({"class id": "name"}).

TFLite: batch 1, input float32 [1, S, S, 3] pixels (official/serving.py:
`tflite_input`), NMS as a TFLite builtin. int8 quantizes weights and
activations, calibrated on --num_calibration_images images of the training
records; the input and outputs stay float32. <stem>.config.gin and (when
the dataset names its classes) <stem>.label_map.json are written beside it.

ONNX (through tf2onnx, opset --opset, default exporting.ONNX_OPSET): the
TFLite input, float32 [batch, S, S, 3] pixels, with the batch dynamic unless
--batch_size fixes it; the outputs of the SavedModel by name (boxes in input
pixels, as for TFLite). Detectors run NMS in the graph as ONNX
NonMaxSuppression (batched, class-aware). config.gin and label_map.json
travel inside, as the model's metadata_props. A graph with an op that does
not convert fails naming the TensorFlow op and node, and nothing is
written. official/runtimes.py runs .tflite (LiteRT) and .onnx (ONNX
Runtime) files.

Batch norms are folded into the convolutions before them
(official/bn_folding.py; Ioffe & Szegedy, "Batch Normalization", Sec. 3.1:
at inference a batch norm is a per-channel affine map): the SavedModel's
weights become constants of its graph, with no FusedBatchNorm op left, and
its detections equal the unfolded model's to float rounding. The log says
how many folded and names any batch norm that did not, with the reason.
--fold_batch_norms=false keeps the weights as variables and the batch
norms as ops. The ONNX export is converted from the folded graph as well
(tf2onnx alone leaves some as BatchNormalization nodes); the TFLite
converter folds batch norms itself, whatever the flag.

The export is written to a temporary path next to OUT and moved into place
when complete, so a failed export leaves an existing OUT as it was.
"""

import sys

from absl import app
from absl import flags

# First: another top-level `official` (Model Garden's) is named, not an
# ImportError from deep inside (official/package_check.py).
from official import package_check  # pylint: disable=g-bad-import-order
package_check.ensure_ours()

from official import exporting
from official import serving
from official.core import checkpointing
from official.core import gin_config

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (its "
                    "config.gin rebuilds the model).")
flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix (default: "
                    "the latest in --model_dir).")
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel "
                    "directory, the .tflite or the .onnx file.")
flags.DEFINE_enum("format", "saved_model", exporting.FORMATS, "What to write.")
flags.DEFINE_enum("input_type", "image_tensor", serving.INPUT_TYPES,
                  "SavedModel input (official/serving.py).")
flags.DEFINE_integer("batch_size", None, "Fixed batch size of the SavedModel "
                     "signature or the ONNX input (default: any).")
flags.DEFINE_integer("image_size", None, "Model input size (default: the "
                     "trained one).")
flags.DEFINE_enum("quantization", "float32", exporting.QUANTIZATIONS,
                  "TFLite weights and activations.")
flags.DEFINE_integer("num_calibration_images", 100, "int8 calibration "
                     "images from the training records.")
flags.DEFINE_integer("opset", exporting.ONNX_OPSET, "ONNX opset.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings parsed after the "
                          "model directory's config.gin.")
flags.DEFINE_bool("overwrite", False, "Replace an existing export.")
flags.DEFINE_bool("fold_batch_norms", True, "Fold the batch norms into the "
                  "convolutions (SavedModel and ONNX; the TFLite converter "
                  "always folds).")


def main(argv):
  del argv
  if not FLAGS.model_dir or not FLAGS.export_dir:
    raise app.UsageError("--model_dir and --export_dir are required.")
  try:
    exporting.check_destination(FLAGS.export_dir, FLAGS.overwrite)
    task = exporting.load_task(FLAGS.model_dir, FLAGS.gin_param,
                               FLAGS.image_size)
    model, _ = exporting.restore_model(task, FLAGS.model_dir,
                                       FLAGS.checkpoint)
    if FLAGS.format == "saved_model":
      path = exporting.export_saved_model(
          task, model, FLAGS.export_dir, FLAGS.input_type, FLAGS.batch_size,
          FLAGS.overwrite, FLAGS.fold_batch_norms)
    elif FLAGS.format == "onnx":
      path = exporting.export_onnx(task, model, FLAGS.export_dir,
                                   FLAGS.batch_size, FLAGS.opset,
                                   FLAGS.overwrite, FLAGS.fold_batch_norms)
    else:
      path = exporting.export_tflite(
          task, model, FLAGS.export_dir, FLAGS.quantization,
          FLAGS.num_calibration_images, FLAGS.overwrite)
  except (exporting.ExportError, checkpointing.CheckpointMismatchError,
          gin_config.GinConfigError) as e:
    # The message alone, the last thing printed, exit status 1 (not
    # app.UsageError, which prints the whole flag list with it).
    sys.exit(f"official.export: {type(e).__name__}: {e}")
  print(path)


if __name__ == "__main__":
  app.run(main)
