"""Shapes: ``faster_rcnn_fgfi.py`` started from the student's own trained checkpoint, like
``faster_rcnn_gkd_finetune.py`` (FGFI's reference trains from ImageNet weights); baseline
``faster_rcnn_student_finetune.py``."""
from .faster_rcnn_fgfi import dataloader, lr_multiplier, model, optimizer, train
from .faster_rcnn_student_finetune import train as _finetune

train.init_checkpoint = _finetune.init_checkpoint
train.output_dir = "output/shapes/faster_rcnn_fgfi_finetune"
