"""Shapes: Faster R-CNN student distilled with GKD (ECCV 2022): PGM prototypes + RDM
(robustness-weighted decoupled fg/bg imitation of P2-P6 and weighted ROI soft labels).

128-px images: PGM boxes > 8 px (30 px on COCO), level rule canonical size 14 (56 on COCO; the
shapes anchors are 1/4 of COCO's). PGM every epoch-equivalent (2000 images / 8 = 250 iters).
The student starts from scratch here; set ``train.init_checkpoint=output/shapes/faster_rcnn_student/
model_final.pth`` for the paper's start from the trained student."""
from detectron2.config import LazyCall as L

from d2kd.distill import GKD
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
    L(GKD)(canonical_size=14, pgm_min_box_size=8, pgm_max_images_per_class=40,
           # the PGM's images and the attenuation's length, read from this config by the model
           # itself (any trainer that calls model(batch) runs the PGM)
           pgm_data="${dataloader}", max_iter="${train.max_iter}")
]
train.output_dir = "output/shapes/faster_rcnn_gkd"
