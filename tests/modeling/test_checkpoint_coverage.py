"""Whole models survive a tf.train.Checkpoint round trip, variable by variable.

A Keras 3 sublayer kept in a list is silently left out of TF checkpoints, and
a trained model then "restores" with random weights (found once in the
digits run; see modeling/layers/tracking.py).
"""

from modeling.backbones.resnet import resnet
from modeling.backbones.spinenet import spinenet
from modeling.decoders.fpn import fpn
from modeling.heads.retinanet import RetinaNetHead
from modeling.models.classifier import build_classifier
from modeling.models.retinanet import build_retinanet
from tests.modeling.layer_harness import assert_checkpoint_covers

TINY = dict(filter_size_scale=0.25, resample_alpha=0.25,
            endpoints_num_filters=32)


def test_spinenet_classifier_round_trip():
  make = lambda: build_classifier(spinenet((128, 128, 3), "96", **TINY), 10)
  assert_checkpoint_covers(make(), make)


def test_retinanet_round_trip():
  def make():
    backbone = resnet((128, 128, 3), 50)
    decoder = fpn(backbone.output_specs, num_filters=32)
    head = RetinaNetHead(num_classes=4, num_anchors_per_location=9,
                         num_convs=2, num_filters=16)
    return build_retinanet(backbone, decoder, head)
  assert_checkpoint_covers(make(), make)
