"""Shapes: Faster R-CNN student distilled with FitNet-style L2 imitation of P2-P5.

The levels are PKD's (faster_rcnn_pkd.py: mmdet's first four FPN outputs; P6, a max-pool of P5,
adds nothing P5 does not carry), the weight retinanet_fitnet.py's: one term per level, the mean
squared difference of the adapted student map and the teacher's (docs/methods.md, eq. 8.1). Not
tuned on Faster R-CNN: the benchmark's converged protocol measures it as it is.
"""
from detectron2.config import LazyCall as L

from d2kd.distill import FeatureImitation
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively, as faster_rcnn_fgfi.py
)
model.distillers = [L(FeatureImitation)(in_features=["p2", "p3", "p4", "p5"], weight=1.0)]
train.output_dir = "output/shapes/faster_rcnn_fitnet"
