"""Shapes: Faster R-CNN student with FGFI near-object imitation on p2-p6 with the RPN's anchors.

d2kd extension of FGFI to FPN (METHODS.md §2.3): ψ·max IoU over the anchors of all levels.
Choices at this scale (see retinanet_fgfi.py): 3x3 adapter without ReLU (signed FPN maps),
weight 1.0 (reference 0.01), warm-up 100 iterations (reference 400)."""
from detectron2.config import LazyCall as L

from d2kd.distill import FGFI, KDSchedule
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
)
model.distillers = [L(FGFI)(in_features=["p2", "p3", "p4", "p5", "p6"], psi=0.5, max_over="all_levels", adapter_relu=False,
                         weight=1.0, schedule=L(KDSchedule)(warmup_iters=100))]
train.output_dir = "output/shapes/faster_rcnn_fgfi"
