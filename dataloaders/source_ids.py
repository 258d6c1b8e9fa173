"""One int64 image id per record source id, in the pipeline and on the host.

Detection records carry `image/source_id` as bytes: str(COCO image id) for
the records of `dataloaders.datasets.coco_records` (b"397133"), but any
string for other COCO-format sets ("img_000001"). Batches travel as tensors
without strings (TPUs take none), so the input pipeline turns each source id
into an int64 with `source_id_to_int64`; the COCO evaluator turns the image
ids of its annotation file into int64s with `source_ids_to_int64`, the same
function, so that both sides agree on every id, numeric or not.

  b"397133"        -> 397133   (a decimal integer of at most 18 digits,
                                optionally signed and padded with spaces)
  b""              -> -1       (the padding id of evaluation batches)
  anything else    -> a stable hash in [2^62, 2^63)

The value is carried as int64 from end to end; it must never pass through
float64, whose 53-bit mantissa cannot hold a hashed id (two ids that differ
in the low bits become one number).
"""

import numpy as np
import tensorflow as tf

# Source ids that are not decimal integers are hashed into [2^62, 2^63), far
# from any image id of COCO (at most 6 digits).
HASHED_ID_OFFSET = 1 << 62
_NUMERIC_ID = r"\s*[+-]?[0-9]{1,18}\s*"  # 18 digits always fit in int64.


def source_id_to_int64(source_id):
  """The int64 image id of source ids (element-wise; module docstring).

  Args:
    source_id: tf.string tensor of any shape, or an integer tensor (returned
      as int64).

  Returns:
    int64 tensor of the same shape.
  """
  source_id = tf.convert_to_tensor(source_id)
  if source_id.dtype != tf.string:
    return tf.cast(source_id, tf.int64)
  numeric = tf.strings.regex_full_match(source_id, _NUMERIC_ID)
  # to_number fails on text, so non-numeric entries are parsed as "0" and
  # their value taken from the hash instead.
  number = tf.strings.to_number(
      tf.where(numeric, tf.strings.strip(source_id), "0"), tf.int64)
  hashed = (tf.strings.to_hash_bucket_fast(source_id, HASHED_ID_OFFSET) +
            HASHED_ID_OFFSET)
  return tf.where(tf.equal(tf.strings.length(source_id), 0),
                  tf.constant(-1, tf.int64),
                  tf.where(numeric, number, hashed))


def source_ids_to_int64(source_ids):
  """Host-side `source_id_to_int64` of a list of str / bytes source ids.

  Args:
    source_ids: sequence of str or bytes (str is UTF-8 encoded, as the
      converters write it).

  Returns:
    int64 numpy array [len(source_ids)].
  """
  values = [s.encode("utf-8") if isinstance(s, str) else bytes(s)
            for s in source_ids]
  if not values:
    return np.zeros([0], np.int64)
  return source_id_to_int64(tf.constant(values, tf.string)).numpy()
