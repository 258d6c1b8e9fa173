"""Registration: builders register where they are defined, gin names them from there.

modeling/registry.py (the decorator), modeling/*/registry.py (the dicts) and
official/core/registry.py (gin configurables made from the registered
builders' own signatures).
"""

import inspect

import gin
import pytest

from modeling.backbones.registry import BACKBONES
from modeling.backbones.registry import SHARED_OPTIONS
from modeling.backbones.registry import register_backbone
from modeling.decoders.registry import DECODERS
from modeling.decoders.registry import register_decoder
from modeling.heads.registry import HEADS
from official import registry  # pylint: disable=unused-import  (gin names)
from official.core import registry as core_registry


def test_each_package_registers_its_builders():
  assert sorted(BACKBONES) == ["eff_spinenet", "resnet", "spinenet",
                               "spinenet_mbconv", "spnet"]
  assert sorted(DECODERS) == ["auto_fpn", "fpn", "identity"]
  assert sorted(HEADS) == ["auto_head", "classification", "fast_rcnn", "mask",
                           "retinanet", "rpn", "segmentation"]
  for name, builder in BACKBONES.items():
    assert builder.__module__ == f"modeling.backbones.{name}"


def test_a_builder_with_kwargs_is_refused():
  def loose(input_shape, activation, use_sync_bn, norm_momentum, norm_epsilon,
            init_stochastic_depth_rate, dropblock_keep_prob, dropblock_size,
            **overrides):
    del overrides
  with pytest.raises(TypeError, match=r"'loose_net'.*\['overrides'\]"):
    register_backbone("loose_net")(loose)
  assert "loose_net" not in BACKBONES


def test_a_backbone_lacking_a_shared_option_is_refused():
  def narrow(input_shape, model_id=1):
    del input_shape, model_id
  with pytest.raises(TypeError, match="lacks the arguments") as error:
    register_backbone("narrow_net")(narrow)
  assert str(list(SHARED_OPTIONS[1:])) in str(error.value)
  assert "narrow_net" not in BACKBONES


def test_a_name_registered_twice_is_refused():
  def fpn(input_specs, min_level=3, max_level=7):
    del input_specs, min_level, max_level
  with pytest.raises(ValueError, match="'fpn' is registered twice: "
                     "modeling.decoders.fpn.fpn and"):
    register_decoder("fpn")(fpn)
  assert DECODERS["fpn"].__module__ == "modeling.decoders.fpn"


def test_gin_configurables_have_the_builders_own_signatures():
  # One signature, one set of defaults: nothing restated in official/.
  for name, builder in BACKBONES.items():
    assert (inspect.signature(core_registry.BACKBONES[name]) ==
            inspect.signature(builder)), name
  for name, builder in DECODERS.items():
    assert (inspect.signature(core_registry.DECODERS[name]) ==
            inspect.signature(builder)), name


@pytest.mark.parametrize("binding,message", [
    ("spinenet.filter_scale = 0.5",
     "'spinenet' doesn't have a parameter named 'filter_scale'"),
    ("eff_spinenet.block_filter = [8]",
     "'eff_spinenet' doesn't have a parameter named 'block_filter'"),
    ("resnet.use_sync_bn = False", "denylisted kwarg 'use_sync_bn'"),
    ("fpn.activation = 'swish'", "denylisted kwarg 'activation'"),
    ("identity_decoder.input_specs = {}", "denylisted kwarg 'input_specs'"),
])
def test_gin_rejects_misspelt_and_shared_bindings(no_gin_bindings, binding,
                                                  message):
  del no_gin_bindings
  with pytest.raises(ValueError) as error:
    gin.parse_config(binding)
  assert message in str(error.value)


def test_shared_options_come_from_norm_activation(no_gin_bindings):
  del no_gin_bindings
  gin.parse_config("""
      norm_activation.activation = 'swish'
      norm_activation.use_sync_bn = False
      regularization.init_stochastic_depth_rate = 0.1
      spinenet.model_id = '49S'
      spinenet.filter_size_scale = 0.125
      spinenet.resample_alpha = 0.25
      multilevel_features.backbone = @spinenet
      multilevel_features.decoder = @fpn
      fpn.num_filters = 8
  """)
  backbone, decoder = core_registry.multilevel_features((128, 128, 3))
  config = backbone.get_config()
  assert (config["activation"], config["use_sync_bn"],
          config["init_stochastic_depth_rate"]) == ("swish", False, 0.1)
  # The builder's own defaults apply to what no file binds: the model id's
  # endpoint width (128 for 49S), and the FPN's activation is the shared one.
  assert config["endpoints_num_filters"] == 128
  assert decoder.get_config()["activation"] == "swish"
  assert decoder.get_config()["num_filters"] == 8
