"""RetinaNet on a ResNet-FPN of any depth and width (Detectron2's own classes throughout)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from d2kd.modeling.backbone import make_resnet_stages


def resnet_fpn_p3_p7(*, depth=50, width=64, fpn_channels=256, norm="FrozenBN", fpn_norm=""):
    """The dense detectors' backbone: a ResNet of any depth and width with an FPN on res3-res5
    and P6/P7 from P5 (p3-p7, strides 8-128)."""
    return L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=width, norm=norm),
            stages=L(make_resnet_stages)(depth=depth, width=width, norm=norm),
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=fpn_channels,
        norm=fpn_norm,
        # P6 from P5 (not C5) keeps the top block independent of the ResNet width.
        top_block=L(LastLevelP6P7)(in_channels=fpn_channels, out_channels=fpn_channels, in_feature="p5"),
    )


def retinanet(*, depth=50, width=64, fpn_channels=256, head_convs=4, anchor_base=32, norm="FrozenBN",
              fpn_norm="", head_norm="", num_classes=80):
    """``anchor_base``: anchor size on p3 (32 for COCO-size images, 8 for 128-px shapes).
    ``fpn_norm``, ``head_norm``: "" (the RetinaNet paper's FPN and head) or "BN" (in the FPN's
    lateral/output convs; per level in the head convs), what Detectron2's from-scratch recipes
    use: a head trained from scratch without it barely learns in short schedules, and the
    FPN's BN keeps the levels' feature scales comparable for feature imitation."""
    return L(RetinaNet)(
        backbone=resnet_fpn_p3_p7(depth=depth, width=width, fpn_channels=fpn_channels, norm=norm, fpn_norm=fpn_norm),
        head=L(RetinaNetHead)(
            input_shape=[ShapeSpec(channels=fpn_channels)] * 5,
            num_classes="${..num_classes}",
            conv_dims=[fpn_channels] * head_convs,
            norm=head_norm,
            prior_prob=0.01,
            num_anchors=9,
        ),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [anchor_base * 2**i for i in range(5)]],
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
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
        input_format="BGR",
    )


model = retinanet()
