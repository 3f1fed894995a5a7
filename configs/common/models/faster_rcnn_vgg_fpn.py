"""Faster R-CNN on a VGG-FPN, LSHFM's ``fasterrcnn_vgg{11,16}fpn`` (``DoctorKey/LSHFM.detection``,
``src/model/vgg_fpn.py`` + torchvision's FasterRCNN defaults; docs/methods.md §3).

- Backbone: FPN (256 ch) over the *pooled* VGG stage outputs ``pool2..pool5`` (strides 4..32)
  -> p2..p5, + max-pooled p6; VGG stages 1-2 frozen (``freeze_at=2``), plain VGG (no BN).
- RPN (torchvision): one size per level 32, 64, 128, 256, 512 x ratios 0.5, 1, 2; 256 anchors,
  50 % positive, IoU 0.3/0.7; per-level top-k 2000 (train) / 1000 (test) before NMS 0.7, 2000 /
  1000 kept.
- ROI head (torchvision TwoMLPHead): MultiScaleRoIAlign 7x7 (sampling 2) on p2..p5, 2 x FC 1024
  + ReLU (the LSHFM feature, D = 1024), 512 ROIs/image, 25 % positive, box weights (10,10,5,5).
- Input: torchvision ImageNet normalisation (RGB).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads

from d2kd.modeling.backbone import VGG

TORCHVISION_RGB = dict(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375], input_format="RGB")
FPN_IN = ["pool2", "pool3", "pool4", "pool5"]


def faster_rcnn_vgg_fpn(*, depth=16, num_classes=20, freeze_at=2, fpn_channels=256, fc_dim=1024,
                        anchor_base=32, rpn_batch=256, roi_batch=512, pre_nms_topk=(2000, 1000)):
    return L(GeneralizedRCNN)(
        backbone=L(FPN)(
            bottom_up=L(VGG)(depth=depth, out_features=FPN_IN, freeze_at=freeze_at),
            in_features=FPN_IN,
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
            post_nms_topk=(2000, 1000),
            nms_thresh=0.7,
        ),
        roi_heads=L(StandardROIHeads)(
            num_classes=num_classes,
            batch_size_per_image=roi_batch,
            positive_fraction=0.25,
            proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
            box_in_features=["p2", "p3", "p4", "p5"],
            box_pooler=L(ROIPooler)(
                output_size=7, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32), sampling_ratio=2, pooler_type="ROIAlignV2"
            ),
            box_head=L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=fpn_channels, height=7, width=7), conv_dims=[], fc_dims=[fc_dim, fc_dim]
            ),
            box_predictor=L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=fc_dim),
                test_score_thresh=0.05,
                box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
                num_classes="${..num_classes}",
            ),
        ),
        **TORCHVISION_RGB,
    )


model = faster_rcnn_vgg_fpn()
