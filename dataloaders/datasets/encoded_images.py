"""Checks on encoded image bytes shared by the dataset converters.

`read_image` decodes an image file completely (a truncated or corrupt file
fails here, naming the file, not later inside a training step) and settles
two questions every converter meets on real data.

EXIF orientation (tag 0x0112 of the EXIF standard, CIPA DC-008). Cameras and
phones often store a portrait photo as landscape pixels plus a tag saying
how to turn them for display. TensorFlow's decoders (`tf.io.decode_jpeg`,
`tf.io.decode_image`) ignore the tag, Pillow's `Image.open` ignores it, and
so does pycocotools, which never reads an image: the COCO format holds only
the "width" and "height" of the annotated image and its pixel coordinates.
Which frame those are in is decided by the tool that drew them. Browsers
apply the tag by default (CSS `image-orientation: from-image`), and so do
the annotation tools built on them (CVAT, Label Studio, VIA) and readers
such as detectron2's `read_image`; a few tools and data sets annotate the
stored pixels. Hence the `exif_orientation` choice, one of EXIF_MODES:

  "apply"   (default) the annotations are in the displayed frame: the pixels
            are turned as the tag says (Pillow's `ImageOps.exif_transpose`)
            and re-encoded in their own format (JPEG at quality
            REENCODED_JPEG_QUALITY, PNG losslessly) without the tag, so
            pixels, boxes and masks share one frame and no reader can turn
            them twice. The image's size is the displayed one.
  "error"   refuse the image, naming the file and the tag.
  "ignore"  the annotations are in the stored frame: the bytes are kept as
            they are (TensorFlow ignores the tag, so pixels and annotations
            agree); the size is the stored one.

Orientation 1 (or no tag) needs nothing. Values outside 1..8 are not
orientations; like browsers and Pillow, they are read as 1.

Image size. Pillow refuses to open images above `Image.MAX_IMAGE_PIXELS`
(89,478,485 pixels; an error above twice that) as possible "decompression
bombs"; a valid 13,400 x 13,400 scan is such an image, and TensorFlow decodes
it. The converters therefore apply no Pillow limit; a limit of the user's
choice is `max_image_pixels`, checked on the header before decoding.
"""

import collections
import contextlib
import io

from absl import logging
from PIL import Image
from PIL import ImageOps

EXIF_APPLY = "apply"
EXIF_ERROR = "error"
EXIF_IGNORE = "ignore"
EXIF_MODES = (EXIF_APPLY, EXIF_ERROR, EXIF_IGNORE)

# The EXIF Orientation tag and what each value asks of a viewer.
EXIF_ORIENTATION_TAG = 0x0112
ORIENTATIONS = {
    2: "shown mirrored left-right",
    3: "shown turned 180 degrees",
    4: "shown mirrored top-bottom",
    5: "shown mirrored about the main diagonal (transposed)",
    6: "shown turned 90 degrees clockwise",
    7: "shown mirrored about the other diagonal (transversed)",
    8: "shown turned 90 degrees counter-clockwise",
}

# JPEG quality of images re-encoded after applying their orientation: high
# enough that the re-encoding changes pixels by about one grey level.
REENCODED_JPEG_QUALITY = 95

# One checked image: the bytes to store (re-encoded when the orientation was
# applied), "jpeg" or "png", its size in pixels (after the orientation when
# applied), the file's EXIF orientation (1..8) and whether it was re-encoded.
DecodedImage = collections.namedtuple(
    "DecodedImage", ["data", "image_format", "height", "width", "orientation",
                     "reencoded"])


def image_format(data):
  """'jpeg' or 'png' from the leading bytes; None for anything else."""
  if data[:3] == b"\xff\xd8\xff":
    return "jpeg"
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "png"
  return None


def check_exif_mode(exif_orientation):
  """Raises ValueError unless `exif_orientation` is one of EXIF_MODES."""
  if exif_orientation not in EXIF_MODES:
    raise ValueError(f"exif_orientation must be one of {list(EXIF_MODES)}, "
                     f"got {exif_orientation!r}.")


def check_max_image_pixels(max_image_pixels):
  """Raises ValueError unless `max_image_pixels` is None or an int >= 1."""
  if max_image_pixels is not None and (
      isinstance(max_image_pixels, bool) or
      not isinstance(max_image_pixels, int) or max_image_pixels < 1):
    raise ValueError("max_image_pixels must be None (no limit) or an int "
                     f">= 1, got {max_image_pixels!r}.")


@contextlib.contextmanager
def _no_pillow_pixel_limit():
  """Lifts Pillow's decompression-bomb limit (a module global) for a block."""
  saved = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = None
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = saved


def _orientation(image, where):
  """EXIF orientation 1..8 of an opened Pillow image (1 when absent)."""
  try:
    value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
  except Exception as e:  # pylint: disable=broad-except
    # A damaged EXIF block does not stop TensorFlow from decoding the
    # pixels, so it does not stop the conversion either.
    logging.warning("%s: unreadable EXIF data (%s); its orientation is "
                    "taken as 1 (as stored).", where, e)
    return 1
  if isinstance(value, int) and 1 <= value <= 8:
    return value
  return 1


def _capitalised(where):
  return where[:1].upper() + where[1:]


def read_image(data, where, exif_orientation=EXIF_APPLY,
               max_image_pixels=None):
  """Checks one encoded image and settles its orientation (module docstring).

  Args:
    data: bytes, the file's content.
    where: str, what the image is, for errors (e.g. "image file 'a/b.jpg'
      (image id 7)").
    exif_orientation: one of EXIF_MODES.
    max_image_pixels: None (no limit) or int, the most pixels (height x
      width) accepted.

  Returns:
    DecodedImage.

  Raises:
    ValueError: the data is neither JPEG nor PNG, cannot be decoded
      completely, has more than max_image_pixels pixels, or (with
      exif_orientation "error") has an EXIF orientation other than 1; the
      message starts with `where`.
  """
  check_exif_mode(exif_orientation)
  check_max_image_pixels(max_image_pixels)
  fmt = image_format(data)
  if fmt is None:
    raise ValueError(f"{_capitalised(where)} is neither JPEG nor PNG (it "
                     f"starts with {bytes(data[:8])!r}); expected a JPEG or "
                     "PNG image.")
  transposed = None
  try:
    with _no_pillow_pixel_limit(), Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if max_image_pixels is not None and width * height > max_image_pixels:
        raise _TooLarge(width, height)
      image.load()  # Decodes everything: truncated files fail here.
      orientation = _orientation(image, where)
      if orientation != 1 and exif_orientation == EXIF_APPLY:
        transposed = ImageOps.exif_transpose(image)
  except _TooLarge as e:
    raise ValueError(
        f"{_capitalised(where)} is {e.height}x{e.width} (height x width), "
        f"{e.height * e.width:,} pixels, more than max_image_pixels="
        f"{max_image_pixels:,}; raise the limit (--max_image_pixels) or "
        "leave it unset for none.") from None
  except Exception as e:  # PIL raises several types for bad data.
    raise ValueError(f"Cannot decode {where}: {e}; expected a complete JPEG "
                     "or PNG image.") from e
  if orientation == 1 or exif_orientation == EXIF_IGNORE:
    return DecodedImage(data, fmt, height, width, orientation, False)
  if exif_orientation == EXIF_ERROR:
    raise ValueError(
        f"{_capitalised(where)} has EXIF orientation {orientation}: its "
        f"stored pixels ({height}x{width}, height x width) are "
        f"{ORIENTATIONS[orientation]} by viewers and annotation tools. "
        "Choose the frame of its annotations: exif_orientation='apply' "
        "(--exif_orientation=apply) when they were drawn on the displayed "
        "image, as most tools do, or 'ignore' when on the stored pixels.")
  buffer = io.BytesIO()
  # The colour profile is kept; the EXIF block is not written again, so no
  # reader turns the new pixels a second time.
  extra = {}
  if transposed.info.get("icc_profile"):
    extra["icc_profile"] = transposed.info["icc_profile"]
  if fmt == "jpeg":
    transposed.save(buffer, format="JPEG", quality=REENCODED_JPEG_QUALITY,
                    **extra)
  else:
    transposed.save(buffer, format="PNG", **extra)
  width, height = transposed.size
  return DecodedImage(buffer.getvalue(), fmt, height, width, orientation,
                      True)


class _TooLarge(Exception):
  """An image above max_image_pixels (caught inside `read_image`)."""

  def __init__(self, width, height):
    super().__init__(f"{width}x{height}")
    self.width = width
    self.height = height


@contextlib.contextmanager
def opened_without_pixel_limit(data):
  """Pillow image of encoded bytes, opened and loaded with no pixel limit."""
  with _no_pillow_pixel_limit(), Image.open(io.BytesIO(data)) as image:
    yield image
