"""Shapes: RetinaNet student with LSHFM (lshl2) on the classification tower output unfolded over 3x3.

The student's tower is 32-channel, the teacher's 128: a 1x1 student-side adapter 32 -> 128 is
added before unfolding (D = 128·9 = 1152). β = 7 (reference R50@R101); hash bits 4096
(the reference's RetinaNet runs), std = std of the teacher's cls_score weight."""
from detectron2.config import LazyCall as L

from d2kd.distill import LSHFM
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(LSHFM)(mode="lshl2", hash_bits=4096, weight=7.0)]
train.output_dir = "output/shapes/retinanet_lshfm_lshl2"
