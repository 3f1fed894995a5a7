"""FGD (CVPR 2022) on COCO: RetinaNet R101-FPN 2x teacher -> R50-FPN 2x student.

Published: PaddleDetection (configs/slim/distill/README.md, ``retinanet_resnet101_coco_distill.yml``):
RetinaNet R101 2x teacher (40.6) -> R50 2x 39.1 -> 40.8 AP; yzd-v/FGD README: RetinaNet RX101-64x4d
teacher -> R50 2x 37.4 -> 40.7 AP (``fgd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``;
the R101 -> R50 config ``fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py`` is released
with the same coefficients). The teacher here is configs/coco/retinanet_R101_2x.py.

Released setting: P3-P7 (``neck.fpn_convs.0-4``), T 0.5, alpha 1e-3, beta 5e-4, gamma 5e-4,
lambda 5e-6 (both repositories), boxes scaled by the unpadded image size (``box_frame="image"``),
gradient norm clipped at 35, SGD lr 0.01, 2x (24 epochs, steps 16/22), 16 images.
Not reproduced: the reference's ``init_student=True`` ("inheriting strategy": the student starts
with the teacher's neck and head); this config starts from ImageNet R-50 like the baseline.
Teacher: output of configs/coco/retinanet_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill.fgd import FGD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/coco/retinanet_R101_2x.py",
    weights="output/coco/retinanet_R101_2x/model_final.pth",
)
model.distillers = [L(FGD)(in_features=["p3", "p4", "p5", "p6", "p7"], temperature=0.5, alpha_fgd=1e-3,
                        beta_fgd=5e-4, gamma_fgd=5e-4, lambda_fgd=5e-6, box_frame="image")]
train.clip_grad_norm = 35.0
train.output_dir = "output/coco/retinanet_R101_R50_fgd"
