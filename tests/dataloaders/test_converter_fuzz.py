"""Property-based fuzzing of the dataset converters and record decoders.

hypothesis draws small data sets, valid ones and ones broken in the ways
real data is broken (a field of any JSON type, a missing key, a repeated
id, a missing, truncated, corrupt or mis-sized image, an EXIF orientation,
a short polygon, a bad RLE, a label map of the wrong size or values). For
every draw:

* the converter either succeeds, and then every shard it reports exists,
  nothing else was written, and every record decodes with the pipeline's
  decoder into what the summary says; or it raises ValueError or
  FileNotFoundError whose message names the annotation file, folder or
  image file at fault, and leaves no output file at all;
* corrupting a written record makes the decoder fail with TensorFlow's
  InvalidArgumentError (never another exception), naming the record's
  source id where the decoder checks the field.

Examples are few, small and derandomized, so the file is deterministic and
runs in well under two minutes on two CPU cores.
"""

import io
import json
import os
import tempfile

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from dataloaders import classification
from dataloaders import detection_decoder
from dataloaders import segmentation_input
from dataloaders.datasets import coco_records
from dataloaders.datasets import image_folder_records
from dataloaders.datasets import pascal_records

_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                     database=None,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.data_too_large])
_EXPECTED_ERRORS = (ValueError, FileNotFoundError)
_EXIF_MODES = ("apply", "error", "ignore")
_ORIENTATION_TAG = 0x0112

# Any JSON value: what a broken annotation file may hold in any field.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) |
    st.floats(allow_nan=True, allow_infinity=True) |
    st.text(alphabet="ab7_ /.", max_size=6),
    lambda children: (st.lists(children, max_size=4) |
                      st.dictionaries(st.sampled_from(
                          ["counts", "size", "id", "x"]), children,
                                      max_size=3)),
    max_leaves=6)

_decode_detection = tf.function(
    lambda s: detection_decoder.decode_detection_example(s,
                                                         include_masks=True))
_decode_segmentation = tf.function(
    segmentation_input.decode_segmentation_example)
_decode_classification = tf.function(
    classification.decode_classification_example)


def _encode(array, image_format, orientation=None):
  buffer = io.BytesIO()
  extra = {}
  if orientation is not None:
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = orientation
    extra["exif"] = exif.tobytes()
  Image.fromarray(array).save(buffer, format=image_format.upper(), **extra)
  return buffer.getvalue()


# What can be wrong with an image file.
_IMAGE_FAULTS = ("truncated", "garbage", "empty", "resized")


@st.composite
def _image_bytes(draw, height, width, fault=None):
  """Bytes of a small h x w image (as displayed), maybe EXIF-tagged, and
  broken as `fault` (one of _IMAGE_FAULTS) says."""
  image_format = draw(st.sampled_from(["jpeg", "png"]))
  channels = draw(st.sampled_from([1, 3]))
  orientation = draw(st.sampled_from([None, None, 1, 3, 6, 8]))
  # A quarter turn stores the displayed h x w image as w x h.
  stored = (width, height) if orientation in (6, 8) else (height, width)
  shape = stored if channels == 1 else stored + (3,)
  seed = draw(st.integers(0, 1000))
  array = np.random.default_rng(seed).integers(0, 256, shape, np.uint8)
  data = _encode(array, image_format, orientation)
  if fault == "truncated":
    data = data[:max(8, len(data) // 2)]
  elif fault == "garbage":
    data = b"GIF89a" + bytes(draw(st.binary(min_size=0, max_size=20)))
  elif fault == "empty":
    data = b""
  elif fault == "resized":
    data = _encode(np.zeros((stored[0] + 1, stored[1]), np.uint8),
                   image_format)
  return data


def _fault(draw, faults):
  """None (a valid data set) about half the time, else one of `faults`."""
  return draw(st.sampled_from((None,) * len(faults) + tuple(faults)))


def _assert_named_failure(error, names):
  assert isinstance(error, _EXPECTED_ERRORS), repr(error)
  message = str(error)
  assert any(name in message for name in names), (names, message)


def _written(out_dir):
  return sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []


# COCO ---------------------------------------------------------------------


@st.composite
def _segmentation(draw, height, width):
  kind = draw(st.sampled_from(["polygon", "polygon", "short", "rle",
                               "compressed"]))
  coordinate = st.integers(0, max(height, width))
  if kind == "polygon":
    return [draw(st.lists(coordinate, min_size=6, max_size=10))]
  if kind == "short":  # Fewer than 3 points, alone or before a real one.
    short = draw(st.lists(coordinate, min_size=0, max_size=5))
    rest = draw(st.lists(st.lists(coordinate, min_size=6, max_size=8),
                         max_size=1))
    return [short] + rest
  bits = draw(st.lists(st.booleans(), min_size=height * width,
                       max_size=height * width))
  mask = np.array(bits, np.uint8).reshape((height, width))
  rle = mask_utils.encode(np.asfortranarray(mask))
  if kind == "compressed":
    return {"size": [height, width], "counts": rle["counts"].decode()}
  runs, value, count = [], 0, 0
  for pixel in mask.ravel(order="F"):
    if pixel == value:
      count += 1
    else:
      runs.append(count)
      value, count = pixel, 1
  runs.append(count)
  return {"size": [height, width], "counts": runs}


@st.composite
def _coco_set(draw):
  """(dataset dict, {file name: bytes}) of 1-3 images: valid, or with one
  fault in the JSON or in one image file."""
  fault = _fault(draw, _IMAGE_FAULTS + ("set", "set", "set", "delete",
                                        "repeat_id", "drop_file"))
  num_images = draw(st.integers(1, 3))
  faulty_image = draw(st.integers(0, num_images - 1))
  string_ids = draw(st.booleans())
  images, files, annotations = [], {}, []
  for k in range(num_images):
    height, width = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    image_id = f"img_{k}" if string_ids else k + 1
    name = f"{k}.img"
    images.append({"id": image_id, "file_name": name, "height": height,
                   "width": width})
    files[name] = draw(_image_bytes(
        height, width, fault if k == faulty_image else None))
    for _ in range(draw(st.integers(0, 2))):
      x, y = draw(st.integers(-3, width)), draw(st.integers(-3, height))
      w, h = draw(st.integers(-1, 8)), draw(st.integers(-1, 8))
      annotations.append({
          "id": len(annotations) + 1, "image_id": image_id,
          "category_id": draw(st.sampled_from([1, 3])),
          "bbox": [x, y, w, h], "area": float(max(w, 0) * max(h, 0)),
          "iscrowd": draw(st.sampled_from([0, 0, 1])),
          "segmentation": draw(_segmentation(height, width))})
  dataset = {"images": images, "annotations": annotations,
             "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}
  section = draw(st.sampled_from(["images", "annotations", "annotations",
                                  "categories"]))
  entries = dataset[section]
  if entries and fault in ("set", "delete", "repeat_id"):
    entry = entries[draw(st.integers(0, len(entries) - 1))]
    if fault == "set":
      entry[draw(st.sampled_from(sorted(entry)))] = draw(_JSON_VALUES)
    elif fault == "delete":
      del entry[draw(st.sampled_from(sorted(entry)))]
    else:
      entry["id"] = entries[0]["id"]
  elif fault == "drop_file":
    del files[f"{faulty_image}.img"]
  return dataset, files


@_SETTINGS
@given(_coco_set(), st.booleans(), st.sampled_from(_EXIF_MODES))
def test_coco_converter(coco, include_masks, exif_orientation):
  dataset, files = coco
  with tempfile.TemporaryDirectory() as root:
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir)
    for name, data in files.items():
      with open(os.path.join(image_dir, name), "wb") as f:
        f.write(data)
    annotation_file = os.path.join(root, "instances.json")
    with open(annotation_file, "w") as f:
      json.dump(dataset, f)
    out_dir = os.path.join(root, "out")
    try:
      summary = coco_records.convert_coco(
          image_dir, annotation_file, os.path.join(out_dir, "train"),
          num_shards=2, include_masks=include_masks, num_processes=1,
          show_progress=False, exif_orientation=exif_orientation)
    except Exception as e:  # pylint: disable=broad-except
      _assert_named_failure(e, [annotation_file, image_dir])
      assert not _written(out_dir)
      return
    assert _written(out_dir) == [os.path.basename(p)
                                 for p in summary["files"]]
    num_records = num_objects = 0
    for serialized in tf.data.TFRecordDataset(summary["files"]):
      if not include_masks:  # Decode with masks only where there are some.
        example = tf.train.Example.FromString(serialized.numpy())
        assert "image/object/mask" not in example.features.feature
        decoded = detection_decoder.decode_detection_example(serialized)
      else:
        decoded = _decode_detection(serialized)
        masks = decoded["groundtruth_instance_masks"]
        assert masks.shape[1:] == decoded["image"].shape[:2]
      boxes = decoded["groundtruth_boxes"].numpy()
      assert ((boxes >= 0) & (boxes <= 1)).all()
      assert (boxes[:, 2:] > boxes[:, :2]).all()
      num_records += 1
      num_objects += len(boxes)
    assert num_records == summary["num_images"] == len(dataset["images"])
    assert num_objects == summary["num_annotations"]


# PASCAL -------------------------------------------------------------------


@st.composite
def _voc_set(draw):
  """({relative path: bytes}, split ids) of a VOC folder of 1-3 images:
  valid, or with one fault in an image, a label map or the id list."""
  fault = _fault(draw, _IMAGE_FAULTS + (
      "no_image", "no_label", "label_size", "label_value", "label_rgb",
      "label_truncated", "unlisted_id"))
  files, ids = {}, []
  num_images = draw(st.integers(1, 3))
  faulty = draw(st.integers(0, num_images - 1))
  for k in range(num_images):
    image_id = f"2007_{k:06d}"
    ids.append(image_id)
    this = fault if k == faulty else None
    height, width = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    if this != "no_image":
      files[f"JPEGImages/{image_id}.jpg"] = draw(_image_bytes(
          height, width, this if this in _IMAGE_FAULTS else None))
    if this == "no_label":
      continue
    label_height = height + (this == "label_size")
    values = [0, 21] if this == "label_value" else draw(
        st.sampled_from([[0, 1, 255], [0, 20], [3]]))
    seed = draw(st.integers(0, 1000))
    label = np.random.default_rng(seed).choice(
        np.array(values, np.uint8), size=(label_height, width))
    picture = Image.fromarray(label)
    if this == "label_rgb":
      picture = picture.convert("RGB")
    elif draw(st.booleans()):
      picture = picture.convert("P")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    if this == "label_truncated":
      data = data[:len(data) // 2]
    files[f"SegmentationClass/{image_id}.png"] = data
  if fault == "unlisted_id":
    ids.append("2007_999999")  # Listed, but no file.
  return files, ids


@_SETTINGS
@given(_voc_set(), st.sampled_from(_EXIF_MODES))
def test_pascal_converter(voc, exif_orientation):
  files, ids = voc
  with tempfile.TemporaryDirectory() as root:
    voc_dir = os.path.join(root, "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
      os.makedirs(os.path.join(voc_dir, sub))
    for name, data in files.items():
      with open(os.path.join(voc_dir, name), "wb") as f:
        f.write(data)
    with open(os.path.join(voc_dir, "ImageSets/Segmentation/val.txt"),
              "w") as f:
      f.write("".join(f"{i}\n" for i in ids))
    out_dir = os.path.join(root, "out")
    try:
      summary = pascal_records.convert_pascal(
          voc_dir, "val", os.path.join(out_dir, "val"), num_shards=2,
          num_processes=1, show_progress=False,
          exif_orientation=exif_orientation)
    except Exception as e:  # pylint: disable=broad-except
      _assert_named_failure(e, [voc_dir])
      assert not _written(out_dir)
      return
    assert _written(out_dir) == [os.path.basename(p)
                                 for p in summary["files"]]
    decoded_ids = []
    for serialized in tf.data.TFRecordDataset(summary["files"]):
      decoded = _decode_segmentation(serialized)
      assert decoded["label"].shape[:2] == decoded["image"].shape[:2]
      labels = set(np.unique(decoded["label"].numpy()).tolist())
      assert labels <= set(range(21)) | {255}
      decoded_ids.append(decoded["source_id"].numpy().decode())
    assert sorted(decoded_ids) == sorted(ids)


# Image folders ------------------------------------------------------------


@st.composite
def _folder_set(draw):
  """{relative path: bytes} of 1-2 class folders of 1-2 files each: valid,
  or with one broken image."""
  fault = _fault(draw, _IMAGE_FAULTS)
  files = {}
  for label in range(draw(st.integers(1, 2))):
    for k in range(draw(st.integers(1, 2))):
      height, width = draw(st.integers(4, 12)), draw(st.integers(4, 12))
      extension = draw(st.sampled_from([".jpg", ".png", ".PNG", ".txt"]))
      files[f"class{label}/{k}{extension}"] = draw(_image_bytes(
          height, width, fault if not files else None))
  return files


@_SETTINGS
@given(_folder_set(), st.sampled_from(_EXIF_MODES))
def test_image_folder_converter(files, exif_orientation):
  with tempfile.TemporaryDirectory() as root:
    input_dir = os.path.join(root, "in")
    os.makedirs(input_dir)
    for name, data in files.items():
      os.makedirs(os.path.join(input_dir, os.path.dirname(name)),
                  exist_ok=True)
      with open(os.path.join(input_dir, name), "wb") as f:
        f.write(data)
    out_dir = os.path.join(root, "out")
    try:
      result = image_folder_records.convert_image_folders(
          input_dir, os.path.join(out_dir, "train"), num_shards=2,
          num_processes=1, show_progress=False,
          exif_orientation=exif_orientation)
    except Exception as e:  # pylint: disable=broad-except
      _assert_named_failure(e, [input_dir])
      assert not _written(out_dir)
      return
    assert _written(out_dir) == sorted(
        [os.path.basename(p) for p in result["files"]] + ["train-labels.txt"])
    images = [n for n in files if not n.endswith(".txt")]
    count = 0
    for serialized in tf.data.TFRecordDataset(result["files"]):
      decoded = _decode_classification(serialized)
      assert decoded["image"].shape[-1] == 3
      assert 0 <= int(decoded["label"]) < result["num_classes"]
      count += 1
    assert count == result["num_examples"] == len(images)


# Decoders -----------------------------------------------------------------


def _detection_record():
  """A valid detection record with source id b"img_7" and two objects."""
  with tempfile.TemporaryDirectory() as root:
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir)
    with open(os.path.join(image_dir, "a.png"), "wb") as f:
      f.write(_encode(np.full((10, 12, 3), 90, np.uint8), "png"))
    dataset = {
        "images": [{"id": "img_7", "file_name": "a.png", "height": 10,
                    "width": 12}],
        "annotations": [
            {"id": k + 1, "image_id": "img_7", "category_id": 1,
             "bbox": [1 + k, 1, 4, 5], "area": 20.0, "iscrowd": 0,
             "segmentation": [[1 + k, 1, 5 + k, 1, 5 + k, 6, 1 + k, 6]]}
            for k in range(2)],
        "categories": [{"id": 1, "name": "a"}]}
    annotation_file = os.path.join(root, "instances.json")
    with open(annotation_file, "w") as f:
      json.dump(dataset, f)
    summary = coco_records.convert_coco(
        image_dir, annotation_file, os.path.join(root, "out", "x"),
        num_shards=1, include_masks=True, num_processes=1,
        show_progress=False)
    return next(iter(tf.data.TFRecordDataset(summary["files"]))).numpy()


_RECORD = _detection_record()
_FEATURE_KEYS = sorted(
    tf.train.Example.FromString(_RECORD).features.feature.keys())


@_SETTINGS
@given(st.sampled_from(_FEATURE_KEYS),
       st.sampled_from(["delete", "drop_last", "garbage_bytes", "as_int",
                        "as_float"]))
def test_detection_decoder_on_corrupted_records(key, mutation):
  decoded = _decode_detection(tf.constant(_RECORD))
  assert decoded["groundtruth_boxes"].shape == (2, 4)
  assert decoded["source_id"].numpy() == b"img_7"

  example = tf.train.Example.FromString(_RECORD)
  feature = example.features.feature[key]
  kind = feature.WhichOneof("kind")
  values = list(getattr(feature, kind).value)
  if mutation == "delete":
    del example.features.feature[key]
  elif mutation == "drop_last":
    getattr(feature, kind).ClearField("value")
    getattr(feature, kind).value.extend(values[:-1])
  elif mutation == "garbage_bytes" and kind == "bytes_list":
    feature.bytes_list.ClearField("value")
    feature.bytes_list.value.extend([b"<html>"] * len(values))
  elif mutation == "as_int":
    feature.Clear()
    feature.int64_list.value.extend([1] * max(1, len(values)))
  elif mutation == "as_float":
    feature.Clear()
    feature.float_list.value.extend([0.5] * max(1, len(values)))
  try:
    _decode_detection(tf.constant(example.SerializeToString()))
  except tf.errors.InvalidArgumentError as e:
    message = str(e)
    # The decoder's own checks name the record.
    if (key == "image/encoded" and mutation == "garbage_bytes" or
        key.startswith("image/object/bbox/") and mutation == "drop_last"):
      assert "img_7" in message, message
