"""VOC07+12 -> VOC07 test: the SSD-KD teacher, VGG16-SSD300 re-headed to the MobileNetV2-SSDLite
prior layout (``layout="aligned"``: sources fc7, conv6_2 .. conv10_2 at 19, 10, 5, 3, 2, 1,
6 priors/location, min sizes 60..285, 3000 priors; docs/methods.md §1.2), fine-tuned first.

Recipe of SsisyphusTao/SSD-Knowledge-Distillation ``train.py`` without ``--teacher_model``:
initialised from ssd.pytorch's ``ssd300_mAP_77.43_v2.pth`` without its loc/conf heads (they do not
fit 3000 priors; the 8 extras load into conv6_1..conv9_2, conv10_* and the heads start from
xavier), SGD lr 1.25e-4, momentum 0.9, wd 5e-4, batch 128, 70 epochs at a constant lr (its
MultiStep [120, 180] epochs is never reached), ssd.pytorch augmentation at 300 px, RGB,
(img − 127)/128. One epoch = ceil(16551 / 128) = 130 iterations.

Initial weights: convert once (the file cannot be downloaded at run time)::

    python -c "import torch; from d2kd.modeling.backbone.ssd_vgg import convert_ssd_pytorch_vgg as c; \
      sd = torch.load('models/ssd300_mAP_77.43_v2.pth', map_location='cpu'); \
      torch.save({'model': c(sd, layout='aligned', include_heads=False)}, \
                 'output/pretrained/vgg16_ssd300_aligned_init.pth')"

Scaling: batch 128 is the reference's single-process batch. With a total batch B, keep 70
epochs (``train.max_iter = 70 * ceil(16551 / B)``) and scale the lr linearly
(``optimizer.lr = 1.25e-4 * B / 128``), e.g. ``dataloader.train.total_batch_size=32
optimizer.lr=3.125e-05 train.max_iter=36260``.
Difference: Detectron2's VOC loader keeps "difficult" objects for training (ssd.pytorch drops
them); the evaluator uses the VOC07 11-point metric like ssd.pytorch's eval.
"""
import math

from fvcore.common.param_scheduler import ConstantParamScheduler

from detectron2.config import LazyCall as L

from ..common.data.voc import NUM_CLASSES, voc_dataloader
from ..common.models.ssd import square_loaders, vgg16_ssd300
from ..common.schedule import optimizer, train

SIZE = 300
BATCH = 128
EPOCH = math.ceil(16551 / BATCH)  # VOC07+12 trainval images / batch

dataloader = square_loaders(voc_dataloader(total_batch_size=BATCH, num_workers=4, image_format="RGB"), SIZE)
model = vgg16_ssd300(layout="aligned", num_classes=NUM_CLASSES)
optimizer.lr = 1.25e-4
optimizer.momentum = 0.9
optimizer.weight_decay = 5e-4
train.max_iter = 70 * EPOCH
lr_multiplier = L(ConstantParamScheduler)(value=1.0)
train.eval_period = 10 * EPOCH  # the reference saves every 10 epochs
train.checkpointer.period = 10 * EPOCH
train.init_checkpoint = "output/pretrained/vgg16_ssd300_aligned_init.pth"
train.output_dir = "output/voc/ssd_vgg16_aligned"
