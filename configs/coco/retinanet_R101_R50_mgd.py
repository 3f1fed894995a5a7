"""MGD (ECCV 2022) on COCO: RetinaNet R101-FPN 2x teacher -> R50-FPN 2x student.

Published (yzd-v/MGD det/README.md, mmrazor configs/distill/mmdet/mgd/README.md): RetinaNet
RX101-64x4d teacher (41.0) -> R50 2x 37.4 -> 41.0 AP. Detectron2's model zoo has no RetinaNet
X101, so the teacher is the R101-FPN 2x of configs/coco/retinanet_R101_2x.py (GKD's).

Released setting (``det/configs/distillers/mgd/retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``):
P3-P7 (``neck.fpn_convs.0-4``), alpha_mgd 2e-5, lambda_mgd 0.65, 256 channels on both sides (no
align conv), gradient norm clipped at 35, SGD lr 0.01, 2x (24 epochs, steps 16/22), 16 images.
Not reproduced: the reference's ``init_student=True`` copies the teacher's neck and head into the
student before training ("inheriting strategy"); this config starts from ImageNet R-50 like the
baseline (set ``train.init_checkpoint`` to a checkpoint you built that way to follow it).
Teacher: output of configs/coco/retinanet_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill.mgd import MGD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/coco/retinanet_R101_2x.py",
    weights="output/coco/retinanet_R101_2x/model_final.pth",
)
model.distillers = [L(MGD)(in_features=["p3", "p4", "p5", "p6", "p7"], alpha_mgd=2e-5, lambda_mgd=0.65)]
train.clip_grad_norm = 35.0
train.output_dir = "output/coco/retinanet_R101_R50_mgd"
