"""VOC07+12 -> VOC07 test: MobileNetV2-SSDLite (pytorch-ssd ``mb2-ssd-lite``, 3000 priors), the
SSD-KD student, trained WITHOUT a teacher on the distillation recipe (the controlled baseline of
``ssd_mbv2_lite_vgg16_chen2017*.py``; SSD-KD README: baseline 68.68 mAP).

Recipe of SsisyphusTao/SSD-Knowledge-Distillation ``train.py --teacher_model``: Adam lr 1.25e-4
(no weight decay), batch 128, 70 epochs at a constant lr, ssd.pytorch augmentation at 300 px,
RGB, (img − 127)/128 (docs/methods.md §1.2). One epoch = ceil(16551 / 128) = 130 iterations.

Initial weights: pytorch-ssd's ``mb2-ssd-lite-mp-0_686.pth`` (the README's 68.6 student), converted
once::

    python -c "import torch; from d2kd.modeling.backbone.mobilenetv2_ssdlite import \
      convert_pytorch_ssd_mobilenetv2 as c; sd = torch.load('models/mb2-ssd-lite-mp-0_686.pth', \
      map_location='cpu'); torch.save({'model': c(sd)}, 'output/pretrained/mbv2_ssdlite_voc.pth')"

The reference's HEAD comments that load out (the student starts from random init); that is
``train.init_checkpoint=""``. The README's distilled numbers (69.45 / 69.99 vs 68.68) only make
sense from the 68.6 checkpoint, hence this default.

Scaling: with a total batch B keep 70 epochs (``train.max_iter = 70 * ceil(16551 / B)``) and
scale the lr linearly (``optimizer.lr = 1.25e-4 * B / 128``; square-root scaling is the other
common choice for Adam), e.g. ``dataloader.train.total_batch_size=32 optimizer.lr=3.125e-05
train.max_iter=36260``.
"""
import math

import torch
from fvcore.common.param_scheduler import ConstantParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from ..common.data.voc import NUM_CLASSES, voc_dataloader
from ..common.models.ssd import mobilenetv2_ssdlite, square_loaders
from ..common.schedule import train

SIZE = 300
BATCH = 128
EPOCH = math.ceil(16551 / BATCH)

dataloader = square_loaders(voc_dataloader(total_batch_size=BATCH, num_workers=4, image_format="RGB"), SIZE)
model = mobilenetv2_ssdlite(num_classes=NUM_CLASSES)
optimizer = L(torch.optim.Adam)(params=L(get_default_optimizer_params)(), lr=1.25e-4)
train.max_iter = 70 * EPOCH
lr_multiplier = L(ConstantParamScheduler)(value=1.0)
train.eval_period = 10 * EPOCH
train.checkpointer.period = 10 * EPOCH
train.init_checkpoint = "output/pretrained/mbv2_ssdlite_voc.pth"
train.output_dir = "output/voc/ssd_mbv2_lite"
