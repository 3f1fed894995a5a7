"""GKD (ECCV 2022) on COCO: Faster R-CNN R101-FPN 2x teacher -> R50-FPN student, the released
setting (docs/methods.md §4): PGM prototypes (K 10, alpha 10, density sigma 0.1 / quantile 0.4,
<= 800 images per class, boxes > 30 px) regenerated every epoch (pgm_period=None: one pass over
the training set, 117k images / 16 = 7330 iterations), RDM: robustness-weighted decoupled
imitation of P2-P6 (fg 1, bg 4, 3x3 adapters, attenuation 1 - iter/max_iter), weighted soft
labels on the positive ROIs (T 2), positive proposals replace the GT, global loss off.
2x schedule: 180k iterations at 16 images, lr 0.02, warm-up 500, steps at epochs 16/22.

Start: as in the paper (§4.3), the student is initialised from the TRAINED R50-FPN 2x baseline
(``train.init_checkpoint`` = output of configs/coco/faster_rcnn_R50_2x.py); results from this
config are therefore "from the converged student". For a from-ImageNet comparison set
``train.init_checkpoint=detectron2://ImageNetPretrained/MSRA/R-50.pkl``.
Teacher: output of configs/coco/faster_rcnn_R101_2x.py."""
from detectron2.config import LazyCall as L

from d2kd.distill import GKD
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_R50_2x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/coco/faster_rcnn_R101_2x.py",
    weights="output/coco/faster_rcnn_R101_2x/model_final.pth",
)
model.distillers = [L(GKD)(pgm_data="${dataloader}", max_iter="${train.max_iter}")]
train.init_checkpoint = "output/coco/faster_rcnn_R50_2x/model_final.pth"  # the trained student
train.output_dir = "output/coco/faster_rcnn_R101_R50_gkd"
