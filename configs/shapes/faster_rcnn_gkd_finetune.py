"""Shapes: ``faster_rcnn_gkd.py`` with the paper's start, the student's own trained checkpoint
(docs/methods.md §4.3); its baseline is ``faster_rcnn_student_finetune.py``, the same 1000 iterations
from the same checkpoint without the teacher."""
from .faster_rcnn_gkd import dataloader, lr_multiplier, model, optimizer, train
from .faster_rcnn_student_finetune import train as _finetune

train.init_checkpoint = _finetune.init_checkpoint
train.output_dir = "output/shapes/faster_rcnn_gkd_finetune"
