"""PKD on COCO with an FCOS student: FCOS R101-FPN 2x teacher -> FCOS R50-FPN, 2x.

PKD as for RetinaNet (configs/coco/retinanet_R101_R50_pkd.py, mmrazor's dense-detector setting:
P3-P6, ``loss_weight=10``); FCOS's neck is RetinaNet's (P3-P7, 256 channels). mmrazor publishes
PKD with an FCOS **teacher** (FCOS X101 -> RetinaNet R50 1x: 36.5 -> 40.3); no FCOS-student row is
published: this config has no reference number. Teacher: output of configs/coco/fcos_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill import PKD
from d2kd.modeling.meta_arch import DistillationFCOS
from d2kd.teacher import build_teacher

from .fcos_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationFCOS
model.teacher = L(build_teacher)(
    config_file="configs/coco/fcos_R101_2x.py",
    weights="output/coco/fcos_R101_2x/model_final.pth",
)
model.distillers = [L(PKD)(in_features=["p3", "p4", "p5", "p6"], weight=10.0)]
train.output_dir = "output/coco/fcos_R101_R50_pkd"
