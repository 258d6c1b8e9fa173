"""Everything gin can name, registered by importing this module.

The entry points (official/train.py, official/export.py, ...) import it
before parsing gin files. It imports the components, each of which registers
itself where it is defined:

- backbones and decoders: `@register_backbone` / `@register_decoder` in
  modeling/backbones/*.py and modeling/decoders/*.py, made gin-configurable
  from their own signatures in official/core/registry.py (`@spinenet`,
  `@eff_spinenet`, `@fpn`, `@identity_decoder`, ...);
- tasks: `@registry.register_task` in official/tasks/*.py (`@RetinaNetTask()`);
- the trainer, optimizers and schedules: `@gin.configurable` in official/core/.

Nothing imports this module back (tests/test_import_graph.py), and it adds
nothing of its own: the functions below are those of official/core/registry.py,
named here so that `registry.experiment()` reads as before.
"""

# pylint: disable=unused-import
from official.core import trainer
from official.core.registry import build_backbone
from official.core.registry import experiment
from official.core.registry import multilevel_features
from official.core.registry import norm_activation
from official.core.registry import regularization
from official.core.registry import BACKBONES
from official.core.registry import DECODERS
from official.core.registry import TASKS
from official.tasks import classification
from official.tasks import maskrcnn
from official.tasks import neck_classification
from official.tasks import retinanet
from official.tasks import segmentation
