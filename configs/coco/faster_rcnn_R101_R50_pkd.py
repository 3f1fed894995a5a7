"""PKD (NeurIPS 2022) on COCO: Faster R-CNN R101-FPN 2x teacher -> R50-FPN student, 2x.

Mirrors mmrazor ``configs/distill/mmdet/pkd/pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco.py``
(docs/methods.md): PKD on the neck's first four outputs (P2-P5; mmdet's P6 is a max-pool of P5 and
is not distilled), ``PKDLoss(loss_weight=6)`` per level, from the first iteration, no schedule;
equal channels (256), so no adapter: the reference's computation exactly. The student starts from
ImageNet (mmrazor builds it from ``faster-rcnn_r50_fpn_2x_coco.py``, ImageNet-initialised), 2x:
180k iterations at 16 images, lr 0.02, steps at epochs 16/22 (configs/coco/faster_rcnn_R50_2x.py).

Published (mmrazor README, PKD table): teacher Faster R-CNN R101 2x 39.8 mAP; student R50 2x
38.4 -> PKD 40.3 (+1.9). Teacher here: output of configs/coco/faster_rcnn_R101_2x.py (the mmdet
checkpoints are not loadable here)."""
from detectron2.config import LazyCall as L

from d2kd.distill.pkd import PKD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/coco/faster_rcnn_R101_2x.py",
    weights="output/coco/faster_rcnn_R101_2x/model_final.pth",
)
model.distillers = [L(PKD)(in_features=["p2", "p3", "p4", "p5"], weight=6.0)]
train.output_dir = "output/coco/faster_rcnn_R101_R50_pkd"
