"""Shapes: Faster R-CNN student with MGD (ECCV 2022) on P2-P5, the released Faster R-CNN setting.

MGD (docs/methods.md): per level the student map (1×1 align conv 32 → 128 channels) with a random
45 % of its cells zeroed (λ 0.45, the Faster R-CNN configs') goes through the generation block
(3×3 conv, ReLU, 3×3 conv) and is regressed onto the teacher's map, Σ (G − t)² / N. P2-P5 as the
reference (mmdet's P6 is a max-pool of P5, not distilled).

How chosen (not tuned): α = 5e-7, the released Faster R-CNN config's. Measured at the first step
(batch 8, the 4000-iteration shapes teacher): P2 0.19, P3 0.03, P4 0.005, P5 0.0007 beside the
detector's 3.0, i.e. a light term, as on COCO where the reference picked α 40× below RetinaNet's.
One 1000-iteration run (seed 0, the 4000-iteration teacher of 57.9 AP): 12.1 AP against the
baseline's 13.2 (within one seed's spread); no other setting was tried.
"""
from detectron2.config import LazyCall as L

from d2kd.distill.mgd import MGD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively (docs/results.md: x1.64 here)
)
model.distillers = [L(MGD)(in_features=["p2", "p3", "p4", "p5"], alpha_mgd=5e-7, lambda_mgd=0.45)]
train.output_dir = "output/shapes/faster_rcnn_mgd"
