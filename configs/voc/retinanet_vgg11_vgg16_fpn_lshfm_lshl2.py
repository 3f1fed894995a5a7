"""VOC07+12: LSHFM (lshl2), retinanet vgg11 vgg16 fpn (student @ teacher; docs/methods.md §3;
LSHFM README RetinaNet VGG11@VGG16 FPN: student 73.2 -> 75.2, teacher 76.6).

Loss on the classification tower output unfolded over 3x3 (D = 256*9 = 2304) at every location
where not all 9 anchors are ignored, averaged per image; hash bits 4096 (--hash-num 4096);
std of the hash = std of the teacher's classifier weight, bias 0; beta = 8.0.
Schedule and data: configs/voc/retinanet_vgg11_fpn.py. Teacher: configs/voc/retinanet_vgg16_fpn.py (train it first).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import LSHFM
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from .retinanet_vgg11_fpn import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="configs/voc/retinanet_vgg16_fpn.py",
    weights="output/voc/retinanet_vgg16_fpn/model_final.pth",
)
model.distillers = [L(LSHFM)(mode="lshl2", weight=8.0, hash_bits=4096)]
train.output_dir = "output/voc/retinanet_vgg11_vgg16_fpn_lshfm_lshl2"
