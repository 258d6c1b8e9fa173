"""Drawing detections and captions on images (official/visualization.py)."""

import io
import itertools

import numpy as np
from PIL import Image
import pytest

from official import visualization

GREY = (90, 90, 90)


def grey_image(height=128, width=160):
  return np.full((height, width, 3), GREY, dtype=np.uint8)


def changed(before, after):
  """[height, width] bool: pixels whose colour differs."""
  return np.any(before != after, axis=-1)


def test_box_outline_has_the_class_colour_and_the_rest_is_untouched():
  image = grey_image()
  original = image.copy()
  drawn = visualization.draw_detections(
      image, [[40, 50, 100, 130]], [3], [0.87], {3: "car"}, line_width=2)

  assert drawn.shape == image.shape and drawn.dtype == np.uint8
  np.testing.assert_array_equal(image, original)  # A copy was drawn on.
  color = visualization.class_color(3)
  # ymax/xmax are exclusive: the outline's outer pixels are rows 40 and 99,
  # columns 50 and 129, two pixels thick inwards.
  for y, x in [(99, 90), (98, 90), (70, 50), (70, 51), (70, 129), (70, 128)]:
    assert tuple(drawn[y, x]) == color, (y, x)
  assert tuple(drawn[100, 90]) == GREY  # Just outside the bottom edge.
  assert tuple(drawn[70, 90]) == GREY  # Inside the box, below the label.
  assert not changed(original, drawn)[105:, :].any()  # Below the box.
  assert not changed(original, drawn)[:, 135:].any()  # Right of the label.


def test_label_sits_above_the_box_on_a_filled_background_with_text():
  image = grey_image()
  drawn = visualization.draw_detections(
      image, [[60, 20, 120, 150]], [1], [0.5], {1: "person"})
  color = visualization.class_color(1)
  label = drawn[40:60, 20:80]  # Above the box's top-left corner.
  is_background = np.all(label == color, axis=-1)
  assert is_background.mean() > 0.4  # Filled, not just text on the image.
  text = visualization._text_color(color)
  # Glyphs are anti-aliased: count pixels close to the text colour.
  is_text = np.all(np.abs(label.astype(int) - text) < 60, axis=-1)
  assert is_text.sum() > 20


def test_label_moves_inside_the_box_when_there_is_no_room_above():
  drawn = visualization.draw_detections(
      grey_image(), [[0, 30, 100, 120]], [2], [0.9], line_width=2)
  color = visualization.class_color(2)
  label = drawn[2:12, 32:70]  # Inside the box, below its top edge.
  assert np.all(label == color, axis=-1).mean() > 0.4
  assert tuple(drawn[60, 60]) == GREY
  assert not changed(grey_image(), drawn)[:, :30].any()


def test_boxes_are_clipped_to_the_image():
  image = grey_image(128, 128)
  drawn = visualization.draw_detections(
      image, [[-40, -30, 100, 200]], [5], [0.7], line_width=2)
  color = visualization.class_color(5)
  assert tuple(drawn[60, 0]) == color  # Left edge at the image border.
  assert tuple(drawn[60, 127]) == color  # Right edge clipped to the border.
  assert tuple(drawn[99, 60]) == color  # Bottom edge where the box ends.
  assert not changed(image, drawn)[100:].any()


def test_boxes_outside_the_image_or_empty_draw_nothing():
  image = grey_image(64, 64)
  drawn = visualization.draw_detections(
      image, [[70, 10, 90, 30], [10, -30, 20, -1], [10, 10, 10, 30]],
      [1, 2, 3], [0.9, 0.9, 0.9])
  np.testing.assert_array_equal(drawn, image)
  np.testing.assert_array_equal(
      visualization.draw_detections(image, np.zeros((0, 4)), [], []), image)


def test_higher_scores_are_drawn_on_top():
  image = grey_image()
  box = [[60, 30, 110, 110]]
  for order in ([0, 1], [1, 0]):
    boxes = np.array(box * 2)[order]
    class_ids = np.array([1, 2])[order]
    scores = np.array([0.9, 0.4])[order]
    drawn = visualization.draw_detections(image, boxes, class_ids, scores,
                                          {1: "a", 2: "b"})
    # The labels overlap at the box's top-left; the 0.9 one covers the other.
    assert tuple(drawn[59, 31]) == visualization.class_color(1)


def test_colours_are_distinct_per_class():
  colors = [visualization.class_color(i) for i in range(1, 91)]
  assert len(set(colors)) == 90
  for a, b in itertools.combinations(colors[:8], 2):
    assert np.abs(np.subtract(a, b)).sum() > 60, (a, b)


def test_label_text_uses_names_and_two_decimals():
  names = {1: "person"}
  assert visualization.label_text(1, 0.8749, names) == "person 0.87"
  assert visualization.label_text(7, 0.5, names) == "class 7 0.50"
  assert visualization.label_text(1, None, names) == "person"
  assert visualization.class_label(np.int32(7)) == "class 7"


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8), np.uint8), "RGB uint8 array [height, width, 3]; got "
     "uint8 [8, 8]"),
    (np.zeros((8, 8, 3), np.float32), "got float32 [8, 8, 3]"),
    (np.zeros((0, 8, 3), np.uint8), "image is empty"),
])
def test_bad_images_are_rejected(image, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[")):
    visualization.draw_detections(image, [], [], [])


@pytest.mark.parametrize("boxes, class_ids, scores, message", [
    ([[0, 0, 1]], [1], [0.5], r"boxes must be \[N, 4\].*got shape \[1, 3\]"),
    ([[0, 0, 1, 1], [0, np.nan, 2, 2]], [1, 1], [0.5, 0.5],
     r"boxes must be finite; box 1 is \[0.0, nan, 2.0, 2.0\]"),
    ([[0, 0, 1, 1]], [1, 2], [0.5], "class_ids has 2 entries for 1 boxes"),
    ([[0, 0, 1, 1]], [1], [0.5, 0.4], "scores has 2 entries for 1 boxes"),
])
def test_bad_detections_are_rejected(boxes, class_ids, scores, message):
  with pytest.raises(ValueError, match=message):
    visualization.draw_detections(grey_image(16, 16), boxes, class_ids, scores)


def test_caption_is_written_at_the_top_left():
  image = grey_image()
  drawn = visualization.draw_caption(image, "tabby cat 0.87",
                                     color=(200, 30, 30))
  assert tuple(drawn[1, 1]) == (200, 30, 30)
  is_text = np.all(drawn[:25, :120] > 200, axis=-1)
  assert is_text.sum() > 20  # White text on the dark red background.
  assert not changed(image, drawn)[40:].any()
  np.testing.assert_array_equal(image, grey_image())


def test_png_round_trip_to_a_path_and_a_file_object(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), np.uint8)
  path = tmp_path / "a.png"
  visualization.save_png(image, str(path))
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
  buffer = io.BytesIO()
  visualization.save_png(image, buffer)
  assert buffer.getvalue() == visualization.encode_png(image)
  assert buffer.getvalue().startswith(b"\x89PNG")
