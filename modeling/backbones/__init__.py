"""Backbones. Importing the package registers every backbone builder
(modeling/backbones/registry.py): each module below registers its own."""

# pylint: disable=unused-import
from modeling.backbones import eff_spinenet
from modeling.backbones import resnet
from modeling.backbones import spinenet
from modeling.backbones import spinenet_mbconv
from modeling.backbones import spnet
