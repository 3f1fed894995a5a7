"""Shapes student baseline: the teacher's layout at 1/4 width (ResNet-10 blocks, width 8, FPN 32,
2 head convs: 0.2 M parameters), the teacher's optimizer (AdamW) at a student's lr: 1000
iterations reached 4.5 AP at lr 5e-3 against 3.8 at 2e-3 (the teacher's lr, 2e-3, is the most
its 4x wider layers take: at 3e-3 and 5e-3 it had learned nothing after 500 iterations)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import adamw, step_schedule, train

model = retinanet(depth=10, width=8, fpn_channels=32, head_convs=2, anchor_base=8, norm="BN",
                  fpn_norm="BN", head_norm="BN", num_classes=NUM_CLASSES)
optimizer = adamw(lr=5e-3)
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/retinanet_student"
