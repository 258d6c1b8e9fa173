"""Draws detections and classification results on images (numpy + Pillow).

No TensorFlow here: the functions take and return numpy arrays, so they serve
notebooks and scripts as well as `python -m official.predict`. Boxes are
(ymin, xmin, ymax, xmax) in pixels of the image they are drawn on, as the
exported detection models return them.
"""

import colorsys
import functools
import io
import math

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def class_color(class_id):
  """A colour for a class id, (r, g, b) ints in [0, 255].

  Hues step by the golden ratio, so consecutive ids (and most small sets of
  ids) land far apart on the colour wheel; brightness alternates in three
  levels so ids whose hues come close still differ.
  """
  class_id = int(class_id)
  hue = (class_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
  value = (1.0, 0.8, 0.6)[class_id % 3]
  red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
  return (round(red * 255), round(green * 255), round(blue * 255))


def class_label(class_id, class_names=None):
  """The name of a class id: class_names[id], or "class <id>" if unnamed."""
  class_id = int(class_id)
  if class_names and class_id in class_names:
    return str(class_names[class_id])
  return f"class {class_id}"


def label_text(class_id, score=None, class_names=None):
  """The label drawn on a box: "person 0.87" (score to two decimals)."""
  name = class_label(class_id, class_names)
  return name if score is None else f"{name} {score:.2f}"


def _text_color(background):
  """Black or white, whichever contrasts more with `background` (WCAG 2)."""
  linear = [c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055)**2.4
            for c in background]
  luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
  contrast_with_black = (luminance + 0.05) / 0.05
  contrast_with_white = 1.05 / (luminance + 0.05)
  return ((0, 0, 0) if contrast_with_black > contrast_with_white
          else (255, 255, 255))


@functools.lru_cache(maxsize=16)
def _font(size):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one fixed-size bitmap font.
    return ImageFont.load_default()


def _default_line_width(height, width):
  return max(2, round(max(height, width) / 250))


def _default_font_size(height, width):
  return int(np.clip(round(max(height, width) / 40), 11, 32))


def _check_image(image):
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be an RGB uint8 array [height, width, 3]; "
                     f"got {image.dtype} {list(image.shape)}.")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f"image is empty: shape {list(image.shape)}.")
  return image


def _draw_label(draw, text, left, top, color, font, image_width,
                image_height):
  """Draws `text` on a filled rectangle of `color` at or near (left, top).

  The label sits above `top` when there is room, otherwise just below it
  (inside the box), and is shifted left to stay inside the image.
  """
  text_left, _, text_right, _ = font.getbbox(text)
  # Heights from a fixed string keep every label of one size equally tall.
  _, line_top, _, line_bottom = font.getbbox("Ag|")
  pad = max(1, (line_bottom - line_top) // 6)
  label_width = text_right - text_left + 2 * pad
  label_height = line_bottom - line_top + 2 * pad
  label_top = top - label_height
  if label_top < 0:
    label_top = min(top, max(0, image_height - label_height))
  label_left = min(left, max(0, image_width - label_width))
  draw.rectangle([label_left, label_top, label_left + label_width - 1,
                  label_top + label_height - 1], fill=color)
  draw.text((label_left + pad - text_left, label_top + pad - line_top), text,
            fill=_text_color(color), font=font)


def draw_detections(image, boxes, class_ids, scores=None, class_names=None,
                    line_width=None, font_size=None):
  """Draws labelled boxes on a copy of an image.

  Each box gets its class colour (class_color), and a label "person 0.87"
  (name and score, two decimals) on a filled background of the same colour,
  with black or white text, whichever reads better. Boxes are clipped to the
  image; a box entirely outside it is not drawn. Labels are drawn over all
  boxes, those of higher scores last, so they stay on top.

  Args:
    image: [height, width, 3] uint8 RGB.
    boxes: [N, 4] (ymin, xmin, ymax, xmax) in pixels of `image`, any float or
      int type; ymax/xmax are exclusive edges (a box [0, 0, 10, 10] covers
      pixels 0..9).
    class_ids: [N] integer class ids.
    scores: [N] floats in [0, 1], or None for labels without scores.
    class_names: dict int class id -> name; ids not in it are "class <id>".
    line_width: box outline width in pixels (default: from the image size,
      at least 2).
    font_size: label text height in pixels (default: from the image size,
      11 to 32).
  Returns:
    A new [height, width, 3] uint8 RGB array; `image` is left unchanged.
  Raises:
    ValueError: for an image that is not [height, width, 3] uint8, boxes that
      are not [N, 4] or not finite, or class_ids/scores whose length is not N.
  """
  image = _check_image(image)
  height, width = image.shape[:2]
  boxes = np.asarray(boxes, dtype=np.float64)
  if boxes.size == 0:
    boxes = boxes.reshape((0, 4))
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"boxes must be [N, 4] (ymin, xmin, ymax, xmax); got "
                     f"shape {list(boxes.shape)}.")
  not_finite = np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))
  if not_finite.size:
    raise ValueError(f"boxes must be finite; box {not_finite[0]} is "
                     f"{boxes[not_finite[0]].tolist()}.")
  class_ids = np.asarray(class_ids).reshape(-1)
  if class_ids.shape[0] != boxes.shape[0]:
    raise ValueError(f"class_ids has {class_ids.shape[0]} entries for "
                     f"{boxes.shape[0]} boxes; expected one per box.")
  if scores is not None:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != boxes.shape[0]:
      raise ValueError(f"scores has {scores.shape[0]} entries for "
                       f"{boxes.shape[0]} boxes; expected one per box.")
  line_width = line_width or _default_line_width(height, width)
  font = _font(font_size or _default_font_size(height, width))

  canvas = Image.fromarray(image.copy())
  draw = ImageDraw.Draw(canvas)
  order = (np.argsort(scores, kind="stable") if scores is not None
           else np.arange(boxes.shape[0]))
  labels = []
  for i in order:
    ymin, xmin, ymax, xmax = boxes[i]
    ymin, ymax = max(ymin, 0.0), min(ymax, float(height))
    xmin, xmax = max(xmin, 0.0), min(xmax, float(width))
    if ymax <= ymin or xmax <= xmin:
      continue  # Empty, or nothing of it inside the image.
    left, top = int(math.floor(xmin)), int(math.floor(ymin))
    right = max(left, int(math.ceil(xmax)) - 1)
    bottom = max(top, int(math.ceil(ymax)) - 1)
    color = class_color(class_ids[i])
    # Pillow draws the outline inwards from the rectangle's edge, so a box
    # clipped to the image keeps its whole outline visible.
    draw.rectangle([left, top, right, bottom], outline=color,
                   width=line_width)
    text = label_text(class_ids[i], None if scores is None else scores[i],
                      class_names)
    labels.append((text, left, top, color))
  # Labels after all boxes, so no box outline crosses a label's text.
  for text, left, top, color in labels:
    _draw_label(draw, text, left, top, color, font, width, height)
  return np.asarray(canvas, dtype=np.uint8)


def draw_caption(image, text, color=(0, 0, 0), font_size=None):
  """Writes `text` at the top-left corner of a copy of an image.

  Used for classification results ("tabby cat 0.87"). The text sits on a
  filled background of `color` so it reads on any image.

  Args:
    image: [height, width, 3] uint8 RGB.
    text: one line of text.
    color: background (r, g, b); the text is black or white to contrast.
    font_size: text height in pixels (default: from the image size).
  Returns:
    A new [height, width, 3] uint8 RGB array.
  """
  image = _check_image(image)
  height, width = image.shape[:2]
  canvas = Image.fromarray(image.copy())
  font = _font(font_size or _default_font_size(height, width))
  _draw_label(ImageDraw.Draw(canvas), text, 0, 0, tuple(color), font, width,
              height)
  return np.asarray(canvas, dtype=np.uint8)


def encode_png(image):
  """PNG bytes of an RGB uint8 image [height, width, 3]."""
  buffer = io.BytesIO()
  Image.fromarray(_check_image(image)).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(image, file):
  """Writes an RGB uint8 image [height, width, 3] as PNG.

  Args:
    image: [height, width, 3] uint8 RGB.
    file: a local path, or a binary file object open for writing (e.g. a
      tf.io.gfile.GFile, for gs:// paths).
  """
  data = encode_png(image)
  if hasattr(file, "write"):
    file.write(data)
  else:
    with open(file, "wb") as f:
      f.write(data)
