"""Faster R-CNN on a single-level VGG (stride-16 ``conv5``), the FGFI reference's detector
(``twangnh/Distilling-Object-Detectors``, built on jwyang's faster-rcnn.pytorch; docs/methods.md §2).

- Backbone: :class:`d2kd.modeling.backbone.VGG` ``conv5`` (conv5_3 / conv5_2 after ReLU, before
  the last max-pool), shared by the RPN and the ROI pooling. FGFI's VGG11 student freezes
  conv1_1, conv2_1, conv3_1 (``freeze_layers=3``); faster-rcnn.pytorch's VGG16 freezes
  conv1-conv2 (``freeze_at=2``).
- RPN: 3x3 conv 512 + sigmoid objectness; 9 anchors per location = scales 8, 16, 32 x base 16
  (128, 256, 512 px) x ratios 0.5, 1, 2 at stride 16, py-faster-rcnn's own anchors
  (``PyFasterRCNNAnchorGenerator``: rounded sizes, e.g. 184x96 where Detectron2's generator
  gives 181x90.5; base window (0,0,15,15), centre 7.5 in "+1" pixel coordinates = 8 in
  continuous ones); ``reference_anchors=False``: Detectron2's ``DefaultAnchorGenerator``;
  256 anchors/image, 50 % positive, IoU 0.3/0.7; NMS 0.7, 12000 -> 2000 proposals in training,
  6000 -> 300 at test.
- ROI head: 7x7 pooling (ROIAlign), fc6/fc7 4096 + ReLU (VGG's classifier layout), 256 ROIs per
  image, 25 % positive, box deltas normalised by (0.1, 0.1, 0.2, 0.2) = weights (10, 10, 5, 5).
  Detectron2's FastRCNNConvFCHead has no dropout and its fc6/fc7 start from random, not
  ImageNet, weights (the reference reuses VGG's ImageNet classifier) - a documented difference.
- Input: torchvision's ImageNet weights (``convert_torchvision_vgg``): RGB, mean/std of ImageNet.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads

from d2kd.modeling.anchor_generator import PyFasterRCNNAnchorGenerator
from d2kd.modeling.backbone import VGG

TORCHVISION_RGB = dict(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375], input_format="RGB")


def faster_rcnn_vgg(*, depth=16, num_classes=20, freeze_at=2, freeze_layers=0, fc_dim=4096,
                    anchor_scales=(8, 16, 32), anchor_base=16, rpn_batch=256, roi_batch=256,
                    reference_anchors=True):
    return L(GeneralizedRCNN)(
        backbone=L(VGG)(depth=depth, out_features=["conv5"], freeze_at=freeze_at, freeze_layers=freeze_layers),
        proposal_generator=L(RPN)(
            in_features=["conv5"],
            head=L(StandardRPNHead)(in_channels=512, num_anchors=9),
            anchor_generator=L(PyFasterRCNNAnchorGenerator)(
                sizes=[[anchor_base * s for s in anchor_scales]], aspect_ratios=[0.5, 1.0, 2.0], strides=[16], offset=0.0,
            ) if reference_anchors else L(DefaultAnchorGenerator)(
                sizes=[[anchor_base * s for s in anchor_scales]], aspect_ratios=[0.5, 1.0, 2.0], strides=[16], offset=0.5,
            ),
            anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
            box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
            batch_size_per_image=rpn_batch,
            positive_fraction=0.5,
            pre_nms_topk=(12000, 6000),
            post_nms_topk=(2000, 300),
            nms_thresh=0.7,
        ),
        roi_heads=L(StandardROIHeads)(
            num_classes=num_classes,
            batch_size_per_image=roi_batch,
            positive_fraction=0.25,
            proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
            box_in_features=["conv5"],
            box_pooler=L(ROIPooler)(output_size=7, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2"),
            box_head=L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=512, height=7, width=7), conv_dims=[], fc_dims=[fc_dim, fc_dim]
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


model = faster_rcnn_vgg()
