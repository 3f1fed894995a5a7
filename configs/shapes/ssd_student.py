"""Shapes SSD student baseline: MobileNetV2-SSDLite at width_mult 0.5 (1.6 M parameters,
0.04 GFLOPs at 128 px) on the teacher's prior layout (configs/shapes/ssd_teacher.py: same
input pipeline, priors and optimizer), trained from scratch without a teacher."""
import torch

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.ssd import mobilenetv2_ssdlite, square_loaders, ssd_priors
from ..common.schedule import step_schedule, train
from .ssd_teacher import SHAPES_PRIORS, SIZE

dataloader = square_loaders(dataloader, SIZE, ssd_augmentation=False)
model = mobilenetv2_ssdlite(width_mult=0.5, num_classes=NUM_CLASSES,
                            priors=ssd_priors("aligned", **SHAPES_PRIORS))
optimizer = L(torch.optim.Adam)(params=L(get_default_optimizer_params)(), lr=1e-3)
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/ssd_student"
