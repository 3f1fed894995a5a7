"""Mask R-CNN on a ResNet-FPN of any depth and width: the Faster R-CNN of
``faster_rcnn_resnet_fpn.py`` plus Detectron2's mask branch (14×14 ROIAlignV2 on p2-p5, the
``MaskRCNNConvUpsampleHead``), as in Detectron2's ``common/models/mask_rcnn_fpn.py``."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import MaskRCNNConvUpsampleHead

from .faster_rcnn_resnet_fpn import faster_rcnn


def mask_rcnn(*, fpn_channels=256, mask_convs=4, **kwargs):
    """``mask_convs``: 3×3 convs before the 2× deconvolution (Detectron2: 4)."""
    model = faster_rcnn(fpn_channels=fpn_channels, **kwargs)
    model.roi_heads.mask_in_features = ["p2", "p3", "p4", "p5"]
    model.roi_heads.mask_pooler = L(ROIPooler)(
        output_size=14,
        scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    )
    model.roi_heads.mask_head = L(MaskRCNNConvUpsampleHead)(
        input_shape=ShapeSpec(channels=fpn_channels, width=14, height=14),
        num_classes="${..num_classes}",
        conv_dims=[fpn_channels] * (mask_convs + 1),
    )
    return model
