"""RetinaNet on a VGG-FPN, LSHFM's ``retinanet_vgg{11,16}fpn`` (``DoctorKey/LSHFM.detection``,
``src/model/retinanet_vgg.py`` + torchvision's RetinaNet defaults; docs/methods.md §3).

- Backbone: FPN (256 ch) over ``pool3..pool5`` (strides 8..32) -> p3..p5, P6/P7 from P5
  (torchvision's ``LastLevelP6P7(256, 256)``); VGG stages 1-2 frozen, plain VGG.
- Head: 4 x (conv3x3 256 + ReLU) towers, 9 anchors/location: sizes x, int(x·2^(1/3)),
  int(x·2^(2/3)) for x = 32..512 (torchvision truncates to int), ratios 0.5, 1, 2; matcher IoU
  0.4/0.5 with low-quality matches; focal loss alpha 0.25, gamma 2.
- Input: torchvision ImageNet normalisation (RGB).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from d2kd.modeling.backbone import VGG

TORCHVISION_RGB = dict(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375], input_format="RGB")
FPN_IN = ["pool3", "pool4", "pool5"]


def retinanet_vgg_fpn(*, depth=16, num_classes=20, freeze_at=2, fpn_channels=256, head_convs=4, anchor_base=32):
    return L(RetinaNet)(
        backbone=L(FPN)(
            bottom_up=L(VGG)(depth=depth, out_features=FPN_IN, freeze_at=freeze_at),
            in_features=FPN_IN,
            out_channels=fpn_channels,
            top_block=L(LastLevelP6P7)(in_channels=fpn_channels, out_channels=fpn_channels, in_feature="p5"),
        ),
        head=L(RetinaNetHead)(
            input_shape=[ShapeSpec(channels=fpn_channels)] * 5,
            num_classes="${..num_classes}",
            conv_dims=[fpn_channels] * head_convs,
            prior_prob=0.01,
            num_anchors=9,
        ),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))] for x in [anchor_base * 2**i for i in range(5)]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128],
            offset=0.0,
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        focal_loss_alpha=0.25,
        focal_loss_gamma=2.0,
        **TORCHVISION_RGB,
    )


model = retinanet_vgg_fpn()
