"""Shapes: FCOS student with PKD (Pearson-correlation imitation) of P3-P6, the RetinaNet PKD
settings (configs/shapes/retinanet_pkd.py: mmrazor's released ½·MSE of per-channel standardised
maps, loss_weight 10 per level, P7 left out) from the FCOS teacher. PKD's paper distils FCOS
students too (docs/methods.md). The student's FPN has 32 channels and the teacher's 128: a 1×1
adapter per level (stripped at export)."""
from detectron2.config import LazyCall as L

from d2kd.distill.pkd import PKD
from d2kd.modeling.meta_arch import DistillationFCOS
from d2kd.teacher import build_teacher

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationFCOS
model.teacher = L(build_teacher)(
    config_file="configs/shapes/fcos_teacher.py",
    weights="output/shapes/fcos_teacher/model_final.pth",
)
model.distillers = [L(PKD)(in_features=["p3", "p4", "p5", "p6"], weight=10.0)]
train.output_dir = "output/shapes/fcos_pkd"
