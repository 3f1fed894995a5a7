"""Shapes: FCOS student with FitNet-style L2 feature imitation on p3-p5 (1×1 adapters), weight 1,
as configs/shapes/retinanet_fitnet.py."""
from detectron2.config import LazyCall as L

from d2kd.distill import FeatureImitation
from d2kd.modeling.meta_arch import DistillationFCOS
from d2kd.teacher import build_teacher

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationFCOS
model.teacher = L(build_teacher)(
    config_file="configs/shapes/fcos_teacher.py",
    weights="output/shapes/fcos_teacher/model_final.pth",
)
model.distillers = [L(FeatureImitation)(in_features=["p3", "p4", "p5"], weight=1.0)]
train.output_dir = "output/shapes/fcos_fitnet"
