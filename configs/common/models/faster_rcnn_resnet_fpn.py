"""Faster R-CNN on a ResNet-FPN of any depth and width (Detectron2's own classes throughout)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads

from d2kd.modeling.backbone import make_resnet_stages


def faster_rcnn(*, depth=50, width=64, fpn_channels=256, fc_dim=1024, anchor_base=32, norm="FrozenBN",
                num_classes=80, rpn_batch=256, roi_batch=512, pre_nms_topk=(2000, 1000),
                post_nms_topk=(1000, 1000)):
    """``anchor_base``: anchor size on p2 (32 for COCO-size images, 8 for 128-px shapes).
    ``pre_nms_topk``/``post_nms_topk``: (train, test) RPN proposals per level before NMS / per
    image after it (Detectron2's FPN defaults; small images with a few objects need far fewer)."""
    return L(GeneralizedRCNN)(
        backbone=L(FPN)(
            bottom_up=L(ResNet)(
                stem=L(BasicStem)(in_channels=3, out_channels=width, norm=norm),
                stages=L(make_resnet_stages)(depth=depth, width=width, norm=norm),
                out_features=["res2", "res3", "res4", "res5"],
            ),
            in_features=["res2", "res3", "res4", "res5"],
            out_channels=fpn_channels,
            top_block=L(LastLevelMaxPool)(),
        ),
        proposal_generator=L(RPN)(
            in_features=["p2", "p3", "p4", "p5", "p6"],
            head=L(StandardRPNHead)(in_channels=fpn_channels, num_anchors=3),
            anchor_generator=L(DefaultAnchorGenerator)(
                sizes=[[anchor_base * 2**i] for i in range(5)],
                aspect_ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64],
                offset=0.0,
            ),
            anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
            box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
            batch_size_per_image=rpn_batch,
            positive_fraction=0.5,
            pre_nms_topk=pre_nms_topk,
            post_nms_topk=post_nms_topk,
            nms_thresh=0.7,
        ),
        roi_heads=L(StandardROIHeads)(
            num_classes=num_classes,
            batch_size_per_image=roi_batch,
            positive_fraction=0.25,
            proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
            box_in_features=["p2", "p3", "p4", "p5"],
            box_pooler=L(ROIPooler)(
                output_size=7,
                scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
                sampling_ratio=0,
                pooler_type="ROIAlignV2",
            ),
            box_head=L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=fpn_channels, height=7, width=7),
                conv_dims=[],
                fc_dims=[fc_dim, fc_dim],
            ),
            box_predictor=L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=fc_dim),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
                num_classes="${..num_classes}",
            ),
        ),
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
        input_format="BGR",
    )


model = faster_rcnn()
