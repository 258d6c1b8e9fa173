"""Losses of every task, and the replica-aware normalisers they share.

normalizers.py  global_sum / global_count: the counts a loss is divided by,
                summed over replicas so that the replicas' shares add up to
                the loss of the global batch on one device (the Task
                contract in official/core/task.py).
elementwise.py  huber and sigmoid focal loss, per element / per anchor.
retinanet.py    RetinaNet class and box losses.
maskrcnn.py     RPN, Fast R-CNN and mask losses of Mask R-CNN.
segmentation.py per-pixel softmax cross-entropy over the valid pixels.
classification.py softmax cross-entropy with label smoothing.
"""
