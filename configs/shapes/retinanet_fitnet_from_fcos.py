"""Shapes, a teacher from another family: the RetinaNet student imitates the FCOS teacher's p3-p5
(FitNet L2, 1×1 adapters): feature methods need only feature maps at equal strides, which both
FPNs have. Methods that compare the dense heads row by row (soft labels, ADL) are refused for
this pair at build time: FCOS's one point per location is not RetinaNet's 9 anchors."""
from .fcos_fitnet import model as _fcos_fitnet
from .retinanet_fitnet import dataloader, lr_multiplier, model, optimizer, train

model.teacher = _fcos_fitnet.teacher
train.output_dir = "output/shapes/retinanet_fitnet_from_fcos"
