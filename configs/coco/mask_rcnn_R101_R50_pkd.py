"""PKD on COCO with Mask R-CNN: Mask R-CNN R101-FPN 2x teacher -> Mask R-CNN R50-FPN, 2x.

PKD as for Faster R-CNN (configs/coco/faster_rcnn_R101_R50_pkd.py, mmrazor's two-stage setting:
P2-P5, ``loss_weight=6``); the student's mask head trains on its own loss. mmrazor publishes PKD
for Faster R-CNN (R101 -> R50 2x: 38.4 -> 40.3 box AP), not for Mask R-CNN: this config has no
reference number. Teacher: output of configs/coco/mask_rcnn_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill import PKD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .mask_rcnn_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/coco/mask_rcnn_R101_2x.py",
    weights="output/coco/mask_rcnn_R101_2x/model_final.pth",
)
model.distillers = [L(PKD)(in_features=["p2", "p3", "p4", "p5"], weight=6.0)]
train.output_dir = "output/coco/mask_rcnn_R101_R50_pkd"
