"""Shapes teacher: Faster R-CNN on a ResNet-18-layout FPN at width 32 (BN, trained from scratch)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.faster_rcnn_resnet_fpn import faster_rcnn
from ..common.schedule import optimizer, step_schedule, train

model = faster_rcnn(depth=18, width=32, fpn_channels=128, fc_dim=256, anchor_base=8, norm="BN",
                    num_classes=NUM_CLASSES, rpn_batch=128, roi_batch=128)
optimizer.lr = 0.02
train.max_iter = 1500
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/faster_rcnn_teacher"
