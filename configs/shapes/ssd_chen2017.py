"""Shapes: SSDLite student distilled from the VGG16-SSD teacher with Chen et al. 2017 as the
SSD-KD reference computes it (variant "ssd_repo", docs/methods.md §1.2):
L = [0.5·CE_hard + 0.5·L_soft(w_bg 1.5) + SmoothL1 + L_b(batch, ν 0.5, m 0)] / N_pos + 0.5·MSE(z_s, z_t).
Student, data and schedule: configs/shapes/ssd_student.py; teacher: configs/shapes/ssd_teacher.py
(train it first)."""
from detectron2.config import LazyCall as L

from d2kd.distill import Chen2017
from d2kd.modeling.meta_arch import DistillationSSD
from d2kd.teacher import build_teacher

from .ssd_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationSSD
model.teacher = L(build_teacher)(
    config_file="configs/shapes/ssd_teacher.py",
    weights="output/shapes/ssd_teacher/model_final.pth",
)
model.distillers = [L(Chen2017)(variant="ssd_repo", mu=0.5, w_bg=1.5, temperature=1.0, nu=0.5,
                                margin=0.0, lam=1.0, gamma_hint=0.5)]
train.output_dir = "output/shapes/ssd_chen2017"
