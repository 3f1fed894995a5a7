"""Shapes student baseline with instance masks: the Faster R-CNN student (configs/shapes/
faster_rcnn_student.py: ResNet-10 layout, width 8, FPN 32) plus a mask head (2 convs of 32),
trained and evaluated on the same images with their masks (the visible pixels of each shape,
``shapes_*_masks``); COCO box AND mask AP."""
from ..common.data.shapes import NUM_CLASSES
from ..common.models.mask_rcnn_resnet_fpn import mask_rcnn
from .faster_rcnn_student import dataloader, lr_multiplier, optimizer, train

model = mask_rcnn(depth=10, width=8, fpn_channels=32, fc_dim=128, anchor_base=8, norm="BN", mask_convs=2,
                  num_classes=NUM_CLASSES, rpn_batch=128, roi_batch=64, pre_nms_topk=(600, 300), post_nms_topk=(300, 300))
dataloader.train.dataset.names = "shapes_train_masks"
dataloader.train.mapper.use_instance_mask = True
dataloader.train.mapper.instance_mask_format = "bitmask"  # RLE masks (holes, occlusion)
dataloader.test.dataset.names = "shapes_val_masks"
dataloader.evaluator.tasks = ("bbox", "segm")
train.output_dir = "output/shapes/mask_rcnn_student"
