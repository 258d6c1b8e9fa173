"""Checks on encoded image bytes shared by the dataset converters."""

import io

from PIL import Image


def image_format(data):
  """'jpeg' or 'png' from the leading bytes; None for anything else."""
  if data[:3] == b"\xff\xd8\xff":
    return "jpeg"
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "png"
  return None


def decoded_size(data, where):
  """(height, width) of an encoded image, after checking it decodes fully.

  Args:
    data: the encoded bytes.
    where: what the image is, for the error (e.g. "image file 'a/b.jpg'").
  Raises:
    ValueError: "Cannot decode <where>: ..." for truncated or corrupt data.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      image.load()  # Decodes everything: truncated files fail here.
  except Exception as e:  # PIL raises several types for bad data.
    raise ValueError(f"Cannot decode {where}: {e}; expected a complete JPEG "
                     "or PNG image.") from e
  return height, width
