"""`python -m official.predict` on small fake exports that follow the contract.

The fake exports are tf.Modules saved with a serving_default signature, as
official.export writes them: a detector returning fixed boxes given as
fractions of each input image's size (so the boxes in the JSON show which size
the model saw), and a classifier whose logits are an image's mean red, green
and blue.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from official import predict
from official import visualization

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Detections of the fake detector: (ymin, xmin, ymax, xmax) as fractions of
# the image, score, class id. The fourth scores below the default threshold;
# the fifth is past num_detections (padding, class 0).
BOX_FRACTIONS = [[0.25, 0.25, 0.75, 0.75], [0.0, 0.5, 0.5, 1.0],
                 [0.5, 0.0, 1.0, 0.5], [0.1, 0.1, 0.2, 0.2],
                 [0.0, 0.0, 0.0, 0.0]]
SCORES = [0.9, 0.6, 0.45, 0.1, 0.0]
CLASSES = [1, 3, 7, 1, 0]
NUM_DETECTIONS = 4
LABEL_MAP = {"1": "person", "3": "car"}
GREY = (100, 110, 120)


class FakeDetector(tf.Module):
  """A detection export: fixed boxes scaled to each input image's size."""

  def __init__(self, input_type, batch_size=None, image_size=(None, None),
               dtype=None):
    super().__init__()
    self.input_type = input_type
    if input_type == "image_tensor":
      spec = tf.TensorSpec([batch_size, *image_size, 3], dtype or tf.uint8,
                           name="images")
    else:
      spec = tf.TensorSpec([batch_size], dtype or tf.string, name="images")
    self.serve = tf.function(self._serve, input_signature=[spec])

  def _image_sizes(self, images):
    """float32 [batch, 2]: (height, width) of each input image."""
    if self.input_type == "image_tensor":
      size = tf.cast(tf.shape(images)[1:3], tf.float32)
      return tf.tile(size[tf.newaxis], [tf.shape(images)[0], 1])
    if self.input_type == "image_bytes":
      def size(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.cast(tf.shape(image)[:2], tf.float32)
      return tf.map_fn(size, images, fn_output_signature=tf.float32)
    features = tf.io.parse_example(images, {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64)})
    def checked_size(example):
      encoded, image_format, height, width = example
      image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      size = tf.cast(tf.stack([height, width]), tf.int32)
      # The example's own fields must describe its image.
      with tf.control_dependencies([
          tf.debugging.assert_equal(tf.shape(image)[:2], size),
          tf.debugging.assert_equal(
              tf.reduce_any(tf.equal(image_format, ["jpeg", "png"])), True)]):
        return tf.cast(size, tf.float32)
    return tf.map_fn(
        checked_size, (features["image/encoded"], features["image/format"],
                       features["image/height"], features["image/width"]),
        fn_output_signature=tf.float32)

  def _serve(self, images):
    sizes = self._image_sizes(images)
    batch = tf.shape(sizes)[0]
    scale = tf.concat([sizes, sizes], axis=-1)[:, tf.newaxis, :]
    def per_image(values, dtype):
      return tf.tile(tf.constant([values], dtype), [batch, 1])
    return {
        "num_detections": tf.fill([batch], NUM_DETECTIONS),
        "detection_boxes": tf.constant(BOX_FRACTIONS)[tf.newaxis] * scale,
        "detection_scores": per_image(SCORES, tf.float32),
        "detection_classes": per_image(CLASSES, tf.int32)}


class FakeClassifier(tf.Module):
  """A classification export over 6 classes, from encoded images.

  Logits: 10 x the image's mean red, green and blue in [0, 1], then three
  classes with fixed logits 0, 1 and 2.
  """

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name="images")])
  def serve(self, images):
    def mean_color(data):
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
      return tf.reduce_mean(tf.cast(image, tf.float32), axis=[0, 1]) / 255.0
    colors = tf.map_fn(mean_color, images, fn_output_signature=tf.float32)
    batch = tf.shape(colors)[0]
    logits = tf.concat(
        [10.0 * colors, tf.tile([[0.0, 1.0, 2.0]], [batch, 1])], axis=-1)
    probabilities = tf.nn.softmax(logits)
    top_k = tf.math.top_k(probabilities, k=5)
    return {"logits": logits, "probabilities": probabilities,
            "top_k_classes": top_k.indices,
            "top_k_probabilities": top_k.values}


def save(module, path, label_map=None, signature="serving_default"):
  tf.saved_model.save(module, str(path), signatures={signature: module.serve})
  if label_map is not None:
    with open(os.path.join(path, "assets", "label_map.json"), "w") as f:
      json.dump(label_map, f)
  return str(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  root = tmp_path_factory.mktemp("exports")
  return {
      "image_tensor": save(FakeDetector("image_tensor"), root / "tensor",
                           LABEL_MAP),
      "image_bytes": save(FakeDetector("image_bytes"), root / "bytes",
                          LABEL_MAP),
      "tf_example": save(FakeDetector("tf_example"), root / "example",
                         LABEL_MAP),
      "fixed": save(FakeDetector("image_tensor", batch_size=2,
                                 image_size=(32, 48)), root / "fixed",
                    LABEL_MAP),
      "classifier": save(FakeClassifier(), root / "classifier",
                         {"0": "red", "1": "green", "2": "blue"}),
  }


def write_image(path, height, width, color=GREY, mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.new("RGB", (width, height), color).convert(mode)
  if path.endswith(".jpg"):
    image.save(path, quality=95)
  else:
    image.save(path)
  return str(path)


def decoded(path):
  """The pixels predict draws on: the file decoded by TensorFlow."""
  return tf.io.decode_image(tf.io.read_file(path), channels=3,
                            expand_animations=False).numpy()


def read_json(path):
  with open(path) as f:
    return json.load(f)


def expected_detections(height, width):
  """The fake detector's detections at threshold 0.3, in image pixels."""
  names = ["person", "car", "class 7"]
  return [{"box": [f * s for f, s in zip(fractions,
                                         (height, width, height, width))],
           "score": score, "class_id": class_id, "class_name": name}
          for fractions, score, class_id, name in zip(
              BOX_FRACTIONS[:3], SCORES[:3], CLASSES[:3], names)]


def assert_detections(record, height, width):
  assert (record["height"], record["width"]) == (height, width)
  expected = expected_detections(height, width)
  assert len(record["detections"]) == len(expected)
  for got, want in zip(record["detections"], expected):
    assert got["box"] == pytest.approx(want["box"], abs=0.01)
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert (got["class_id"], got["class_name"]) == (want["class_id"],
                                                     want["class_name"])


def test_image_tensor_export_writes_json_and_png(exports, tmp_path):
  jpeg = write_image(str(tmp_path / "in" / "street.jpg"), 64, 96)
  png = write_image(str(tmp_path / "in" / "park.png"), 120, 80, mode="L")
  out = str(tmp_path / "vis")
  result = predict.predict(exports["image_tensor"], str(tmp_path / "in/*"),
                           out)

  assert result == {"written": [f"{out}/park.json", f"{out}/street.json"],
                    "failed": []}
  for path, stem, (height, width) in [(jpeg, "street", (64, 96)),
                                      (png, "park", (120, 80))]:
    record = read_json(f"{out}/{stem}.json")
    assert record["image"] == path
    assert_detections(record, height, width)

    drawn = np.asarray(Image.open(f"{out}/{stem}.png"))
    original = decoded(path)
    assert drawn.shape == (height, width, 3)
    # The person box's bottom edge (ymax exclusive) has the class colour ...
    person_bottom = int(0.75 * height) - 1
    assert tuple(drawn[person_bottom, width // 2]) == (
        visualization.class_color(1))
    # ... and nothing is drawn in the bottom-right corner, away from boxes.
    corner = (slice(int(0.8 * height), None), slice(int(0.8 * width), None))
    np.testing.assert_array_equal(drawn[corner], original[corner])


@pytest.mark.parametrize("input_type", ["image_bytes", "tf_example"])
def test_encoded_inputs(exports, tmp_path, input_type):
  path = write_image(str(tmp_path / "photo.png"), 48, 72)
  model = predict.load_model(exports[input_type])
  assert (model.input_key, model.input_type, model.batch_size) == (
      "images", input_type, None)
  predict.predict(exports[input_type], path, str(tmp_path / "vis"))
  assert_detections(read_json(str(tmp_path / "vis" / "photo.json")), 48, 72)


def test_fixed_batch_and_image_size_are_filled_and_boxes_scaled_back(
    exports, tmp_path):
  path = write_image(str(tmp_path / "photo.jpg"), 64, 96)
  model = predict.load_model(exports["fixed"])
  assert (model.batch_size, model.image_size) == (2, (32, 48))
  predict.predict(exports["fixed"], path, str(tmp_path / "vis"))
  # The model saw 32x48 pixels; the boxes are in the file's 64x96.
  assert_detections(read_json(str(tmp_path / "vis" / "photo.json")), 64, 96)


def test_score_threshold_and_missing_label_map(exports, tmp_path):
  export = str(tmp_path / "export")
  shutil.copytree(exports["image_tensor"], export)
  os.remove(os.path.join(export, "assets", "label_map.json"))
  path = write_image(str(tmp_path / "photo.png"), 40, 40)
  predict.predict(export, path, str(tmp_path / "vis"), score_threshold=0.05)
  detections = read_json(str(tmp_path / "vis" / "photo.json"))["detections"]
  assert [d["score"] for d in detections] == pytest.approx([0.9, 0.6, 0.45,
                                                            0.1])
  assert [d["class_name"] for d in detections] == [
      "class 1", "class 3", "class 7", "class 1"]

  predict.predict(export, path, str(tmp_path / "vis"), score_threshold=0.7)
  detections = read_json(str(tmp_path / "vis" / "photo.json"))["detections"]
  assert [d["class_id"] for d in detections] == [1]


def test_classification_export(exports, tmp_path):
  red = write_image(str(tmp_path / "red.png"), 64, 64, color=(230, 20, 20))
  blue = write_image(str(tmp_path / "blue.jpg"), 64, 64, color=(20, 20, 230))
  model = predict.load_model(exports["classifier"])
  assert (model.task, model.input_type) == ("classification", "image_bytes")
  predict.predict(exports["classifier"], str(tmp_path / "*"),
                  str(tmp_path / "vis"))

  for path, stem, top1 in [(red, "red", "red"), (blue, "blue", "blue")]:
    record = read_json(str(tmp_path / "vis" / f"{stem}.json"))
    assert record["image"] == path
    top_k = record["top_k"]
    assert len(top_k) == 5
    assert top_k[0]["class_name"] == top1
    assert top_k[0]["probability"] > 0.9
    probabilities = [c["probability"] for c in top_k]
    assert probabilities == sorted(probabilities, reverse=True)
    # Classes 3-5 have no name in the label map.
    assert {c["class_name"] for c in top_k} >= {"class 5", "class 4"}

    drawn = np.asarray(Image.open(str(tmp_path / "vis" / f"{stem}.png")))
    original = decoded(path)
    assert drawn.shape == original.shape
    assert np.any(drawn[:12, :40] != original[:12, :40])  # The caption.
    np.testing.assert_array_equal(drawn[30:], original[30:])


def test_directory_input_takes_only_images(exports, tmp_path):
  images = tmp_path / "images"
  write_image(str(images / "a.jpg"), 32, 32)
  write_image(str(images / "b.PNG"), 32, 32)
  (images / "notes.txt").write_text("not an image")
  os.makedirs(images / "nested.jpg")
  result = predict.predict(exports["image_tensor"], str(images),
                           str(tmp_path / "vis"))
  assert [os.path.basename(p) for p in result["written"]] == ["a.json",
                                                               "b.json"]
  result = predict.predict(exports["image_tensor"], str(images),
                           str(tmp_path / "vis"), max_images=1)
  assert [os.path.basename(p) for p in result["written"]] == ["a.json"]


def test_images_sharing_a_stem_do_not_overwrite_each_other(exports, tmp_path):
  first = write_image(str(tmp_path / "x" / "cat.png"), 32, 48)
  second = write_image(str(tmp_path / "y" / "cat.png"), 40, 40)
  out = tmp_path / "vis"
  predict.predict(exports["image_tensor"], str(tmp_path / "*" / "cat.png"),
                  str(out))
  assert sorted(os.listdir(out)) == ["cat_1.json", "cat_1.png", "cat_2.json",
                                     "cat_2.png"]
  assert read_json(str(out / "cat_1.json"))["image"] == first
  assert read_json(str(out / "cat_2.json"))["image"] == second
  assert np.asarray(Image.open(out / "cat_2.png")).shape == (40, 40, 3)


def test_output_stems():
  assert predict.output_stems(["a/dog.jpg", "b/cat.png"]) == ["dog", "cat"]
  # cat_1 is a real image's stem, so the numbered cats skip it; Cat and cat
  # collide on case-insensitive file systems.
  assert predict.output_stems(["a/cat.png", "b/Cat.jpg", "c/cat_1.png"]) == [
      "cat_2", "Cat_3", "cat_1"]


def test_unreadable_images_are_skipped_and_counted(exports, tmp_path, caplog):
  good = write_image(str(tmp_path / "in" / "good.png"), 32, 32)
  bad = str(tmp_path / "in" / "broken.jpg")
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8\xff this is not a JPEG")
  with caplog.at_level(logging.INFO, logger="absl"):
    result = predict.predict(exports["image_tensor"], str(tmp_path / "in"),
                             str(tmp_path / "vis"))
  assert result["failed"] == [bad]
  assert result["written"] == [str(tmp_path / "vis" / "good.json")]
  assert read_json(result["written"][0])["image"] == good
  assert not os.path.exists(tmp_path / "vis" / "broken.json")
  messages = "\n".join(r.getMessage() for r in caplog.records)
  assert (f"[1/2] Skipping {bad}: cannot decode it (jpeg::Uncompress failed."
          f" Invalid JPEG data or crop window.); expected a JPEG, PNG, GIF or "
          f"BMP image." in messages)
  assert "Wrote results for 1 of 2 image(s)" in messages
  assert f"skipped 1 (unreadable, or the model failed on them): ['{bad}']" in (
      messages)


def test_missing_or_unusable_exports_are_explained(tmp_path):
  with pytest.raises(predict.PredictError,
                     match=f"--model={tmp_path}/nowhere does not exist"):
    predict.load_model(str(tmp_path / "nowhere"))

  not_export = tmp_path / "not_export"
  os.makedirs(not_export / "variables")
  (not_export / "README").write_text("")
  with pytest.raises(predict.PredictError, match=(
      r"is not a SavedModel: it has no saved_model.pb; it holds "
      r"\['README', 'variables'\]")):
    predict.load_model(str(not_export))

  other = save(FakeDetector("image_tensor"), tmp_path / "other",
               signature="detect")
  with pytest.raises(predict.PredictError, match=(
      r"has no 'serving_default' signature; its signatures are \['detect'\]")):
    predict.load_model(other)

  floats = save(FakeDetector("image_tensor", dtype=tf.float32),
                tmp_path / "floats")
  with pytest.raises(predict.PredictError, match=(
      r"input 'images' takes float32 \(None, None, None, 3\); expected uint8")):
    predict.load_model(floats)


def test_wrong_input_type_outputs_and_label_map_are_explained(exports,
                                                              tmp_path):
  with pytest.raises(predict.PredictError, match=(
      "--input_type=image_tensor needs an input of uint8 .* but .* takes "
      "string")):
    predict.load_model(exports["image_bytes"], input_type="image_tensor")

  class NotADetector(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, images):
      return {"embedding": tf.zeros([tf.shape(images)[0], 4])}
  export = save(NotADetector(), tmp_path / "embedder")
  with pytest.raises(predict.PredictError, match=(
      r"returns \['embedding'\]; expected detection outputs")):
    predict.load_model(export)

  export = str(tmp_path / "bad_labels")
  shutil.copytree(exports["image_tensor"], export)
  label_map = os.path.join(export, "assets", "label_map.json")
  for content, message in [("[1, 2]", "holds a list"),
                           ('{"person": 1}', "has key 'person', not a class"),
                           ("{1: 2", "is not valid JSON")]:
    with open(label_map, "w") as f:
      f.write(content)
    with pytest.raises(predict.PredictError,
                       match=f"Label map {re.escape(label_map)} {message}"):
      predict.load_model(export)


def test_bad_arguments_are_explained(exports, tmp_path):
  image = write_image(str(tmp_path / "a.png"), 16, 16)
  with pytest.raises(predict.PredictError,
                     match=r"No images match --images='.*/\*\.jpeg'"):
    predict.predict(exports["image_tensor"], str(tmp_path / "*.jpeg"),
                    str(tmp_path / "vis"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(predict.PredictError, match=(
      "empty is a directory with no .jpg, .jpeg, .png files")):
    predict.predict(exports["image_tensor"], str(tmp_path / "empty"),
                    str(tmp_path / "vis"))
  with pytest.raises(predict.PredictError, match=(
      r"--score_threshold=1.5; expected a score in \[0, 1\]")):
    predict.predict(exports["image_tensor"], image, str(tmp_path / "vis"),
                    score_threshold=1.5)
  with pytest.raises(predict.PredictError, match="--max_images=0"):
    predict.predict(exports["image_tensor"], image, str(tmp_path / "vis"),
                    max_images=0)
  with pytest.raises(predict.PredictError, match=(
      f"would overwrite the input image {image}")):
    predict.predict(exports["image_tensor"], image, str(tmp_path))
  assert np.asarray(Image.open(image)).shape == (16, 16, 3)  # Untouched.


def run_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  return subprocess.run([sys.executable, "-m", "official.predict", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120, check=False)


def test_command_line(exports, tmp_path):
  write_image(str(tmp_path / "in" / "a.jpg"), 48, 64)
  write_image(str(tmp_path / "in" / "b.png"), 32, 32)
  out = tmp_path / "vis"
  result = run_cli(f"--saved_model={exports['image_bytes']}",
                   f"--images={tmp_path / 'in'}", f"--output_dir={out}",
                   "--score_threshold=0.5")
  assert result.returncode == 0, result.stderr
  assert "[1/2] " in result.stderr and "2 detections -> " in result.stderr
  assert "Wrote results for 2 of 2 image(s)" in result.stderr
  assert len(read_json(str(out / "a.json"))["detections"]) == 2

  result = run_cli(f"--saved_model={exports['image_bytes']}",
                   f"--images={tmp_path / 'in' / '*.gif'}",
                   f"--output_dir={out}")
  assert result.returncode != 0
  assert "No images match --images=" in result.stderr


def test_command_line_fails_when_every_image_is_unreadable(exports, tmp_path):
  for name in ("a.jpg", "b.png"):
    (tmp_path / name).write_bytes(b"garbage")
  result = run_cli(f"--saved_model={exports['image_tensor']}",
                   f"--images={tmp_path / '*'}",
                   f"--output_dir={tmp_path / 'vis'}")
  assert result.returncode == 1, result.stderr
  assert "Skipping" in result.stderr
  assert "None of the 2 image(s) could be processed" in result.stderr
