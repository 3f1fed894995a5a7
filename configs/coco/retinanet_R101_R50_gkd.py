"""GKD (ECCV 2022) on COCO: RetinaNet R101-FPN 2x teacher -> R50-FPN student.

Only a two-stage config is released; the one-stage path follows the reference's
``kd_one_stage_strategy.py``: PGM as for Faster R-CNN (prototypes on P3-P7), robustness-weighted
decoupled imitation of P3-P7 with the per-level losses summed (the one-stage code's reduction;
fg 1, bg 4, attenuation on), positive anchors replace the GT, weighted soft labels on the
positive anchors' class logits (T 2, softmax as the reference KDLoss computes it), global loss
off. 2x schedule: 180k iterations at 16 images, lr 0.01, warm-up 500, steps at epochs 16/22.

Start: as in the paper, the student is initialised from the TRAINED R50-FPN 2x baseline
(``train.init_checkpoint`` = output of configs/coco/retinanet_R50_2x.py); for a from-ImageNet
run set ``train.init_checkpoint=detectron2://ImageNetPretrained/MSRA/R-50.pkl``.
Teacher: output of configs/coco/retinanet_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill import GKD
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/coco/retinanet_R101_2x.py",
    weights="output/coco/retinanet_R101_2x/model_final.pth",
)
model.distillers = [L(GKD)(level_reduction="sum", pgm_data="${dataloader}", max_iter="${train.max_iter}")]
train.init_checkpoint = "output/coco/retinanet_R50_2x/model_final.pth"  # the trained student
train.output_dir = "output/coco/retinanet_R101_R50_gkd"
