"""Shapes SSD teacher: VGG16-SSD in the aligned (SSD-KD re-headed) layout at width_mult 0.25
(all VGG/extra channels /4: 1.9 M parameters, 0.36 GFLOPs at 128 px), trained from scratch, with
BN after every convolution (``norm="BN"``, like torchvision's ``vgg16_bn``) and AdamW at 2e-3 for
3000 iterations: 1.8 / 5.6 / 10.5 AP after 1000 / 2000 / 3000 (one run, 2026-12-01, ~33 min on one
thread). Without BN the loss stayed flat at 7.1 from iteration 400 to 900 (0.02 AP after 500);
with BN but Adam at 1e-3 (the reference student's optimizer) it learned 5x slower: 0.06 / 0.32 /
0.94 AP after 500 / 1000 / 1500; at the student's 6e-3 (configs/shapes/ssd_student.py) it did not
learn (loss flat at ~7.1, 0.03 AP after 3000; seed 0).

Input: the 128-px shapes images through a fixed ``Resize((128, 128))`` (no-op size-wise), RGB,
(img − 127) / 128, random flip (no ssd.pytorch photometric/expand/crop augmentation: short CPU
runs converge faster without it; ``square_loaders(..., ssd_augmentation=True)`` turns it on).
Priors (:data:`SHAPES_PRIORS`): the aligned layout's 6 sources (8, 4, 2, 1, 1, 1 at 128 px),
6 priors/location (522 priors), sizes rescaled to the small shapes objects, centres from the
feature maps (``steps=None``). Teacher and student share them (Chen et al. distils per prior).
Optimizer: AdamW (the shapes RetinaNet teacher's, ``configs/common/schedule.py:adamw``), batch 8.
"""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.ssd import square_loaders, ssd_priors, vgg16_ssd300
from ..common.schedule import adamw, step_schedule, train

SIZE = 128
SHAPES_PRIORS = dict(image_size=SIZE, min_sizes=[16, 32, 52, 72, 92, 112],
                     max_sizes=[32, 52, 72, 92, 112, 132], steps=None)

dataloader = square_loaders(dataloader, SIZE, ssd_augmentation=False)
model = vgg16_ssd300(layout="aligned", width_mult=0.25, num_classes=NUM_CLASSES,
                     priors=ssd_priors("aligned", **SHAPES_PRIORS), norm="BN")
optimizer = adamw(lr=2e-3)
train.max_iter = 3000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 1000
train.checkpointer.period = 1000
train.output_dir = "output/shapes/ssd_teacher"
