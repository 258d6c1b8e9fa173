"""gin bindings of the registered networks, the task decorator, the shared options.

The networks register themselves in modeling/ (plain dicts, no gin:
modeling/backbones/registry.py, modeling/decoders/registry.py); this module
makes each registered builder gin-configurable under its registered name,
from the builder's own signature, so its defaults and its docstring live
once, next to the network:

    spinenet.model_id = '96'                # modeling/backbones/spinenet.py
    multilevel_features.backbone = @spinenet
    RetinaNetTask.decoder = @fpn            # modeling/decoders/fpn.py

The options every network shares (modeling.backbones.registry.SHARED_OPTIONS:
activation, batch norm, stochastic depth, DropBlock, input shape) are
denylisted there and bound once, in `norm_activation` and `regularization`,
so that a protocol file sets them for any backbone:

    norm_activation.activation = 'swish'
    regularization.init_stochastic_depth_rate = 0.2

Tasks register with `@register_task`. This module imports no task: the tasks
import it (official/registry.py imports them all, for gin).
"""

import inspect
import os

import gin

from modeling.backbones import registry as backbone_registry
from modeling.decoders import registry as decoder_registry

# `include 'configs/...'` lines resolve from the repository root, from any cwd.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
gin.add_config_file_search_path(REPO_ROOT)

SHARED_OPTIONS = backbone_registry.SHARED_OPTIONS

# gin name of a registered decoder whose registered name is too generic to
# stand alone in a gin file ("@identity" would not say what it is).
DECODER_GIN_NAMES = {"identity": "identity_decoder"}

TASKS = {}


@gin.configurable
def norm_activation(activation="relu", use_sync_bn=True, norm_momentum=0.99,
                    norm_epsilon=1e-3):
  """Activation and batch-norm options shared by backbone, decoder and heads.

  Returns:
    dict with exactly these four keys, passed to every network builder.
  """
  return dict(activation=activation, use_sync_bn=use_sync_bn,
              norm_momentum=norm_momentum, norm_epsilon=norm_epsilon)


@gin.configurable
def regularization(init_stochastic_depth_rate=0.0, dropblock_keep_prob=None,
                   dropblock_size=3):
  """Stochastic depth and DropBlock options for the backbone (protocols A, C).

  Returns:
    dict with exactly these three keys, passed to every backbone builder.
  """
  return dict(init_stochastic_depth_rate=init_stochastic_depth_rate,
              dropblock_keep_prob=dropblock_keep_prob,
              dropblock_size=dropblock_size)


def _gin_configurable(builder, name, supplied):
  """`builder` made gin-configurable as `name`, `supplied` args denylisted."""
  parameters = inspect.signature(builder).parameters
  return gin.external_configurable(
      builder, name, denylist=[arg for arg in supplied if arg in parameters])


# One gin configurable per registered network, from its own signature: a
# binding of an argument the builder lacks fails at parse time, and a binding
# of a shared option says it is denylisted (bind it in norm_activation or
# regularization instead).
BACKBONES = {
    name: _gin_configurable(builder, name, SHARED_OPTIONS)
    for name, builder in backbone_registry.BACKBONES.items()}
DECODERS = {
    name: _gin_configurable(builder, DECODER_GIN_NAMES.get(name, name),
                            ("input_specs",) + SHARED_OPTIONS)
    for name, builder in decoder_registry.DECODERS.items()}


def _accepted(builder, options):
  """The entries of `options` that `builder` has a parameter for."""
  parameters = inspect.signature(builder).parameters
  return {k: v for k, v in options.items() if k in parameters}


def build_backbone(backbone_fn, input_shape):
  """Calls a gin-bound backbone builder with the shared options.

  Args:
    backbone_fn: a configurable of BACKBONES (`@spinenet` in gin).
    input_shape: (H, W, 3).
  Returns:
    The backbone keras.Model (modeling/backbones/registry.py contract).
  """
  return backbone_fn(input_shape=tuple(input_shape), **norm_activation(),
                     **regularization())


@gin.configurable
def multilevel_features(input_shape, backbone=gin.REQUIRED, decoder=None):
  """Backbone and decoder for a dense-prediction model.

  Args:
    input_shape: (H, W, 3).
    backbone: a configurable of BACKBONES (`@spinenet`, `@resnet`, ...).
    decoder: a configurable of DECODERS (`@fpn`, `@identity_decoder`) or
      None for the identity.
  Returns:
    (backbone, decoder): decoder maps the backbone's output dict to dict
    str(level) -> features (the identity decoder when `decoder` is None).
  """
  backbone_model = build_backbone(backbone, input_shape)
  decoder_fn = decoder or DECODERS["identity"]
  # A decoder takes the shared options it has a parameter for (FPN's batch
  # norm and activation; the identity none).
  return backbone_model, decoder_fn(
      input_specs=backbone_model.output_specs,
      **_accepted(decoder_fn, norm_activation()))


def register_task(task_cls):
  """Class decorator: makes a task gin-configurable under its class name.

  `experiment.task = @RetinaNetTask()` then names it, and TASKS lists it.

  Raises:
    ValueError: a task of the same name is already registered.
  """
  name = task_cls.__name__
  if name in TASKS:
    raise ValueError(f"Task {name!r} is registered twice: "
                     f"{TASKS[name].__module__} and {task_cls.__module__}.")
  TASKS[name] = gin.configurable(task_cls)
  return TASKS[name]


@gin.configurable
def experiment(task=gin.REQUIRED):
  """The experiment's task: every experiment file binds `experiment.task`."""
  return task
