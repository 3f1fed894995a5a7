"""Shapes: RetinaNet student with FGFI near-object imitation on every FPN level (p3-p7, the head's anchors).

d2kd's FPN extension of FGFI (METHODS.md §2.3): ψ = 0.5 of the max IoU over the anchors of all
levels, "+1" IoU, normaliser 2·N_p (mask cells over all levels). Choices at this scale:
- weight 0.05 (reference 0.01): the loss sums over channels (no ÷C); with the 128-channel
  shapes teacher, Σ_c t² ≈ 300-500 per cell, so the first imitation term is ≈ 270 raw → ≈ 13
  weighted vs ≈ 1.5 of detection loss, the ratio of the reference's log when imitation starts
  (loss_sup 9.6 vs ≈ 1.4); a project probe also found large imitation weights work better on this set;
- a 3×3 adapter WITHOUT the ReLU: FPN outputs are signed (the reference imitates post-ReLU conv5_3);
- warm-up 100 iterations (reference 400 of a 10k-iteration epoch; this run has 1000 iterations).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import FGFI, KDSchedule
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(FGFI)(in_features=["p3", "p4", "p5", "p6", "p7"], psi=0.5, max_over="all_levels", adapter_relu=False,
                         weight=0.05, schedule=L(KDSchedule)(warmup_iters=100))]
train.output_dir = "output/shapes/retinanet_fgfi"
