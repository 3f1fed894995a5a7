"""Shapes: RetinaNet student distilled with FitNet-style L2 imitation of P3-P5 (not P6/P7: the
shapes teacher's P6/P7, convolutions on P5 without a norm, have an rms of 4.6 and 30, and their
MSE was 1000x the detection loss)."""
from detectron2.config import LazyCall as L

from d2kd.distill import FeatureImitation
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(FeatureImitation)(in_features=["p3", "p4", "p5"], weight=1.0)]
train.output_dir = "output/shapes/retinanet_fitnet"
