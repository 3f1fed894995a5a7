"""Shapes student baseline: the teacher's layout at 1/4 width (ResNet-10 blocks, width 8)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import optimizer, step_schedule, train

model = retinanet(depth=10, width=8, fpn_channels=32, head_convs=2, anchor_base=8, norm="BN",
                  num_classes=NUM_CLASSES)
optimizer.lr = 0.01
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/retinanet_student"
