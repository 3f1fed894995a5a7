"""Shapes RetinaNet student whose head towers end in 128 channels, the teacher's tower width
(conv_dims [32, 128] instead of [32, 32]; 0.35 M parameters against 0.20 M), trained from
scratch for 1000 iterations: the starting point of the LSHFM RetinaNet runs and of their
baseline (``retinanet_student_tower128_finetune.py``). With the teacher's width the tower
output that LSHFM mimics has the teacher's dimension, as in every pair the paper runs (the
R50@R101 and VGG11@VGG16 heads are both 256 wide), so no adapter is needed."""
from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

model.head.conv_dims = [32, 128]
train.output_dir = "output/shapes/retinanet_student_tower128"
