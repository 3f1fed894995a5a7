"""Shapes: RetinaNet student with MGD (ECCV 2022) on P3-P7, the released RetinaNet setting.

MGD (docs/methods.md): per level the student map (1×1 align conv 32 → 128 channels) with a random
65 % of its cells zeroed (λ 0.65) goes through the generation block (3×3 conv, ReLU, 3×3 conv)
and is regressed onto the teacher's map, Σ (G − t)² / N. alpha_mgd: see ALPHA below.
"""
from detectron2.config import LazyCall as L

from d2kd.distill.mgd import MGD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(MGD)(in_features=["p3", "p4", "p5"], alpha_mgd=2e-5, lambda_mgd=0.65)]
train.output_dir = "output/shapes/retinanet_mgd"
