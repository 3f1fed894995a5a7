"""Shapes teacher: RetinaNet on a ResNet-10-layout FPN at width 32 (FPN 128, 2 head convs:
2.7 M parameters; BN in the backbone, the FPN and, per level, the head), trained from scratch
with AdamW for 6000 iterations: 8.5 / 16.8 / 24.1 / 31.6 AP after 1500 / 3000 / 4500 / 6000.

RetinaNet learns slowly from scratch here (its students too: 4.5 AP after 1000 iterations,
13.7 after 4000), hence the long schedule, trained once and reused by every RetinaNet run.
The ResNet-18 layout with 4 head convs learned slower per iteration (3.8 AP after 1000
iterations against 6.2) at a higher cost per step.

Why the head has BN: with the paper's head (plain convs, N(0, 0.01) init) on from-scratch FPN
features the head's output barely depends on its input for hundreds of iterations (its weights
stay at their init; 0.08 AP after 500 iterations). Per-level BN needs >= 2 values per channel on
p7 (1x1 at 128 px): at least 2 images per process."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import adamw, step_schedule, train

model = retinanet(depth=10, width=32, fpn_channels=128, head_convs=2, anchor_base=8, norm="BN",
                  fpn_norm="BN", head_norm="BN", num_classes=NUM_CLASSES)
optimizer = adamw(lr=2e-3)
train.max_iter = 6000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 1500
train.checkpointer.period = 1500
train.output_dir = "output/shapes/retinanet_teacher"
