"""Shapes: RetinaNet student with LSHFM (lsh) on the classification tower output unfolded over 3x3:
``retinanet_lshfm_l2.py`` (the student, its starting checkpoint, the teacher, β = 7, 4096 hash
bits with the std of the teacher's cls_score weight) in mode "lsh"."""
from .retinanet_lshfm_l2 import dataloader, lr_multiplier, model, optimizer, train

model.distillers[0].mode = "lsh"
train.output_dir = "output/shapes/retinanet_lshfm_lsh"
