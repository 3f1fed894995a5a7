"""Shapes: Faster R-CNN student with FGD (CVPR 2022) on P2-P5, the released Faster R-CNN setting.

FGD (docs/methods.md): focal fg/bg feature imitation weighted by the teacher's spatial and channel
attention (T 0.5) and box-area masks, an L1 attention loss, and the GcBlock relation loss; 1×1
align conv 32 → 128 channels. P2-P5 as the reference (mmdet's P6 is a max-pool of P5).

How chosen (not tuned): α 5e-5, β 2.5e-5, γ 5e-5, λ 5e-7, T 0.5, the released Faster R-CNN
configs'. Measured at the first step (batch 8, the 4000-iteration shapes teacher): fg 0.40,
bg 0.04, attention 0.05, relation 0.33 beside the detector's 3.0. One 1000-iteration run (seed 0,
the 4000-iteration teacher of 57.9 AP): 9.9 AP against the baseline's 13.2 — these coefficients do
NOT help this student here; no other setting was tried (see the notes of issue 24).
"""
from detectron2.config import LazyCall as L

from d2kd.distill.fgd import FGD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively (docs/results.md: x1.64 here)
)
model.distillers = [L(FGD)(in_features=["p2", "p3", "p4", "p5"], temperature=0.5,
                        alpha_fgd=5e-5, beta_fgd=2.5e-5, gamma_fgd=5e-5, lambda_fgd=5e-7)]
train.output_dir = "output/shapes/faster_rcnn_fgd"
