"""VOC07+12: LSHFM (l2), retinanet R50 R101 fpn (student @ teacher; docs/methods.md §3;
LSHFM README RetinaNet R50@R101: student 82.5 -> 82.6, teacher 83.0).

Loss on the classification tower output unfolded over 3x3 (D = 256*9 = 2304) at every location
where not all 9 anchors are ignored, averaged per image; hash bits 4096 (--hash-num 4096);
std of the hash = std of the teacher's classifier weight, bias 0; beta = 7.0.
Schedule and data: configs/voc/retinanet_R50_fpn.py. Teacher: configs/voc/retinanet_R101_fpn.py (train it first).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import LSHFM
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_R50_fpn import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/voc/retinanet_R101_fpn.py",
    weights="output/voc/retinanet_R101_fpn/model_final.pth",
)
model.distillers = [L(LSHFM)(mode="l2", weight=7.0, hash_bits=4096)]
train.output_dir = "output/voc/retinanet_R50_R101_fpn_lshfm_l2"
