"""COCO teacher: FCOS R101-FPN, 2x (as fcos_R50_2x.py, ImageNet init from Detectron2's MSRA R-101)."""
from .fcos_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/coco/fcos_R101_2x"
