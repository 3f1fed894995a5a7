"""Shapes: a Mask R-CNN student taught by the Faster R-CNN teacher (configs/shapes/
faster_rcnn_teacher.py) with FGFI, the Faster R-CNN FGFI settings (configs/shapes/
faster_rcnn_fgfi.py): the box/feature methods distil as for Faster R-CNN; the mask head trains on
its own loss, which the distillation meta-architecture keeps."""
from .faster_rcnn_fgfi import model as _fgfi
from .mask_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = _fgfi._target_
model.teacher = _fgfi.teacher
model.distillers = _fgfi.distillers
train.output_dir = "output/shapes/mask_rcnn_fgfi"
