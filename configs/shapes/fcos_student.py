"""Shapes student baseline: FCOS at 1/4 of the teacher's width (ResNet-10 layout, width 8, FPN 32,
2 head convs), the RetinaNet student's recipe (AdamW lr 5e-3, 1000 iterations;
configs/shapes/retinanet_student.py)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.fcos_resnet_fpn import fcos
from ..common.schedule import adamw, step_schedule, train

model = fcos(depth=10, width=8, fpn_channels=32, head_convs=2, norm="BN", fpn_norm="BN", head_norm="BN",
             num_classes=NUM_CLASSES)
optimizer = adamw(lr=5e-3)
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/fcos_student"
