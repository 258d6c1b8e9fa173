"""The head tower (modeling/heads/tower.py) and checkpoint compatibility.

EXPECTED lists every variable of each head, in order, with its shape, as
the heads wrote them before the tower was factored out of them: the
checkpoint keys, Keras weight paths and the order of optimizer slots of
checkpoints trained earlier must not change.
"""

import numpy as np
import pytest
import tensorflow as tf

from modeling.heads.fast_rcnn import FastRCNNHead
from modeling.heads.mask_head import MaskHead
from modeling.heads.retinanet import RetinaNetHead
from modeling.heads.rpn import RPNHead
from modeling.heads.segmentation import SegmentationHead
from modeling.heads.tower import ConvTower

EXPECTED = {
    "retinanet_True": (
        "h/cls_conv_0/depthwise_kernel 3x3x6x1",
        "h/cls_conv_0/pointwise_kernel 1x1x6x8",
        "h/cls_conv_0/bias 8",
        "h/cls_conv_1/depthwise_kernel 3x3x8x1",
        "h/cls_conv_1/pointwise_kernel 1x1x8x8",
        "h/cls_conv_1/bias 8",
        "h/box_conv_0/depthwise_kernel 3x3x6x1",
        "h/box_conv_0/pointwise_kernel 1x1x6x8",
        "h/box_conv_0/bias 8",
        "h/box_conv_1/depthwise_kernel 3x3x8x1",
        "h/box_conv_1/pointwise_kernel 1x1x8x8",
        "h/box_conv_1/bias 8",
        "h/cls_norm_3_0/gamma 8",
        "h/cls_norm_3_0/beta 8",
        "h/cls_norm_3_0/moving_mean 8",
        "h/cls_norm_3_0/moving_variance 8",
        "h/cls_norm_3_1/gamma 8",
        "h/cls_norm_3_1/beta 8",
        "h/cls_norm_3_1/moving_mean 8",
        "h/cls_norm_3_1/moving_variance 8",
        "h/cls_norm_4_0/gamma 8",
        "h/cls_norm_4_0/beta 8",
        "h/cls_norm_4_0/moving_mean 8",
        "h/cls_norm_4_0/moving_variance 8",
        "h/cls_norm_4_1/gamma 8",
        "h/cls_norm_4_1/beta 8",
        "h/cls_norm_4_1/moving_mean 8",
        "h/cls_norm_4_1/moving_variance 8",
        "h/cls_norm_5_0/gamma 8",
        "h/cls_norm_5_0/beta 8",
        "h/cls_norm_5_0/moving_mean 8",
        "h/cls_norm_5_0/moving_variance 8",
        "h/cls_norm_5_1/gamma 8",
        "h/cls_norm_5_1/beta 8",
        "h/cls_norm_5_1/moving_mean 8",
        "h/cls_norm_5_1/moving_variance 8",
        "h/box_norm_3_0/gamma 8",
        "h/box_norm_3_0/beta 8",
        "h/box_norm_3_0/moving_mean 8",
        "h/box_norm_3_0/moving_variance 8",
        "h/box_norm_3_1/gamma 8",
        "h/box_norm_3_1/beta 8",
        "h/box_norm_3_1/moving_mean 8",
        "h/box_norm_3_1/moving_variance 8",
        "h/box_norm_4_0/gamma 8",
        "h/box_norm_4_0/beta 8",
        "h/box_norm_4_0/moving_mean 8",
        "h/box_norm_4_0/moving_variance 8",
        "h/box_norm_4_1/gamma 8",
        "h/box_norm_4_1/beta 8",
        "h/box_norm_4_1/moving_mean 8",
        "h/box_norm_4_1/moving_variance 8",
        "h/box_norm_5_0/gamma 8",
        "h/box_norm_5_0/beta 8",
        "h/box_norm_5_0/moving_mean 8",
        "h/box_norm_5_0/moving_variance 8",
        "h/box_norm_5_1/gamma 8",
        "h/box_norm_5_1/beta 8",
        "h/box_norm_5_1/moving_mean 8",
        "h/box_norm_5_1/moving_variance 8",
        "h/cls_predict/depthwise_kernel 3x3x8x1",
        "h/cls_predict/pointwise_kernel 1x1x8x8",
        "h/cls_predict/bias 8",
        "h/box_predict/depthwise_kernel 3x3x8x1",
        "h/box_predict/pointwise_kernel 1x1x8x8",
        "h/box_predict/bias 8",
    ),
    "retinanet_False": (
        "h/cls_conv_0/kernel 3x3x6x8",
        "h/cls_conv_0/bias 8",
        "h/cls_conv_1/kernel 3x3x8x8",
        "h/cls_conv_1/bias 8",
        "h/box_conv_0/kernel 3x3x6x8",
        "h/box_conv_0/bias 8",
        "h/box_conv_1/kernel 3x3x8x8",
        "h/box_conv_1/bias 8",
        "h/cls_norm_3_0/gamma 8",
        "h/cls_norm_3_0/beta 8",
        "h/cls_norm_3_0/moving_mean 8",
        "h/cls_norm_3_0/moving_variance 8",
        "h/cls_norm_3_1/gamma 8",
        "h/cls_norm_3_1/beta 8",
        "h/cls_norm_3_1/moving_mean 8",
        "h/cls_norm_3_1/moving_variance 8",
        "h/cls_norm_4_0/gamma 8",
        "h/cls_norm_4_0/beta 8",
        "h/cls_norm_4_0/moving_mean 8",
        "h/cls_norm_4_0/moving_variance 8",
        "h/cls_norm_4_1/gamma 8",
        "h/cls_norm_4_1/beta 8",
        "h/cls_norm_4_1/moving_mean 8",
        "h/cls_norm_4_1/moving_variance 8",
        "h/cls_norm_5_0/gamma 8",
        "h/cls_norm_5_0/beta 8",
        "h/cls_norm_5_0/moving_mean 8",
        "h/cls_norm_5_0/moving_variance 8",
        "h/cls_norm_5_1/gamma 8",
        "h/cls_norm_5_1/beta 8",
        "h/cls_norm_5_1/moving_mean 8",
        "h/cls_norm_5_1/moving_variance 8",
        "h/box_norm_3_0/gamma 8",
        "h/box_norm_3_0/beta 8",
        "h/box_norm_3_0/moving_mean 8",
        "h/box_norm_3_0/moving_variance 8",
        "h/box_norm_3_1/gamma 8",
        "h/box_norm_3_1/beta 8",
        "h/box_norm_3_1/moving_mean 8",
        "h/box_norm_3_1/moving_variance 8",
        "h/box_norm_4_0/gamma 8",
        "h/box_norm_4_0/beta 8",
        "h/box_norm_4_0/moving_mean 8",
        "h/box_norm_4_0/moving_variance 8",
        "h/box_norm_4_1/gamma 8",
        "h/box_norm_4_1/beta 8",
        "h/box_norm_4_1/moving_mean 8",
        "h/box_norm_4_1/moving_variance 8",
        "h/box_norm_5_0/gamma 8",
        "h/box_norm_5_0/beta 8",
        "h/box_norm_5_0/moving_mean 8",
        "h/box_norm_5_0/moving_variance 8",
        "h/box_norm_5_1/gamma 8",
        "h/box_norm_5_1/beta 8",
        "h/box_norm_5_1/moving_mean 8",
        "h/box_norm_5_1/moving_variance 8",
        "h/cls_predict/kernel 3x3x8x8",
        "h/cls_predict/bias 8",
        "h/box_predict/kernel 3x3x8x8",
        "h/box_predict/bias 8",
    ),
    "rpn_True": (
        "h/conv_0/depthwise_kernel 3x3x6x1",
        "h/conv_0/pointwise_kernel 1x1x6x8",
        "h/conv_0/bias 8",
        "h/conv_1/depthwise_kernel 3x3x8x1",
        "h/conv_1/pointwise_kernel 1x1x8x8",
        "h/conv_1/bias 8",
        "h/norm_3_0/gamma 8",
        "h/norm_3_0/beta 8",
        "h/norm_3_0/moving_mean 8",
        "h/norm_3_0/moving_variance 8",
        "h/norm_3_1/gamma 8",
        "h/norm_3_1/beta 8",
        "h/norm_3_1/moving_mean 8",
        "h/norm_3_1/moving_variance 8",
        "h/norm_4_0/gamma 8",
        "h/norm_4_0/beta 8",
        "h/norm_4_0/moving_mean 8",
        "h/norm_4_0/moving_variance 8",
        "h/norm_4_1/gamma 8",
        "h/norm_4_1/beta 8",
        "h/norm_4_1/moving_mean 8",
        "h/norm_4_1/moving_variance 8",
        "h/norm_5_0/gamma 8",
        "h/norm_5_0/beta 8",
        "h/norm_5_0/moving_mean 8",
        "h/norm_5_0/moving_variance 8",
        "h/norm_5_1/gamma 8",
        "h/norm_5_1/beta 8",
        "h/norm_5_1/moving_mean 8",
        "h/norm_5_1/moving_variance 8",
        "h/score_predict/kernel 1x1x8x3",
        "h/score_predict/bias 3",
        "h/box_predict/kernel 1x1x8x12",
        "h/box_predict/bias 12",
    ),
    "frcnn_True": (
        "h/conv_0/depthwise_kernel 3x3x6x1",
        "h/conv_0/pointwise_kernel 1x1x6x8",
        "h/conv_0/bias 8",
        "h/conv_1/depthwise_kernel 3x3x8x1",
        "h/conv_1/pointwise_kernel 1x1x8x8",
        "h/conv_1/bias 8",
        "h/conv_norm_0/gamma 8",
        "h/conv_norm_0/beta 8",
        "h/conv_norm_0/moving_mean 8",
        "h/conv_norm_0/moving_variance 8",
        "h/conv_norm_1/gamma 8",
        "h/conv_norm_1/beta 8",
        "h/conv_norm_1/moving_mean 8",
        "h/conv_norm_1/moving_variance 8",
        "h/fc_0/kernel 392x16",
        "h/fc_0/bias 16",
        "h/fc_1/kernel 16x16",
        "h/fc_1/bias 16",
        "h/fc_norm_0/gamma 16",
        "h/fc_norm_0/beta 16",
        "h/fc_norm_0/moving_mean 16",
        "h/fc_norm_0/moving_variance 16",
        "h/fc_norm_1/gamma 16",
        "h/fc_norm_1/beta 16",
        "h/fc_norm_1/moving_mean 16",
        "h/fc_norm_1/moving_variance 16",
        "h/class_predict/kernel 16x4",
        "h/class_predict/bias 4",
        "h/box_predict/kernel 16x16",
        "h/box_predict/bias 16",
    ),
    "mask_True": (
        "h/conv_0/depthwise_kernel 3x3x6x1",
        "h/conv_0/pointwise_kernel 1x1x6x8",
        "h/conv_0/bias 8",
        "h/conv_1/depthwise_kernel 3x3x8x1",
        "h/conv_1/pointwise_kernel 1x1x8x8",
        "h/conv_1/bias 8",
        "h/conv_norm_0/gamma 8",
        "h/conv_norm_0/beta 8",
        "h/conv_norm_0/moving_mean 8",
        "h/conv_norm_0/moving_variance 8",
        "h/conv_norm_1/gamma 8",
        "h/conv_norm_1/beta 8",
        "h/conv_norm_1/moving_mean 8",
        "h/conv_norm_1/moving_variance 8",
        "h/upsample/kernel 2x2x8x8",
        "h/upsample/bias 8",
        "h/upsample_norm/gamma 8",
        "h/upsample_norm/beta 8",
        "h/upsample_norm/moving_mean 8",
        "h/upsample_norm/moving_variance 8",
        "h/mask_predict/kernel 1x1x8x4",
        "h/mask_predict/bias 4",
    ),
    "seg_True": (
        "h/conv_0/depthwise_kernel 3x3x6x1",
        "h/conv_0/pointwise_kernel 1x1x6x8",
        "h/conv_1/depthwise_kernel 3x3x8x1",
        "h/conv_1/pointwise_kernel 1x1x8x8",
        "h/norm_0/gamma 8",
        "h/norm_0/beta 8",
        "h/norm_0/moving_mean 8",
        "h/norm_0/moving_variance 8",
        "h/norm_1/gamma 8",
        "h/norm_1/beta 8",
        "h/norm_1/moving_mean 8",
        "h/norm_1/moving_variance 8",
        "h/classifier/kernel 1x1x8x4",
        "h/classifier/bias 4",
    ),
}


def _levels(channels=6):
  return {str(l): tf.zeros([1, 2 ** (8 - l), 2 ** (8 - l), channels])
          for l in range(3, 6)}


def _built(name):
  separable = name.endswith("True")
  kind = name.split("_")[0]
  if kind == "retinanet":
    head = RetinaNetHead(3, 5, num_classes=4, num_anchors_per_location=2,
                         num_convs=2, num_filters=8,
                         use_separable_conv=separable, name="h")
    head(_levels())
  elif kind == "rpn":
    head = RPNHead(3, 5, 3, num_convs=2, num_filters=8,
                   use_separable_conv=separable, name="h")
    head(_levels())
  elif kind == "frcnn":
    head = FastRCNNHead(4, num_convs=2, num_filters=8, num_fcs=2, fc_dims=16,
                        use_separable_conv=separable, name="h")
    head(tf.zeros([1, 3, 7, 7, 6]))
  elif kind == "mask":
    head = MaskHead(4, num_convs=2, num_filters=8,
                    use_separable_conv=separable, name="h")
    head(tf.zeros([1, 3, 14, 14, 6]), classes=tf.zeros([1, 3], tf.int32))
  else:
    head = SegmentationHead(4, 3, 5, num_convs=2, num_filters=8,
                            use_separable_conv=separable, name="h")
    head(_levels())
  return head


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_head_variables_keep_their_names_shapes_and_order(name, tmp_path):
  head = _built(name)
  found = tuple(f"{v.path} {'x'.join(map(str, v.shape))}"
                for v in head.weights)
  assert found == EXPECTED[name]
  # tf.train.Checkpoint keys follow the attribute names: one per variable.
  path = tf.train.Checkpoint(head=head).write(str(tmp_path / "ckpt"))
  keys = [k for k, _ in tf.train.list_variables(path)
          if k.startswith("head/")]
  assert len(keys) == len(found)


def test_per_level_batch_norm_and_shared_convs():
  tower = ConvTower(2, 4, "conv", "norm", levels=["3", "4"], stddev=0.01)
  assert [n.name for n in tower.norms] == ["norm_3_0", "norm_3_1",
                                           "norm_4_0", "norm_4_1"]
  assert tower.build((None, None, None, 3)) == (None, None, None, 4)
  x = tf.random.stateless_normal([2, 5, 5, 3], [0, 1])
  # In inference each level reads its own batch norm's moving averages:
  # change level 4's and only level 4's output changes.
  tower.norms[2].moving_mean.assign(tf.fill([4], 3.0))
  same = tower(x, training=False, level="3")
  other = tower(x, training=False, level="4")
  assert not np.allclose(same, other)
  np.testing.assert_allclose(tower(x, training=False, level=3), same)
  with pytest.raises(ValueError, match="needs one of the levels"):
    tower(x, training=False, level="5")


def test_dense_tower_and_bad_arguments():
  tower = ConvTower(2, 6, "fc", "fc_norm", kind="dense")
  assert tower.build((None, 10)) == (None, 6)
  out = tower(tf.ones([3, 10]), training=False)
  assert out.shape == (3, 6) and np.all(out.numpy() >= 0.0)  # relu
  assert ConvTower(0, 6, "c", "n").build((None, 7)) == (None, 7)
  with pytest.raises(ValueError, match="kind must be one of"):
    ConvTower(1, 4, "c", "n", kind="conv1x1")
  with pytest.raises(ValueError, match="cannot be separable"):
    ConvTower(1, 4, "c", "n", kind="dense", use_separable_conv=True)
  with pytest.raises(ValueError, match="num_layers must be an integer"):
    ConvTower(-1, 4, "c", "n")
