"""Shapes: Faster R-CNN student with FGFI near-object imitation on every FPN level (p2-p6, the RPN's anchors).

d2kd's FPN extension of FGFI (docs/methods.md §2.3): ψ = 0.5 of the max IoU over the anchors of all
levels, "+1" IoU, normaliser 2·N_p (mask cells over all levels). Choices at this scale:
- weight 0.01, the reference's: one seed each, 1000 iterations, a 30-AP teacher, baseline
  15.1 AP: λ = 0.005 → 17.1, 0.01 → 22.3, 0.02 → 22.0, 0.05 → 20.4, 0.15 diverged (the loss
  sums over the 128 teacher channels, so λ·L starts ≈ 25 at 0.15);
- a 3×3 adapter WITHOUT the ReLU: FPN outputs are signed (the reference imitates post-ReLU conv5_3);
- warm-up 100 iterations (reference 400 of a 10k-iteration epoch; this run has 1000 iterations).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import FGFI, KDSchedule
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively (docs/results.md: x1.64 here)
)
model.distillers = [L(FGFI)(in_features=["p2", "p3", "p4", "p5", "p6"], psi=0.5, max_over="all_levels", adapter_relu=False,
                         weight=0.01, schedule=L(KDSchedule)(warmup_iters=100))]
train.output_dir = "output/shapes/faster_rcnn_fgfi"
