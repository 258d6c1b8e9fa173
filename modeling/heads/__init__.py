"""Heads. Importing the package registers every head (modeling/heads/registry.py):
each module below registers its own."""

# pylint: disable=unused-import
from modeling.heads import auto_head
from modeling.heads import classification
from modeling.heads import fast_rcnn
from modeling.heads import mask_head
from modeling.heads import retinanet
from modeling.heads import rpn
from modeling.heads import segmentation
