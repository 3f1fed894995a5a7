"""FCOS on a ResNet-FPN of any depth and width (Detectron2's own ``FCOS`` and ``FCOSHead``, as in
its model zoo's ``COCO-Detection/fcos_R_50_FPN_1x.py``; the backbone is the RetinaNet configs')."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

from .retinanet_resnet_fpn import resnet_fpn_p3_p7


def fcos(*, depth=50, width=64, fpn_channels=256, head_convs=4, norm="FrozenBN", fpn_norm="", head_norm="GN",
         num_classes=80):
    """``head_norm``: "GN" (Detectron2's model zoo) or "BN" per level (the shapes configs, as
    their RetinaNets: at least 2 images per process)."""
    return L(FCOS)(
        backbone=resnet_fpn_p3_p7(depth=depth, width=width, fpn_channels=fpn_channels, norm=norm, fpn_norm=fpn_norm),
        head=L(FCOSHead)(
            input_shape=[ShapeSpec(channels=fpn_channels)] * 5,
            conv_dims=[fpn_channels] * head_convs,
            num_classes="${..num_classes}",
            norm=head_norm,
            prior_prob=0.01,
        ),
        num_classes=num_classes,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
    )
