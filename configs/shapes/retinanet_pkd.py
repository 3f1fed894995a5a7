"""Shapes: RetinaNet student with PKD (Pearson-correlation imitation) of P3-P6.

The released mmrazor setting (``configs/distill/mmdet/pkd/pkd_fpn_retina_x101_retina_r50_2x_coco.py``,
docs/methods.md): ½·MSE of the per-channel standardised maps on mmdet's first four FPN outputs
(P3-P6; P7 is not distilled), loss_weight 10 per level, from the first iteration. The student's
FPN has 32 channels and the teacher's 128: a 1×1 adapter per level (d2kd's, stripped at export).
Unlike FitNet/FGFI here (retinanet_fitnet.py), P6 needs no exclusion: the shapes teacher's large
P6/P7 magnitudes are standardised away. The weight stays the reference's (no sweep). Check,
one seed, 1000 iterations, the 43.7-AP RetinaNet teacher (output/curves/retinanet_teacher_12000):
9.1 AP against 5.2 for the baseline (same seed, same machine); the weighted terms went from 9.9
to 2.2 (P6: 1.5).
"""
from detectron2.config import LazyCall as L

from d2kd.distill.pkd import PKD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/shapes/retinanet_teacher.py",
    weights="output/shapes/retinanet_teacher/model_final.pth",
)
model.distillers = [L(PKD)(in_features=["p3", "p4", "p5", "p6"], weight=10.0)]
train.output_dir = "output/shapes/retinanet_pkd"
