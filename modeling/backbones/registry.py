"""Backbone registry.

Contract: a backbone builder is called as builder(input_shape=(H, W, 3),
**kwargs) and returns a keras.Model that maps images [batch, H, W, 3]
(float, ImageNet-normalised) to dict str(level) -> [batch, ceil(H / 2^level),
ceil(W / 2^level), C_level] for consecutive levels min_level..max_level. Every
builder accepts the common keyword arguments activation, use_sync_bn,
norm_momentum, norm_epsilon, init_stochastic_depth_rate, dropblock_keep_prob
and dropblock_size.
"""

from modeling.backbones.eff_spinenet import eff_spinenet
from modeling.backbones.resnet import resnet
from modeling.backbones.spinenet import spinenet
from modeling.backbones.spinenet_mbconv import spinenet_mbconv

BACKBONES = {
    "spinenet": spinenet,
    "resnet": resnet,
    "spinenet_mbconv": spinenet_mbconv,
    "eff_spinenet": eff_spinenet,
}
