"""COCO teacher: Mask R-CNN R101-FPN, 2x (as mask_rcnn_R50_2x.py, MSRA R-101)."""
from .mask_rcnn_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/coco/mask_rcnn_R101_2x"
