"""Shapes: FCOS student with CWD (channel-wise spatial-softmax KL, τ = 1) on P3-P6, the RetinaNet
CWD settings (configs/shapes/retinanet_cwd.py: mmrazor's loss_weight 10; P7 is a 1×1 map on the
128-px images, whose term is identically 0) from the FCOS teacher. A 1×1 adapter per level
(32 → 128 channels; stripped at export)."""
from detectron2.config import LazyCall as L

from d2kd.distill.cwd import CWD
from d2kd.modeling.meta_arch import DistillationFCOS
from d2kd.teacher import build_teacher

from .fcos_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationFCOS
model.teacher = L(build_teacher)(
    config_file="configs/shapes/fcos_teacher.py",
    weights="output/shapes/fcos_teacher/model_final.pth",
)
model.distillers = [L(CWD)(in_features=["p3", "p4", "p5", "p6"], tau=1.0, weight=10.0)]
train.output_dir = "output/shapes/fcos_cwd"
