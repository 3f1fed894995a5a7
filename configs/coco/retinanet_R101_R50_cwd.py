"""CWD (ICCV 2021) on COCO: RetinaNet R101-FPN 2x teacher -> R50-FPN student, 2x.

Mirrors PaddleDetection ``configs/slim/distill/retinanet_resnet101_coco_distill_cwd.yml`` with
``ppdet/slim/distill_model.py`` (``CWDDistillModel``) (docs/methods.md): ``CWDFeatureLoss`` on every
neck output (P3-P7), τ = 1, weight 5 per level, ``log(1e-5 + softmax)`` as that loss computes it
(``log_eps=1e-5``; mmrazor's exact log-softmax is ``log_eps=None``), no feature normalisation;
equal channels (256), no adapter. Student from ImageNet, 2x: 180k iterations at 16 images,
lr 0.01, steps at epochs 16/22 (configs/coco/retinanet_R50_2x.py).

Published (PaddleDetection configs/slim/distill/README.md, CWD table): teacher RetinaNet R101 2x
40.6 mAP; student R50 2x 39.1 -> CWD 40.5 (+1.4). mmrazor's RetinaNet CWD config
(``cwd_fpn_retina_r101_retina_r50_1x_coco.py``: 1x, loss_weight 10, P3-P7) publishes no number;
its CWD row is GFL R101 2x -> R50 1x on the class logits, 40.2 -> 41.9. Teacher here: output of
configs/coco/retinanet_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill.cwd import CWD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/coco/retinanet_R101_2x.py",
    weights="output/coco/retinanet_R101_2x/model_final.pth",
)
model.distillers = [L(CWD)(in_features=["p3", "p4", "p5", "p6", "p7"], tau=1.0, log_eps=1e-5, weight=5.0)]
train.output_dir = "output/coco/retinanet_R101_R50_cwd"
