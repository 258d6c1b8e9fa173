"""COCO box and mask AP of detections, accumulated on the host (pycocotools).

The evaluator follows `official.core.task.Evaluator`: `update` takes the
numpy outputs of one global evaluation batch, `result` runs pycocotools'
COCOeval and returns the standard COCO metrics as floats. Between the two,
only compact arrays of the kept detections (and, without an annotation
file, of the ground truths) are held: an int64 image id and 6 float64 per
detection, an int64 image id and 7 float64 per ground-truth object, 3 int64
per image; never images or feature maps. With masks, each detection's mask
is pasted into its image and run-length encoded (compressed COCO RLE)
within `update`, so only the RLE strings are kept, never a full-size mask.

Ids. Image ids stay int64 from the records to pycocotools: a source id that
is not a number arrives as a hash in [2^62, 2^63) (dataloaders/source_ids.py),
which float64 cannot hold. An annotation file's image ids are matched
through the same function, so string ids ("img_000001") work; when they are
not all such integers, the images are numbered 1..N internally for
pycocotools (file order). pycocotools also needs unique positive annotation
ids (it keys annotations by id and takes id 0 for "unmatched"); a file
whose ids are not, e.g. ids restarting at 0 in every image, has its
annotations numbered 1..N in file order, which changes nothing else (the
order of the ground truths of an image is the file's). Both are logged.
Files whose ids are already valid are evaluated exactly as they are.

Masks. With include_mask, the ground-truth segmentations follow the
converter's rule (`dataloaders.datasets.coco_records.check_segmentation`):
polygons of fewer than 3 points are removed and an annotation left without
one is dropped from the evaluation (counted in the log), as it is from the
records, instead of crashing pycocotools after training.
"""

import contextlib
import io
import json
import math

import numpy as np
import tensorflow as tf
from absl import logging

from dataloaders import source_ids
from dataloaders.datasets import coco_records
from modeling.ops import mask_ops
from official.core import task

# Names of COCOeval.stats[0:9], in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1",
                "ARmax10", "ARmax100")
# The same figures of the "segm" evaluation (include_mask).
MASK_METRIC_NAMES = tuple("mask_" + name for name in METRIC_NAMES)

# A pasted mask probability at or above this is foreground (the rule of
# modeling/ops/mask_ops.py, shared with the served masks).
MASK_THRESHOLD = mask_ops.MASK_THRESHOLD

# At most this many ids are quoted in a log line or error.
_MAX_IDS_SHOWN = 5


@contextlib.contextmanager
def _captured_stdout():
  """Captures pycocotools' prints; yields the buffer."""
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    yield buffer


def _load_coco(annotation_file, include_mask=False):
  """Reads a COCO JSON through tf.io.gfile (gs:// allowed) for pycocotools.

  Returns:
    (pycocotools COCO, {int64 source id: pycocotools image id}): the ground
    truth, with the ids prepared as the module docstring says, and the
    image each source id of the records stands for.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: it is not a COCO instances JSON, an image id or an
      annotation is malformed, two image ids arrive as one source id, or
      (include_mask) a segmentation is malformed; the message names the
      file and the image or annotation.
  """
  if not tf.io.gfile.exists(annotation_file):
    raise FileNotFoundError(f"COCO annotation file '{annotation_file}' does "
                            "not exist; expected a COCO instances JSON.")
  with tf.io.gfile.GFile(annotation_file, "r") as f:
    try:
      dataset = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"COCO annotation file '{annotation_file}' is not "
                       f"valid JSON: {e}") from e
  for key in ("images", "annotations", "categories"):
    if not isinstance(dataset, dict) or not isinstance(dataset.get(key),
                                                       list):
      raise ValueError(f"COCO annotation file '{annotation_file}' has no "
                       f"'{key}' list; expected a COCO instances JSON.")
  image_ids = _check_images(dataset, annotation_file, include_mask)
  _check_annotations(dataset, annotation_file)
  if include_mask:
    _check_segmentations(dataset, annotation_file)
  by_source_id = _number_images(dataset, annotation_file, image_ids)
  _number_annotations(dataset, annotation_file)
  return _coco_from_dataset(dataset), by_source_id


def _check_images(dataset, annotation_file, include_mask):
  """The file's image ids, after checking each image entry."""
  image_ids = []
  seen = set()
  for index, image in enumerate(dataset["images"]):
    image_id = image.get("id") if isinstance(image, dict) else None
    if not (_is_int(image_id) or isinstance(image_id, str)):
      raise ValueError(
          f"COCO annotation file '{annotation_file}': images[{index}] has id "
          f"{image_id!r}; expected an object whose id is an integer (or a "
          "string such as 'img_000001').")
    if image_id in seen:
      raise ValueError(f"COCO annotation file '{annotation_file}' lists "
                       f"image id {image_id!r} twice; expected unique ids.")
    seen.add(image_id)
    if include_mask and not (_is_int(image.get("height")) and
                             _is_int(image.get("width"))):
      raise ValueError(
          f"COCOEvaluator(include_mask=True): image {image_id!r} of "
          f"'{annotation_file}' has no integer height/width; masks are "
          "pasted at the image size given there.")
    image_ids.append(image_id)
  return image_ids


def _check_annotations(dataset, annotation_file):
  """Raises ValueError for a category or annotation pycocotools could not
  evaluate (it would fail with a KeyError or TypeError after training)."""
  for index, category in enumerate(dataset["categories"]):
    if not isinstance(category, dict) or not _is_int(category.get("id")):
      raise ValueError(f"COCO annotation file '{annotation_file}': "
                       f"categories[{index}] is {str(category)[:80]}; "
                       "expected an object with an integer 'id'.")
  for index, ann in enumerate(dataset["annotations"]):
    where = (f"COCO annotation file '{annotation_file}', annotations[{index}]"
             f" (id {ann.get('id')!r})" if isinstance(ann, dict) else
             f"COCO annotation file '{annotation_file}', annotations[{index}]")
    if not isinstance(ann, dict):
      raise ValueError(f"{where} is a {type(ann).__name__}; expected an "
                       "object.")
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4 or
        not all(_is_number(v) for v in bbox)):
      raise ValueError(f"{where}: bbox is {str(bbox)[:80]}; expected [x, y, "
                       "width, height] in pixels.")
    if not _is_number(ann.get("area")):
      raise ValueError(f"{where}: area is {ann.get('area')!r}; expected the "
                       "object's area in pixels (COCO's small / medium / "
                       "large buckets use it).")
    if not _is_int(ann.get("category_id")):
      raise ValueError(f"{where}: category_id is {ann.get('category_id')!r};"
                       " expected an integer category id.")
    if ann.get("iscrowd") not in (0, 1) or "image_id" not in ann:
      raise ValueError(f"{where}: iscrowd is {ann.get('iscrowd')!r} and "
                       f"image_id {ann.get('image_id')!r}; expected iscrowd "
                       "0 or 1 and the id of a listed image.")


def _check_segmentations(dataset, annotation_file):
  """Applies the converter's segmentation rule to the mask ground truths.

  Raises ValueError when an annotation of a listed image has no
  segmentation or a malformed one; drops (and logs) the annotations whose
  polygons all have fewer than 3 points.
  """
  sizes = {image["id"]: (image["height"], image["width"])
           for image in dataset["images"]}
  kept, dropped = [], []
  for index, annotation in enumerate(dataset["annotations"]):
    image_id = annotation.get("image_id")
    where = (f"COCOEvaluator(include_mask=True): annotation id "
             f"{annotation.get('id')!r} (annotations[{index}], image "
             f"{image_id!r}) of '{annotation_file}'")
    if not annotation.get("segmentation"):
      raise ValueError(
          f"{where} has no 'segmentation'; mask AP needs a polygon list or "
          "an RLE for every annotation (a COCO instances JSON, not a "
          "boxes-only one).")
    if not isinstance(image_id, (int, str)) or image_id not in sizes:
      kept.append(annotation)  # Of no listed image: never evaluated.
      continue
    height, width = sizes[image_id]
    segmentation = coco_records.check_segmentation(
        annotation["segmentation"], where, height, width)
    if segmentation is None:
      dropped.append((annotation.get("id"), image_id))
      continue
    annotation["segmentation"] = segmentation
    kept.append(annotation)
  if dropped:
    shown = ", ".join(f"annotation {a!r} of image {i!r}"
                      for a, i in dropped[:_MAX_IDS_SHOWN])
    logging.warning(
        "COCOEvaluator(include_mask=True): %d annotations of '%s' have no "
        "polygon of %d or more points (%s%s); they are left out of the "
        "ground truth, as the converter leaves them out of the records.",
        len(dropped), annotation_file, coco_records.MIN_POLYGON_POINTS, shown,
        ", ..." if len(dropped) > _MAX_IDS_SHOWN else "")
  dataset["annotations"] = kept


def _number_images(dataset, annotation_file, image_ids):
  """Gives pycocotools integer image ids; maps source ids to them.

  Returns:
    {int64 source id (`dataloaders.source_ids`) of str(file id): the id
    pycocotools is given}.
  """
  numbers = source_ids.source_ids_to_int64(
      [str(i) for i in image_ids]).tolist()
  first = {}
  for image_id, number in zip(image_ids, numbers):
    if number in first:
      raise ValueError(
          f"COCO annotation file '{annotation_file}': image ids "
          f"{first[number]!r} and {image_id!r} both arrive as source id "
          f"{number} (dataloaders/source_ids.py); expected ids that stay "
          "distinct.")
    first[number] = image_id
  if all(_is_int(i) and i == n for i, n in zip(image_ids, numbers)):
    return {n: n for n in numbers}
  internal = {image_id: k + 1 for k, image_id in enumerate(image_ids)}
  logging.info(
      "COCO annotation file '%s': image ids are not all integers of at most "
      "18 digits (e.g. %s); its %d images are numbered 1..%d for "
      "pycocotools, and source ids are matched to them exactly.",
      annotation_file,
      ", ".join(repr(i) for i in image_ids[:_MAX_IDS_SHOWN]), len(image_ids),
      len(image_ids))
  for image in dataset["images"]:
    image["id"] = internal[image["id"]]
  kept = []
  for annotation in dataset["annotations"]:
    image_id = annotation.get("image_id")
    if isinstance(image_id, (int, str)) and image_id in internal:
      annotation["image_id"] = internal[image_id]
      kept.append(annotation)
  # Annotations of unlisted images are never evaluated by pycocotools.
  dataset["annotations"] = kept
  return {n: internal[i] for i, n in zip(image_ids, numbers)}


def _number_annotations(dataset, annotation_file):
  """Numbers the annotations 1..N unless their ids are unique and > 0."""
  annotations = dataset["annotations"]
  ids = [a.get("id") for a in annotations]
  valid = [i for i in ids if _is_int(i) and i > 0]
  if len(valid) == len(ids) and len(set(valid)) == len(ids):
    return
  seen, repeated, not_positive = set(), [], []
  for i in ids:
    if not (_is_int(i) and i > 0):
      not_positive.append(i)
    elif i in seen:
      repeated.append(i)
    seen.add(i)
  logging.warning(
      "COCO annotation file '%s': annotation ids are not unique positive "
      "integers (%d not positive integers, e.g. %s; %d repeated, e.g. %s). "
      "pycocotools keys annotations by id and reads id 0 as 'unmatched', so "
      "the %d annotations are numbered 1..%d in file order for the "
      "evaluation.", annotation_file, len(not_positive),
      not_positive[:_MAX_IDS_SHOWN], len(repeated),
      repeated[:_MAX_IDS_SHOWN], len(ids), len(ids))
  for k, annotation in enumerate(annotations):
    annotation["id"] = k + 1


def _is_int(value):
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value):
  return (isinstance(value, (int, float, np.integer, np.floating)) and
          not isinstance(value, bool) and abs(value) < 1e300 and
          math.isfinite(value))


def _paste_window(mask, box, height, width):
  """Binary window of one mask pasted into its box.

  Pasted by modeling.ops.mask_ops.paste_mask_window, the rule and float32
  arithmetic of the served masks (mask_ops.paste_masks), so the evaluated
  masks are the served ones.

  Returns:
    (top, left, uint8 [rows, columns] 0/1): the window's pixels of the
    image from (top, left); empty when the box misses the image.
  """
  top, left, values = mask_ops.paste_mask_window(mask, box, height, width)
  return top, left, (values >= MASK_THRESHOLD).astype(np.uint8)


def paste_mask(mask, box, height, width):
  """Pastes an m x m mask of probabilities into a box of an image.

  The rule of modeling/ops/mask_ops.py: each pixel whose centre lies in the
  half-open box [ymin, ymax) x [xmin, xmax) takes the mask's value at that
  centre (the m x m cells span the box evenly; bilinear between cell
  centres, constant beyond the outermost ones) thresholded at
  MASK_THRESHOLD (>= 0.5 is foreground); every other pixel is 0.

  Args:
    mask: float [m_h, m_w] probabilities in the box's frame.
    box: 4 floats (ymin, xmin, ymax, xmax) in image pixels; it may extend
      beyond the image.
    height, width: ints, the image size.

  Returns:
    uint8 [height, width] of 0/1.
  """
  top, left, window = _paste_window(mask, box, height, width)
  pasted = np.zeros([height, width], np.uint8)
  pasted[top:top + window.shape[0], left:left + window.shape[1]] = window
  return pasted


def _encode_pasted(masks, boxes, height, width):
  """Compressed COCO RLEs of masks [n, m, m] pasted into boxes [n, 4]."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  # One Fortran-order canvas per image, cleared after each mask.
  canvas = np.zeros([height, width, 1], np.uint8, order="F")
  rles = []
  for mask, box in zip(masks, boxes):
    top, left, window = _paste_window(mask, box, height, width)
    region = (slice(top, top + window.shape[0]),
              slice(left, left + window.shape[1]), 0)
    canvas[region] = window
    rles.append(mask_utils.encode(canvas)[0])
    canvas[region] = 0
  return rles


def _coco_from_dataset(dataset):
  from pycocotools import coco  # pylint: disable=g-import-not-at-top
  with _captured_stdout():
    ground_truth = coco.COCO()
    ground_truth.dataset = dataset
    ground_truth.createIndex()
  return ground_truth


class COCOEvaluator(task.Evaluator):
  """COCO box AP/AR of detections, streamed one global batch at a time.

  `update(outputs)` takes a dict of numpy arrays, B the batch size, D the
  detections and K the ground-truth slots per image (both padded):

    "source_id"           [B] image ids: int64 (what the input pipeline
                          makes of image/source_id, `dataloaders.source_ids`)
                          or str/bytes (b"397133", b"img_000001", as
                          `decode_detection_example` gives); the two forms
                          of one id are the same image. With an annotation
                          file they are matched to its image ids, integers
                          or strings.
    "detection_boxes"     [B, D, 4] float, (ymin, xmin, ymax, xmax) in
                          pixels of the ORIGINAL image.
    "detection_scores"    [B, D] float; detections with score <= 0 are
                          padding and dropped.
    "detection_classes"   [B, D] int (or float), COCO category ids.
    "num_detections"      [B] int, optional: detections beyond it are
                          padding and dropped (default D).
    "valid"               [B] bool, optional: False marks padding images of
                          the last batch (`Task` contract); they are skipped.

  and, only when no `annotation_file` is given (otherwise ignored):

    "groundtruth_boxes"   [B, K, 4] float, (ymin, xmin, ymax, xmax) in
                          pixels of the original image.
    "groundtruth_classes" [B, K] int, COCO category ids.
    "num_groundtruths"    [B] int, optional: slots beyond it are padding;
                          without it, slots with class <= 0 are padding.
    "groundtruth_is_crowd" [B, K] bool/int, optional (default False).
    "groundtruth_area"    [B, K] float, pixels, optional (default the box
                          area); COCO's small/medium/large buckets use it.
    "height", "width"     [B] int, optional: original image size, kept in
                          the built dataset's images. With an annotation
                          file they must agree with its image sizes.

  and, only with include_mask:

    "detection_masks"     [B, D, m, m] float, mask probabilities of each
                          detection in its own box's frame (the m x m cells
                          span detection_boxes evenly). Each kept one is
                          pasted into its image at the annotation file's
                          image size (`paste_mask`: bilinear, >= 0.5 is
                          foreground) and stored as a compressed RLE.

  `result()` returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "ARmax1",
  "ARmax10", "ARmax100"} as Python floats (COCOeval.stats[0:9]; -1.0 where
  there is no ground truth, e.g. APl without large objects), and with
  `per_category_metrics` also "AP_ByCategory/<name>",
  "AP50_ByCategory/<name>" and "ARmax100_ByCategory/<name>" per category.
  With include_mask, the same figures of the "segm" evaluation follow,
  prefixed "mask_" ("mask_AP", ..., "mask_ARmax100", and
  "mask_AP_ByCategory/<name>", ...). The printed COCOeval summaries are
  logged (absl, INFO) and kept in `self.summary` and `self.mask_summary`.

  Attributes:
    summary: str, pycocotools' box summary table of the last `result()`.
    mask_summary: str, the mask summary table (include_mask), else None.
  """

  def __init__(self, annotation_file=None, include_mask=False,
               per_category_metrics=False):
    """Initialises the evaluator.

    Args:
      annotation_file: optional str, COCO instances JSON (gs:// allowed) of
        the evaluated split; only the images passed to `update` are
        evaluated. None: the ground truths come from `update`.
      include_mask: bool, also mask AP ("segm"); needs annotation_file,
        whose segmentations are the mask ground truths.
      per_category_metrics: bool, add per-category AP / AP50 / ARmax100.

    Raises:
      FileNotFoundError, ValueError: when annotation_file is missing or is
        not a COCO JSON; with include_mask, when there is no
        annotation_file or one of its annotations has no segmentation.
    """
    if include_mask and not annotation_file:
      raise ValueError(
          "COCOEvaluator(include_mask=True) needs annotation_file: the mask "
          "ground truths are the segmentations (polygons or RLE) of a COCO "
          "instances JSON, which update() does not carry. Pass "
          "annotation_file=<instances JSON of the evaluated split>, e.g. "
          "instances_val2017.json, or include_mask=False for box AP only.")
    self.annotation_file = annotation_file
    self.include_mask = bool(include_mask)
    self.per_category_metrics = bool(per_category_metrics)
    self._ground_truth, self._by_source_id = (
        _load_coco(annotation_file, self.include_mask) if annotation_file
        else (None, None))
    self.summary = None
    self.mask_summary = None
    self.reset()

  def reset(self):
    """Forgets all images, detections and ground truths seen so far."""
    # (int64 [n] image ids, float64 [n, 6]: x, y, w, h, score, class) each.
    self._detections = []
    # (int64 [n] image ids, float64 [n, 7]: x, y, w, h, area, class,
    # is_crowd) each.
    self._groundtruths = []
    # int64 [b, 3] each: image id, height, width.
    self._images = []
    # Compressed RLE dicts, one per detection row (include_mask).
    self._mask_rles = []
    self._image_ids = set()
    # Image id -> the source id as given, for messages and file names.
    self._given_ids = {}

  def _to_image_ids(self, given):
    """pycocotools image ids (ints) of a list of source ids.

    Source ids are ints (the pipeline's int64, `dataloaders.source_ids`) or
    str / bytes (the records' image/source_id), which become the same int64
    (module docstring). With an annotation file, that int64 is looked up
    among the file's images.
    """
    numbers = [None] * len(given)
    texts = {}
    for k, source_id in enumerate(given):
      if isinstance(source_id, (int, np.integer)) and not isinstance(
          source_id, (bool, np.bool_)):
        numbers[k] = int(source_id)
      else:
        if isinstance(source_id, bytes):
          source_id = source_id.decode("utf-8", errors="replace")
        texts[k] = str(source_id)
    if texts:
      converted = source_ids.source_ids_to_int64(list(texts.values()))
      for k, number in zip(texts, converted.tolist()):
        numbers[k] = number
    if self._by_source_id is None:
      return numbers
    image_ids = []
    for source_id, number in zip(given, numbers):
      if number not in self._by_source_id:
        shown = (f"{source_id!r} (source id {number})"
                 if not isinstance(source_id, (int, np.integer))
                 else f"{number}")
        raise ValueError(
            f"COCOEvaluator.update: image id {shown} is not in the "
            f"annotation file '{self.annotation_file}'; expected the ids of "
            "its images (source_id of the records of the same split).")
      image_ids.append(self._by_source_id[number])
    return image_ids

  def update(self, outputs):
    """Adds one global batch (keys in the class docstring).

    Raises:
      KeyError: when a required key is missing (the message lists them).
      ValueError: when shapes disagree, an image id was already added since
        the last reset(), or (with annotation_file) an image id is not in
        the annotation file.
    """
    required = ["source_id", "detection_boxes", "detection_scores",
                "detection_classes"]
    if self.include_mask:
      required.append("detection_masks")
    if self._ground_truth is None:
      required += ["groundtruth_boxes", "groundtruth_classes"]
    missing = [k for k in required if k not in outputs]
    if missing:
      raise KeyError(
          f"COCOEvaluator.update: outputs lack {missing}; got keys "
          f"{sorted(outputs)}, expected {required}"
          + ("" if self._ground_truth is not None else
             " (ground truths are needed without an annotation_file)") + ".")
    source_ids = np.asarray(outputs["source_id"]).reshape([-1])
    batch_size = source_ids.shape[0]
    boxes = np.asarray(outputs["detection_boxes"], np.float64)
    scores = np.asarray(outputs["detection_scores"], np.float64)
    classes = np.asarray(outputs["detection_classes"])
    if (boxes.ndim != 3 or boxes.shape[0] != batch_size or
        boxes.shape[2] != 4 or scores.shape != boxes.shape[:2] or
        classes.shape != boxes.shape[:2]):
      raise ValueError(
          "COCOEvaluator.update: expected detection_boxes [B, D, 4], "
          "detection_scores [B, D] and detection_classes [B, D] with B = "
          f"len(source_id) = {batch_size}; got {boxes.shape}, {scores.shape} "
          f"and {classes.shape}.")
    num_detections = np.asarray(
        outputs.get("num_detections", np.full([batch_size], boxes.shape[1])))
    valid = np.asarray(outputs.get("valid", np.ones([batch_size], bool)),
                       bool).reshape([-1])

    rows = [i for i in range(batch_size) if valid[i]]
    given = [source_ids[i].item() if isinstance(source_ids[i], np.generic)
             else source_ids[i] for i in rows]
    image_ids = self._to_image_ids(given)
    in_batch = set()
    for image_id, source_id in zip(image_ids, given):
      if image_id in self._image_ids or image_id in in_batch:
        raise ValueError(
            f"COCOEvaluator.update: image id {source_id!r} was already "
            "added since the last reset(); each image must be evaluated "
            "once (is the evaluation data repeated, or its padding not "
            "marked with 'valid'?).")
      in_batch.add(image_id)

    rows = np.array(rows, np.int64)
    # int64, never float64: hashed source ids exceed its 53-bit mantissa.
    ids = np.array(image_ids, np.int64).reshape([-1])
    sizes = [np.asarray(outputs.get(k, np.zeros([batch_size]))).reshape([-1])
             for k in ("height", "width")]
    num_detections = np.asarray(num_detections).reshape([-1])
    keep = ((np.arange(boxes.shape[1])[None, :] < num_detections[rows, None])
            & (scores[rows] > 0))
    detections = (np.broadcast_to(ids[:, None], keep.shape)[keep],
                  _to_rows(boxes[rows][keep], scores[rows][keep],
                           classes[rows][keep].astype(np.float64)))
    groundtruths = (self._groundtruth_rows(outputs, rows, ids, batch_size)
                    if self._ground_truth is None else None)
    mask_rles = (self._encode_masks(outputs, rows, image_ids, sizes, keep,
                                    boxes)
                 if self.include_mask else [])

    # Everything checked: keep this batch.
    self._image_ids.update(image_ids)
    self._given_ids.update(zip(image_ids, given))
    self._images.append(np.stack(
        [ids, sizes[0][rows].astype(np.int64),
         sizes[1][rows].astype(np.int64)], axis=1))
    if len(detections[0]):
      self._detections.append(detections)
    self._mask_rles.extend(mask_rles)
    if groundtruths is not None and len(groundtruths[0]):
      self._groundtruths.append(groundtruths)

  def _encode_masks(self, outputs, rows, image_ids, sizes, keep, boxes):
    """RLEs of the kept detections' masks, in the order of their rows.

    Args:
      outputs: the update() dict.
      rows: int64 [b], batch rows of the valid images.
      image_ids: b ints, their COCO image ids.
      sizes: ([B] heights, [B] widths) of `outputs` (0 when absent).
      keep: bool [b, D], the kept detections.
      boxes: float64 [B, D, 4].
    """
    masks = np.asarray(outputs["detection_masks"])
    if (masks.ndim != 4 or masks.shape[:2] != boxes.shape[:2] or
        min(masks.shape[2:]) < 1):
      raise ValueError(
          "COCOEvaluator.update: expected detection_masks [B, D, m, m] with "
          f"[B, D] = {list(boxes.shape[:2])} as detection_boxes; got "
          f"{list(masks.shape)}.")
    rles = []
    for k, (row, image_id) in enumerate(zip(rows, image_ids)):
      image = self._ground_truth.imgs[image_id]
      height, width = int(image["height"]), int(image["width"])
      given = (int(sizes[0][row]), int(sizes[1][row]))
      if given != (0, 0) and given != (height, width):
        raise ValueError(
            f"COCOEvaluator.update: image {image_id} is {given[0]} x "
            f"{given[1]} (height, width) in the outputs but {height} x "
            f"{width} in '{self.annotation_file}'; masks are pasted at the "
            "annotation file's size, so both must describe the same image.")
      kept = np.flatnonzero(keep[k])
      rles.extend(_encode_pasted(masks[row, kept], boxes[row, kept], height,
                                 width))
    return rles

  def _groundtruth_rows(self, outputs, rows, ids, batch_size):
    """(int64 [n] image ids, float64 [n, 7] rows) of the real ground truths
    of the kept images (rows: x, y, w, h, area, class, is_crowd)."""
    boxes = np.asarray(outputs["groundtruth_boxes"], np.float64)
    classes = np.asarray(outputs["groundtruth_classes"])
    if (boxes.ndim != 3 or boxes.shape[0] != batch_size or
        boxes.shape[2] != 4 or classes.shape != boxes.shape[:2]):
      raise ValueError(
          "COCOEvaluator.update: expected groundtruth_boxes [B, K, 4] and "
          f"groundtruth_classes [B, K] with B = {batch_size}; got "
          f"{boxes.shape} and {classes.shape}.")
    is_crowd = np.asarray(outputs.get(
        "groundtruth_is_crowd", np.zeros(classes.shape))).astype(np.float64)
    box_area = ((boxes[..., 2] - boxes[..., 0]) *
                (boxes[..., 3] - boxes[..., 1]))
    area = np.asarray(outputs.get("groundtruth_area", box_area), np.float64)
    if is_crowd.shape != classes.shape or area.shape != classes.shape:
      raise ValueError(
          "COCOEvaluator.update: expected groundtruth_is_crowd and "
          f"groundtruth_area of shape [B, K] = {classes.shape}; got "
          f"{is_crowd.shape} and {area.shape}.")
    if "num_groundtruths" in outputs:
      counts = np.asarray(outputs["num_groundtruths"]).reshape([-1])
      keep = np.arange(boxes.shape[1])[None, :] < counts[rows, None]
    else:
      keep = classes[rows] > 0
    keep = np.asarray(keep, bool)
    y0, x0, y1, x1 = np.moveaxis(boxes[rows][keep], -1, 0)
    return (np.broadcast_to(ids[:, None], keep.shape)[keep],
            np.stack([x0, y0, x1 - x0, y1 - y0, area[rows][keep],
                      classes[rows][keep].astype(np.float64),
                      is_crowd[rows][keep]], axis=1))

  def _built_ground_truth(self):
    """pycocotools COCO of the ground truths given to update()."""
    images = (np.concatenate(self._images) if self._images
              else np.zeros([0, 3], np.int64))
    gt_ids, gts = _concatenated(self._groundtruths, 7)
    category_ids = sorted({int(c) for c in gts[:, 5]})
    dataset = {
        "images": [{"id": i, "height": h, "width": w,
                    "file_name": _file_name(self._given_ids.get(i, i))}
                   for i, h, w in images.tolist()],
        "categories": [{"id": c, "name": f"category_{c}"}
                       for c in category_ids],
        "annotations": [
            {"id": n + 1, "image_id": i, "bbox": g[0:4], "area": g[4],
             "category_id": int(g[5]), "iscrowd": int(g[6] > 0)}
            for n, (i, g) in enumerate(zip(gt_ids.tolist(), gts.tolist()))],
    }
    return _coco_from_dataset(dataset)

  def result(self):
    """Runs COCOeval over everything added since the last reset().

    "bbox" always, "segm" too with include_mask.

    Returns:
      dict metric name -> float (see the class docstring).

    Raises:
      ValueError: when no image was added.
    """
    if not self._image_ids:
      raise ValueError("COCOEvaluator.result: no image was added; call "
                       "update() with at least one valid image first.")
    ground_truth = self._ground_truth or self._built_ground_truth()
    detection_ids, detections = _concatenated(self._detections, 6)
    # Dicts of Python ints and floats, the values pycocotools' own numpy
    # loader would make, but with the image id never through float64.
    results = [
        {"image_id": i, "bbox": row[0:4], "score": row[4],
         "category_id": int(row[5])}
        for i, row in zip(detection_ids.tolist(), detections.tolist())]
    evaluation, self.summary = self._evaluate(ground_truth, results, "bbox")
    logging.info("COCO box evaluation of %d images, %d detections:\n%s",
                 len(self._image_ids), len(detections), self.summary)
    metrics = {name: float(evaluation.stats[i])
               for i, name in enumerate(METRIC_NAMES)}
    if self.per_category_metrics:
      metrics.update(_per_category(evaluation, ground_truth))
    if self.include_mask:
      results = [
          {"image_id": i, "category_id": int(row[5]), "score": row[4],
           "segmentation": rle}
          for i, row, rle in zip(detection_ids.tolist(), detections.tolist(),
                                 self._mask_rles)]
      evaluation, self.mask_summary = self._evaluate(ground_truth, results,
                                                     "segm")
      logging.info("COCO mask evaluation of %d images, %d detections:\n%s",
                   len(self._image_ids), len(results), self.mask_summary)
      metrics.update({name: float(evaluation.stats[i])
                      for i, name in enumerate(MASK_METRIC_NAMES)})
      if self.per_category_metrics:
        metrics.update({
            "mask_" + name: value for name, value in
            _per_category(evaluation, ground_truth).items()})
    return metrics

  def _evaluate(self, ground_truth, results, iou_type):
    """Accumulated COCOeval of one iou type and its summary table.

    Args:
      ground_truth: pycocotools COCO.
      results: detections for COCO.loadRes (a list of dicts); may be
        empty.
      iou_type: "bbox" or "segm".
    """
    from pycocotools import coco  # pylint: disable=g-import-not-at-top
    from pycocotools import cocoeval  # pylint: disable=g-import-not-at-top
    with _captured_stdout() as printed:
      if len(results):
        results = ground_truth.loadRes(results)
      else:  # loadRes cannot take an empty list.
        results = coco.COCO()
        results.dataset = {"images": list(ground_truth.dataset["images"]),
                           "categories": list(
                               ground_truth.dataset["categories"]),
                           "annotations": []}
        results.createIndex()
      evaluation = cocoeval.COCOeval(ground_truth, results, iouType=iou_type)
      evaluation.params.imgIds = sorted(self._image_ids)
      evaluation.evaluate()
      evaluation.accumulate()
      evaluation.summarize()
    # The metric table only, without pycocotools' progress lines.
    summary = "\n".join(
        line for line in printed.getvalue().splitlines()
        if line.lstrip().startswith("Average"))
    return evaluation, summary


def _to_rows(boxes, scores, classes):
  """float64 [n, 6] COCO result rows (x, y, w, h, score, class).

  Args:
    boxes: [n, 4] float64, (ymin, xmin, ymax, xmax) pixels.
    scores, classes: [n] float64.
  """
  y0, x0, y1, x1 = np.moveaxis(boxes, -1, 0)
  return np.stack([x0, y0, x1 - x0, y1 - y0, scores, classes], axis=1)


def _concatenated(parts, width):
  """(int64 [n] ids, float64 [n, width] rows) of a list of such pairs."""
  if not parts:
    return np.zeros([0], np.int64), np.zeros([0, width])
  return (np.concatenate([ids for ids, _ in parts]),
          np.concatenate([rows for _, rows in parts]))


def _file_name(source_id):
  if isinstance(source_id, bytes):
    return source_id.decode("utf-8", errors="replace")
  return str(source_id)


def _mean_valid(values):
  values = values[values > -1]
  return float(np.mean(values)) if values.size else -1.0


def _per_category(evaluation, ground_truth):
  """AP, AP50 and ARmax100 per category of an accumulated COCOeval."""
  precision = evaluation.eval["precision"]  # [IoU, recall, K, area, maxDets]
  recall = evaluation.eval["recall"]  # [IoU, K, area, maxDets]
  metrics = {}
  for k, category_id in enumerate(evaluation.params.catIds):
    name = ground_truth.cats[category_id].get("name", str(category_id))
    metrics[f"AP_ByCategory/{name}"] = _mean_valid(precision[:, :, k, 0, -1])
    metrics[f"AP50_ByCategory/{name}"] = _mean_valid(precision[0, :, k, 0, -1])
    metrics[f"ARmax100_ByCategory/{name}"] = _mean_valid(recall[:, k, 0, -1])
  return metrics
