"""Decodes detection tf.Examples (COCO records) into raw tensors.

Reads the keys written by `dataloaders.datasets.coco_records`, which are
those of the TF Object Detection API and the TF Model Garden, so records of
either project decode here:

  image/encoded              JPEG or PNG (grayscale, RGB or RGBA)
  image/source_id            bytes, e.g. the COCO image id b"397133"
  image/object/bbox/{ymin,xmin,ymax,xmax}   floats in [0, 1]
  image/object/class/label   int64, COCO category id
  image/object/is_crowd      int64 0/1        (optional: all False)
  image/object/area          float, pixels    (optional: box area)
  image/object/mask          PNG per object   (with include_masks)

The decoder runs inside `tf.data` (graph mode) and handles images with no
object (K = 0).
"""

import tensorflow as tf

_BOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin",
             "image/object/bbox/ymax", "image/object/bbox/xmax")


def _features(include_masks):
  features = {
      "image/encoded": tf.io.FixedLenFeature([], tf.string),
      "image/source_id": tf.io.FixedLenFeature([], tf.string,
                                               default_value=""),
      "image/object/class/label": tf.io.VarLenFeature(tf.int64),
      "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
      "image/object/area": tf.io.VarLenFeature(tf.float32),
  }
  for key in _BOX_KEYS:
    features[key] = tf.io.VarLenFeature(tf.float32)
  if include_masks:
    features["image/object/mask"] = tf.io.VarLenFeature(tf.string)
  return features


def _dense(parsed, key):
  sparse = parsed[key]
  default = "" if sparse.dtype == tf.string else 0
  return tf.sparse.to_dense(sparse, default_value=default)


def _or_default(values, default):
  """`values` when present in the record (non-empty), else `default`."""
  return tf.cond(tf.size(values) > 0, lambda: values, lambda: default)


def _decode_masks(encoded_masks, height, width):
  """float32 [K, height, width] 0/1 masks of K PNG strings (K may be 0)."""

  def decode_one(png):
    mask = tf.io.decode_png(png, channels=1)[:, :, 0]
    return tf.cast(mask > 0, tf.float32)  # 0/1 and 0/255 PNGs alike.

  def decode_all():
    return tf.map_fn(
        decode_one, encoded_masks,
        fn_output_signature=tf.TensorSpec([None, None], tf.float32))

  masks = tf.cond(tf.size(encoded_masks) > 0, decode_all,
                  lambda: tf.zeros([0, height, width], tf.float32))
  return tf.reshape(masks, [-1, height, width])


def image_bytes_check(encoded, source_id, what):
  """Assert op: `encoded` starts as a JPEG, PNG, GIF or BMP file does.

  tf.io.decode_image's own error for other bytes names no record; this one
  gives the record's source id.

  Args:
    encoded: scalar tf.string, the encoded image.
    source_id: scalar tf.string, named in the error.
    what: str, the record kind for the message (e.g. "Detection record").
  """
  head = tf.strings.substr(encoded, 0, 8)
  known = tf.reduce_any(tf.stack([
      tf.strings.substr(head, 0, len(magic)) == magic
      for magic in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8",
                    b"BM")]))
  return tf.debugging.Assert(
      known, [f"{what} with source id", source_id, ": 'image/encoded' is "
              "not a JPEG, PNG, GIF or BMP image (it starts with", head,
              "); expected the image file's bytes."])


def decode_detection_example(serialized, include_masks=False):
  """Decodes one serialized detection tf.Example.

  Args:
    serialized: scalar tf.string, a serialized tf.Example (keys in the
      module docstring).
    include_masks: bool, also decode image/object/mask.

  Returns:
    dict with, K the number of objects (0 allowed):
      "image": uint8 [height, width, 3]; grayscale is replicated and alpha
        dropped, so always 3 channels.
      "height", "width": int32 scalars, pixels of the decoded image.
      "source_id": tf.string scalar ("" when the record has none).
      "groundtruth_boxes": float32 [K, 4], (ymin, xmin, ymax, xmax)
        normalised to [0, 1] by the image height / width.
      "groundtruth_classes": int32 [K], class labels (COCO category ids).
      "groundtruth_is_crowd": bool [K] (all False when the key is absent).
      "groundtruth_area": float32 [K], pixels (when the key is absent: the
        box areas in pixels of this image).
      "groundtruth_instance_masks" (include_masks only): float32
        [K, height, width], 0 or 1.

  Raises:
    tf.errors.InvalidArgumentError (when run): when image/encoded is not an
      image file, or the box coordinates and labels (and masks) do not all
      have K entries; the message gives the source id.
  """
  parsed = tf.io.parse_single_example(serialized, _features(include_masks))
  source_id = parsed["image/source_id"]
  with tf.control_dependencies([image_bytes_check(
      parsed["image/encoded"], source_id, "Detection record")]):
    image = tf.io.decode_image(parsed["image/encoded"], channels=3,
                               expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  shape = tf.shape(image)
  height, width = shape[0], shape[1]

  coords = [_dense(parsed, key) for key in _BOX_KEYS]
  classes = tf.cast(_dense(parsed, "image/object/class/label"), tf.int32)
  num_objects = tf.shape(classes)[0]
  checks = []
  for key, values in zip(_BOX_KEYS, coords):
    checks.append(tf.debugging.Assert(
        tf.equal(tf.shape(values)[0], num_objects),
        ["Detection record with source id", source_id, f": '{key}' has",
         tf.shape(values)[0], "entries but 'image/object/class/label' has",
         num_objects, "; expected one entry per object."]))
  with tf.control_dependencies(checks):
    boxes = tf.stack(coords, axis=-1)
  boxes = tf.reshape(boxes, [-1, 4])

  is_crowd = _or_default(
      tf.cast(_dense(parsed, "image/object/is_crowd"), tf.bool),
      tf.zeros([num_objects], tf.bool))
  box_areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) *
               tf.cast(height * width, tf.float32))
  area = _or_default(_dense(parsed, "image/object/area"), box_areas)

  decoded = {
      "image": image,
      "height": tf.cast(height, tf.int32),
      "width": tf.cast(width, tf.int32),
      "source_id": source_id,
      "groundtruth_boxes": boxes,
      "groundtruth_classes": classes,
      "groundtruth_is_crowd": is_crowd,
      "groundtruth_area": area,
  }
  if include_masks:
    encoded_masks = _dense(parsed, "image/object/mask")
    check = tf.debugging.Assert(
        tf.equal(tf.shape(encoded_masks)[0], num_objects),
        ["Detection record with source id", source_id, ": 'image/object/mask'"
         " has", tf.shape(encoded_masks)[0], "PNGs but there are",
         num_objects, "objects; expected one mask per object (were the "
         "records written with --include_masks?)."])
    with tf.control_dependencies([check]):
      decoded["groundtruth_instance_masks"] = _decode_masks(
          encoded_masks, height, width)
  return decoded
