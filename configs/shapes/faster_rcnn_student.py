"""Shapes student baseline: the teacher's layout at 1/4 width (ResNet-10 blocks, width 8)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.faster_rcnn_resnet_fpn import faster_rcnn
from ..common.schedule import optimizer, step_schedule, train

model = faster_rcnn(depth=10, width=8, fpn_channels=32, fc_dim=128, anchor_base=8, norm="BN",
                    num_classes=NUM_CLASSES, rpn_batch=128, roi_batch=128)
optimizer.lr = 0.02
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/faster_rcnn_student"
