"""COCO box and mask AP of detections, accumulated on the host (pycocotools).

The evaluator follows `official.core.task.Evaluator`: `update` takes the
numpy outputs of one global evaluation batch, `result` runs pycocotools'
COCOeval and returns the standard COCO metrics as floats. Between the two,
only compact arrays of the kept detections (and, without an annotation
file, of the ground truths) are held: 7 float64 per detection, 8 per
ground-truth object, 3 per image; never images or feature maps. With
masks, each detection's mask is pasted into its image and run-length
encoded (compressed COCO RLE) within `update`, so only the RLE strings are
kept, never a full-size mask.
"""

import contextlib
import io
import json

import numpy as np
import tensorflow as tf
from absl import logging

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

# Ids given to source ids that are not integers (ground truths from update()
# only); far above COCO's ids and exact in float64.
_STRING_ID_BASE = 1 << 40


@contextlib.contextmanager
def _captured_stdout():
  """Captures pycocotools' prints; yields the buffer."""
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    yield buffer


def _load_coco(annotation_file):
  """pycocotools COCO of a JSON read through tf.io.gfile (gs:// allowed)."""
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
  return _coco_from_dataset(dataset)


def _check_segmentations(ground_truth, annotation_file):
  """Raises ValueError unless every annotation has a segmentation."""
  for annotation in ground_truth.dataset["annotations"]:
    if not annotation.get("segmentation"):
      raise ValueError(
          f"COCOEvaluator(include_mask=True): annotation id "
          f"{annotation.get('id')} (image {annotation.get('image_id')}) of "
          f"'{annotation_file}' has no 'segmentation'; mask AP needs a "
          "polygon list or an RLE for every annotation (a COCO instances "
          "JSON, not a boxes-only one).")
  for image in ground_truth.dataset["images"]:
    if "height" not in image or "width" not in image:
      raise ValueError(
          f"COCOEvaluator(include_mask=True): image {image.get('id')} of "
          f"'{annotation_file}' has no height/width; masks are pasted at "
          "the image size given there.")


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

    "source_id"           [B] COCO image ids: int, or str/bytes of an int
                          (b"397133", as `decode_detection_example` gives).
                          Without an annotation file any string works.
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
    self._ground_truth = (_load_coco(annotation_file)
                          if annotation_file else None)
    if self.include_mask:
      _check_segmentations(self._ground_truth, annotation_file)
    self.summary = None
    self.mask_summary = None
    self.reset()

  def reset(self):
    """Forgets all images, detections and ground truths seen so far."""
    # float64 [n, 7] each: image id, x, y, w, h, score, class.
    self._detections = []
    # float64 [n, 8] each: image id, x, y, w, h, area, class, is_crowd.
    self._groundtruths = []
    # int64 [b, 3] each: image id, height, width.
    self._images = []
    # Compressed RLE dicts, one per row of self._detections (include_mask).
    self._mask_rles = []
    self._image_ids = set()
    self._string_ids = {}

  def _image_id(self, source_id):
    """int COCO image id of one source id."""
    if isinstance(source_id, bytes):
      source_id = source_id.decode("utf-8", errors="replace")
    if isinstance(source_id, (int, np.integer)):
      return int(source_id)
    text = str(source_id).strip()
    try:
      return int(text)
    except ValueError:
      if self._ground_truth is not None:
        raise ValueError(
            f"COCOEvaluator: source_id {source_id!r} is not an integer; with "
            f"annotation_file '{self.annotation_file}' source ids must be "
            "the COCO image ids.") from None
      if text not in self._string_ids:
        self._string_ids[text] = _STRING_ID_BASE + len(self._string_ids)
      return self._string_ids[text]

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
    image_ids = [self._image_id(source_ids[i]) for i in rows]
    in_batch = set()
    for image_id in image_ids:
      if image_id in self._image_ids or image_id in in_batch:
        raise ValueError(
            f"COCOEvaluator.update: image id {image_id} was already added "
            "since the last reset(); each image must be evaluated once (is "
            "the evaluation data repeated, or its padding not marked with "
            "'valid'?).")
      in_batch.add(image_id)
      if (self._ground_truth is not None and
          image_id not in self._ground_truth.imgs):
        raise ValueError(
            f"COCOEvaluator.update: image id {image_id} is not in the "
            f"annotation file '{self.annotation_file}'; expected the ids of "
            "its images (source_id of the records of the same split).")

    rows = np.array(rows, np.int64)
    ids = np.array(image_ids, np.float64)
    sizes = [np.asarray(outputs.get(k, np.zeros([batch_size]))).reshape([-1])
             for k in ("height", "width")]
    num_detections = np.asarray(num_detections).reshape([-1])
    keep = ((np.arange(boxes.shape[1])[None, :] < num_detections[rows, None])
            & (scores[rows] > 0))
    detections = _to_rows(
        np.broadcast_to(ids[:, None], keep.shape)[keep], boxes[rows][keep],
        scores[rows][keep], classes[rows][keep].astype(np.float64))
    groundtruths = (self._groundtruth_rows(outputs, rows, ids, batch_size)
                    if self._ground_truth is None else None)
    mask_rles = (self._encode_masks(outputs, rows, image_ids, sizes, keep,
                                    boxes)
                 if self.include_mask else [])

    # Everything checked: keep this batch.
    self._image_ids.update(image_ids)
    self._images.append(np.stack(
        [ids.astype(np.int64), sizes[0][rows].astype(np.int64),
         sizes[1][rows].astype(np.int64)], axis=1))
    if len(detections):
      self._detections.append(detections)
    self._mask_rles.extend(mask_rles)
    if groundtruths is not None and len(groundtruths):
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
    """float64 [n, 8] rows of the real ground truths of the kept images."""
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
    return np.stack([
        np.broadcast_to(ids[:, None], keep.shape)[keep], x0, y0, x1 - x0,
        y1 - y0, area[rows][keep], classes[rows][keep].astype(np.float64),
        is_crowd[rows][keep]], axis=1)

  def _built_ground_truth(self):
    """pycocotools COCO of the ground truths given to update()."""
    images = (np.concatenate(self._images) if self._images
              else np.zeros([0, 3], np.int64))
    gts = (np.concatenate(self._groundtruths) if self._groundtruths
           else np.zeros([0, 8]))
    category_ids = sorted({int(c) for c in gts[:, 6]})
    names = {v: k for k, v in self._string_ids.items()}
    dataset = {
        "images": [{"id": int(i), "height": int(h), "width": int(w),
                    "file_name": names.get(int(i), str(int(i)))}
                   for i, h, w in images],
        "categories": [{"id": c, "name": f"category_{c}"}
                       for c in category_ids],
        "annotations": [
            {"id": n + 1, "image_id": int(g[0]),
             "bbox": [float(v) for v in g[1:5]], "area": float(g[5]),
             "category_id": int(g[6]), "iscrowd": int(g[7] > 0)}
            for n, g in enumerate(gts)],
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
    detections = (np.concatenate(self._detections) if self._detections
                  else np.zeros([0, 7]))
    results = detections if len(detections) else []
    evaluation, self.summary = self._evaluate(ground_truth, results, "bbox")
    logging.info("COCO box evaluation of %d images, %d detections:\n%s",
                 len(self._image_ids), len(detections), self.summary)
    metrics = {name: float(evaluation.stats[i])
               for i, name in enumerate(METRIC_NAMES)}
    if self.per_category_metrics:
      metrics.update(_per_category(evaluation, ground_truth))
    if self.include_mask:
      results = [
          {"image_id": int(row[0]), "category_id": int(row[6]),
           "score": float(row[5]), "segmentation": rle}
          for row, rle in zip(detections, self._mask_rles)]
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
      results: detections for COCO.loadRes (float64 [n, 7] rows or a list
        of dicts); may be empty.
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


def _to_rows(image_ids, boxes, scores, classes):
  """float64 [n, 7] COCO result rows (image id, x, y, w, h, score, class).

  Args:
    image_ids, scores, classes: [n] float64.
    boxes: [n, 4] float64, (ymin, xmin, ymax, xmax) pixels.
  """
  y0, x0, y1, x1 = np.moveaxis(boxes, -1, 0)
  return np.stack([image_ids, x0, y0, x1 - x0, y1 - y0, scores, classes],
                  axis=1)


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
