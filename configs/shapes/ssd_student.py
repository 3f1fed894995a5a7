"""Shapes SSD student baseline: MobileNetV2-SSDLite at width_mult 0.5 (1.6 M parameters,
0.04 GFLOPs at 128 px) on the teacher's prior layout (configs/shapes/ssd_teacher.py: same
input pipeline, priors and optimizer type: AdamW, here at a higher rate), trained from scratch
without a teacher.

AdamW at 6e-3 for 2000 iterations (seed 0 / 1: 3.1 / 1.4 AP). The teacher's 2e-3 left this
student barely trained (0.35 / 0.17 AP; Chen 2017 on top: 1.5); seed 0 with 4e-3: 2.4, with
1e-2: 0.03 (its box loss jumped at iteration 1400). With Adam at 1e-3 (the reference's student
optimizer) for 1000 iterations it learned nothing (0.04 AP, 2 seeds; Chen 2017 on top: 0.12)."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.ssd import mobilenetv2_ssdlite, square_loaders, ssd_priors
from ..common.schedule import adamw, step_schedule, train
from .ssd_teacher import SHAPES_PRIORS, SIZE

dataloader = square_loaders(dataloader, SIZE, ssd_augmentation=False)
model = mobilenetv2_ssdlite(width_mult=0.5, num_classes=NUM_CLASSES,
                            priors=ssd_priors("aligned", **SHAPES_PRIORS))
optimizer = adamw(lr=6e-3)
train.max_iter = 2000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 1000
train.checkpointer.period = 1000
train.output_dir = "output/shapes/ssd_student"
