"""Shapes teacher: RetinaNet on a ResNet-18-layout FPN at width 32 (BN, trained from scratch)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import optimizer, step_schedule, train

model = retinanet(depth=18, width=32, fpn_channels=128, head_convs=4, anchor_base=8, norm="BN",
                  num_classes=NUM_CLASSES)
optimizer.lr = 0.01
train.max_iter = 1500
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/retinanet_teacher"
