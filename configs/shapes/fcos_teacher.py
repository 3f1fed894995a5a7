"""Shapes teacher: FCOS (Detectron2's anchor-free dense detector) on the RetinaNet teacher's
backbone (ResNet-10 layout at width 32, FPN 128, BN; 2 head convs with per-level BN), AdamW
lr 2e-3, 6000 iterations: the RetinaNet teacher's recipe (configs/shapes/retinanet_teacher.py)
with FCOS's head, point assignment and centerness. Per-level BN needs at least 2 images per
process."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.fcos_resnet_fpn import fcos
from ..common.schedule import adamw, step_schedule, train

model = fcos(depth=10, width=32, fpn_channels=128, head_convs=2, norm="BN", fpn_norm="BN", head_norm="BN",
             num_classes=NUM_CLASSES)
optimizer = adamw(lr=2e-3)
train.max_iter = 6000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 1500
train.checkpointer.period = 1500
train.output_dir = "output/shapes/fcos_teacher"
