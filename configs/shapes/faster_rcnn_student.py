"""Shapes student baseline: the teacher's layout at 1/4 width (ResNet-10 blocks, width 8, FPN 32,
0.35 M parameters) and the teacher's recipe (SGD lr 0.02, 64 sampled RoIs and 300 proposals per
image: 128-px images hold at most 8 objects; 128 RoIs and the FPN default of 1000 proposals made
each step 1.6x slower and reached 9.7 instead of 15.1 AP after 1000 iterations)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.faster_rcnn_resnet_fpn import faster_rcnn
from ..common.schedule import optimizer, step_schedule, train

model = faster_rcnn(depth=10, width=8, fpn_channels=32, fc_dim=128, anchor_base=8, norm="BN",
                    num_classes=NUM_CLASSES, rpn_batch=128, roi_batch=64,
                    pre_nms_topk=(600, 300), post_nms_topk=(300, 300))
optimizer.lr = 0.02
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/faster_rcnn_student"
