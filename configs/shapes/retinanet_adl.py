"""Shapes: the few-labels RetinaNet student (``shapes_train_500``) distilled with the Adaptive
Distillation Loss (docs/methods.md §5.1; released defaults γ=2, α=0.5, β_c=0, θ=1.8, adaptive
normaliser, T=1, weight 1) from the shapes RetinaNet teacher (trained on all of
``shapes_train``). Compare with ``retinanet_student_500.py`` (same labels, no teacher)."""
from detectron2.config import LazyCall as L

from d2kd.distill import ADL
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student_500 import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(ADL)(gamma=2.0, alpha=0.5, beta_code=0.0, theta=1.8, normalizer="adaptive",
                           temperature=1.0, weight=1.0)]
train.output_dir = "output/shapes/retinanet_adl"
