"""COCO baseline: Mask R-CNN R50-FPN, 2x: faster_rcnn_R50_2x.py with Detectron2's mask branch
(configs/common/models/mask_rcnn_resnet_fpn.py), trained and evaluated on boxes and masks."""
from ..common.data.coco import NUM_CLASSES
from ..common.models.mask_rcnn_resnet_fpn import mask_rcnn
from .faster_rcnn_R50_2x import dataloader, lr_multiplier, optimizer, train

model = mask_rcnn(depth=50, num_classes=NUM_CLASSES)
model.backbone.bottom_up.freeze_at = 2
model.pixel_std = [1.0, 1.0, 1.0]  # the MSRA ImageNet weights' normalisation
dataloader.train.mapper.use_instance_mask = True
dataloader.train.mapper.instance_mask_format = "polygon"  # COCO's polygons
dataloader.evaluator.tasks = ("bbox", "segm")
train.output_dir = "output/coco/mask_rcnn_R50_2x"
