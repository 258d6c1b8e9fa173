"""The one level check: a consumer of multilevel features names the levels
it reads, and a mismatch is an error that names both ranges.

Every place that takes a dict level -> feature map (heads, decoders, the
detector and segmenter assemblies) raises through `require_levels`, so the
message reads the same everywhere: what reads which levels, what provides
which, and what is missing.
"""


def describe_levels(levels):
  """"3..7" for a contiguous set of levels, else the sorted list [3, 5].

  Args:
    levels: ints or str(int)s (feature dicts are keyed str(level)).
  """
  levels = sorted(int(l) for l in levels)
  if levels and levels == list(range(levels[0], levels[-1] + 1)):
    return f"{levels[0]}..{levels[-1]}"
  return str(levels)


def require_levels(available, needed, consumer, provider, hint=""):
  """Raises ValueError unless every needed level is available.

  Args:
    available: the levels provided (a dict keyed by level, or a list).
    needed: the levels the consumer reads, same key type as `available`.
    consumer: the reader, completed by " levels X": e.g. "RetinaNet: the head
      predicts on".
    provider: the provider, completed by " levels Y": e.g. "the decoder
      outputs".
    hint: what to change, appended to the message.
  Raises:
    ValueError: "<consumer> levels 3..7 but <provider> levels 3..5 (missing
      ['6', '7'])<hint>".
  """
  missing = [l for l in needed if l not in available]
  if missing:
    raise ValueError(
        f"{consumer} levels {describe_levels(needed)} but {provider} levels "
        f"{describe_levels(available)} (missing {missing}){hint}")
