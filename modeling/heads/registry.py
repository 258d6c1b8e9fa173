"""Head registry: name -> head layer class, filled by `@register_head`.

Contract: a head is a keras.layers.Layer (gin-free, with get_config) whose
constructor takes its sizes and the batch-norm/activation options of
modeling.backbones.registry.SHARED_OPTIONS it uses, and which is called in
one of two ways:

- a multilevel head (retinanet, rpn, segmentation, classification) takes the
  dict str(level) -> [batch, H / 2^level, W / 2^level, C] that a backbone or
  decoder returns, reads the levels it names, and raises ValueError naming
  both level ranges (modeling/models/features.py) when one is missing;
- an ROI head (fast_rcnn, mask) takes ROI features [batch, num_rois, S, S, C]
  from ROI Align (modeling/ops/roi_align.py).

What each head returns is written at its class. The models that assemble
them are in modeling/models/. The package imports every head module
(modeling/heads/__init__.py), so `HEADS` lists every head.
"""

from modeling.registry import register

HEADS = {}


def register_head(name):
  """Registers a head layer class under `name`.

  Raises:
    ValueError: `name` is already registered.
  """
  # Keras layers forward **kwargs (name, dtype) to keras.layers.Layer, so the
  # explicit-signature rule of the builders does not apply to them.
  return register(HEADS, "head", name, explicit=False)
