"""Shapes: Faster R-CNN student with FitNet imitation of p2-p6 and soft labels on ROI logits."""
from detectron2.config import LazyCall as L

from d2kd.distill import FeatureImitation, SoftLabelKD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
)
model.distillers = [
    L(FeatureImitation)(in_features=["p2", "p3", "p4", "p5", "p6"], weight=1.0),
    L(SoftLabelKD)(temperature=1.0, weight=1.0),
]
train.output_dir = "output/shapes/faster_rcnn_softlabel"
