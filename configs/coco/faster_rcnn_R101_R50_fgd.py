"""FGD (CVPR 2022) on COCO: Faster R-CNN R101-FPN 2x teacher -> R50-FPN 2x student.

Published (yzd-v/FGD README): Faster R-CNN R50 2x 38.4 -> 42.0 AP with a Cascade Mask R-CNN
RX101-32x4d-DCN teacher (``fgd_cascade_mask_rcnn_rx101_32x4d_distill_faster_rcnn_r50_fpn_2x_coco.py``).
The R101 -> R50 config mirrored here (``fgd_faster_rcnn_r101_fpn_2x_distill_faster_rcnn_r50_fpn_2x_coco.py``)
is released with the same coefficients and no number in the README. The teacher is
configs/coco/faster_rcnn_R101_2x.py (Detectron2's model zoo has no Cascade RX101-DCN).

Released setting: P2-P5 (``neck.fpn_convs.0-3``; mmdet's P6 is a max-pool of P5, not distilled),
T 0.5, alpha 5e-5, beta 2.5e-5, gamma 5e-5, lambda 5e-7, boxes scaled by the unpadded image size
(``box_frame="image"``), gradient norm clipped at 35, SGD lr 0.02, 2x, 16 images.
Not reproduced: the R101 config's ``init_student=True`` ("inheriting strategy": the student
starts with the teacher's neck and heads); this config starts from ImageNet R-50 like the baseline.
Teacher: output of configs/coco/faster_rcnn_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill.fgd import FGD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/coco/faster_rcnn_R101_2x.py",
    weights="output/coco/faster_rcnn_R101_2x/model_final.pth",
)
model.distillers = [L(FGD)(in_features=["p2", "p3", "p4", "p5"], temperature=0.5, alpha_fgd=5e-5,
                        beta_fgd=2.5e-5, gamma_fgd=5e-5, lambda_fgd=5e-7, box_frame="image")]
train.clip_grad_norm = 35.0
train.output_dir = "output/coco/faster_rcnn_R101_R50_fgd"
