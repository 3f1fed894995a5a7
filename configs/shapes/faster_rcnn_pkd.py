"""Shapes: Faster R-CNN student with PKD (Pearson-correlation imitation) of P2-P5.

The released mmrazor setting (``configs/distill/mmdet/pkd/pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco.py``,
docs/methods.md): ½·MSE of the per-channel standardised maps on mmdet's first four FPN outputs
(P2-P5; P6, a max-pool of P5, is not distilled), loss_weight 6 per level, from the first
iteration. The student's FPN has 32 channels and the teacher's 128: a 1×1 adapter per level
(d2kd's, stripped at export; the reference distils equal channels). The weight stays the
reference's: PKD's term is ≈ 1 − r per level whatever the features' scale, so the reference's
balance against the detection losses carries over (no sweep). Check, one seed, 1000 iterations,
the 65.7-AP Faster R-CNN teacher (output/curves/faster_rcnn_teacher_8000): 22.4 AP against 12.0
for the baseline (same seed, same machine); the four weighted terms went from 6.0 to 2.0 each.
"""
from detectron2.config import LazyCall as L

from d2kd.distill.pkd import PKD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively, as faster_rcnn_fgfi.py
)
model.distillers = [L(PKD)(in_features=["p2", "p3", "p4", "p5"], weight=6.0)]
train.output_dir = "output/shapes/faster_rcnn_pkd"
