"""Shapes: RetinaNet student with FGD (CVPR 2022) on P3-P7, the released RetinaNet setting.

FGD (docs/methods.md): focal fg/bg feature imitation weighted by the teacher's spatial and channel
attention (T 0.5) and box-area masks, an L1 attention loss, and the GcBlock relation loss; 1×1
align conv 32 → 128 channels. Coefficients: see below.
"""
from detectron2.config import LazyCall as L

from d2kd.distill.fgd import FGD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(FGD)(in_features=["p3", "p4", "p5"], temperature=0.5,
                        alpha_fgd=1e-3, beta_fgd=5e-4, gamma_fgd=5e-4, lambda_fgd=5e-6)]
train.output_dir = "output/shapes/retinanet_fgd"
