"""Shapes: FCOS student with the Adaptive Distillation Loss on its per-location sigmoid class
logits (docs/methods.md §5.1; released defaults γ=2, α=0.5, β_c=0, θ=1.8, adaptive normaliser,
T=1, weight 1), fully supervised (all of ``shapes_train``, as the paper's COCO rows), from the
FCOS teacher. Teacher and student share the head's strides, so their locations match one for
one; FCOS ignores no location, so every (location, class) element is distilled."""
from detectron2.config import LazyCall as L

from d2kd.distill import ADL
from d2kd.modeling.meta_arch import DistillationFCOS
from d2kd.teacher import build_teacher

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationFCOS
model.teacher = L(build_teacher)(
    config_file="configs/shapes/fcos_teacher.py",
    weights="output/shapes/fcos_teacher/model_final.pth",
)
model.distillers = [L(ADL)(gamma=2.0, alpha=0.5, beta_code=0.0, theta=1.8, normalizer="adaptive",
                           temperature=1.0, weight=1.0)]
train.output_dir = "output/shapes/fcos_adl"
