"""Shapes: FCOS student with FGD (CVPR 2022) on P3-P5 from the FCOS teacher, the RetinaNet FGD
settings unchanged (configs/shapes/retinanet_fgd.py: the released RetinaNet coefficients α 1e-3,
β 5e-4, γ 5e-4, λ 5e-6, T 0.5; P3-P5 for the same reason; a 1×1 align conv 32 → 128 channels,
stripped at export). FGD's foreground/background masks come from the GT boxes and its attention
from the teacher's maps, so it needs nothing of the head: FCOS's points are never consulted.
"""
from detectron2.config import LazyCall as L
from d2kd.distill.fgd import FGD
from d2kd.modeling.meta_arch import DistillationFCOS
from d2kd.teacher import build_teacher

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationFCOS
model.teacher = L(build_teacher)(
    config_file="configs/shapes/fcos_teacher.py",
    weights="output/shapes/fcos_teacher/model_final.pth",
)
model.distillers = [L(FGD)(in_features=["p3", "p4", "p5"], temperature=0.5,
                        alpha_fgd=1e-3, beta_fgd=5e-4, gamma_fgd=5e-4, lambda_fgd=5e-6)]
train.output_dir = "output/shapes/fcos_fgd"
