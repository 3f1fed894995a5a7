"""Shapes: RetinaNet student with FGFI near-object imitation on every FPN level (p3-p7, head anchors).

d2kd extension of FGFI to FPN (METHODS.md §2.3): ψ·max IoU over the anchors of all levels.
Choices at this scale (1000 iterations, 128-px images): a 3x3 adapter without ReLU (FPN maps
are signed), weight 1.0 instead of 0.01 (the 1/(2·N_p) normaliser does not divide by C and the
shapes nets are small, so 0.01 makes the term negligible; large imitation weights helped on this
set) and a 100-iteration warm-up instead of 400 (10 % of the run, ~ as the reference's 400 of
10k iterations of its first epoch is a short settling period)."""
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
                         weight=1.0, schedule=L(KDSchedule)(warmup_iters=100))]
train.output_dir = "output/shapes/retinanet_fgfi"
