"""Shapes: Faster R-CNN student with FitNet imitation of p2-p6 and soft labels on ROI logits.

Imitation weight 0.1: the shapes teacher's FPN maps have an rms of 1-2 (p2 2.2), so the five
per-level MSEs start near 15 together; at weight 1 the SGD student diverged within 200 steps."""
from detectron2.config import LazyCall as L

from d2kd.distill import FeatureImitation, SoftLabelKD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively (docs/results.md: x1.64 here)
)
model.distillers = [
    L(FeatureImitation)(in_features=["p2", "p3", "p4", "p5", "p6"], weight=0.1),
    L(SoftLabelKD)(temperature=1.0, weight=1.0),
]
train.output_dir = "output/shapes/faster_rcnn_softlabel"
