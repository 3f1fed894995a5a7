"""Shapes: RetinaNet student with LSHFM (l2) on the classification tower output unfolded over 3x3.

The student (``retinanet_student_tower128_finetune.py``: towers ending in the teacher's 128 channels,
so no adapter; D = 128·9 = 1152) starts from its own 1000-iteration checkpoint, as LSHFM's
students start from ImageNet weights; its baseline is the same fine-tuning without the KD loss.
β = 7 (reference R50@R101); hash bits 4096 (the reference's RetinaNet runs), std = std of the
teacher's cls_score weight."""
from detectron2.config import LazyCall as L

from d2kd.distill import LSHFM
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student_tower128_finetune import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(LSHFM)(mode="l2", hash_bits=4096, weight=7.0)]
train.output_dir = "output/shapes/retinanet_lshfm_l2"
