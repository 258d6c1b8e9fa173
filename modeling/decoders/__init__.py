"""Decoders. Importing the package registers every decoder builder
(modeling/decoders/registry.py): each module below registers its own."""

# pylint: disable=unused-import
from modeling.decoders import auto_fpn
from modeling.decoders import fpn
from modeling.decoders import identity
