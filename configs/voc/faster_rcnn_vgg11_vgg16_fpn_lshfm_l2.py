"""VOC07+12: LSHFM (l2), faster rcnn vgg11 vgg16 fpn (student @ teacher; docs/methods.md §3;
LSHFM README Faster R-CNN VGG11@VGG16 FPN: student 75.1 -> 76.8, teacher 79.0).

Loss on the box head's fc7 output (D = 1024) of the student's 512 sampled proposals/image, the teacher's box
head run on the same boxes; hash bits 4*D = 4096;
std of the hash = std of the teacher's classifier weight, bias 0; beta = 7.0.
Schedule and data: configs/voc/faster_rcnn_vgg11_fpn.py. Teacher: configs/voc/faster_rcnn_vgg16_fpn.py (train it first).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import LSHFM
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_vgg11_fpn import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/voc/faster_rcnn_vgg16_fpn.py",
    weights="output/voc/faster_rcnn_vgg16_fpn/model_final.pth",
)
model.distillers = [L(LSHFM)(mode="l2", weight=7.0)]
train.output_dir = "output/voc/faster_rcnn_vgg11_vgg16_fpn_lshfm_l2"
