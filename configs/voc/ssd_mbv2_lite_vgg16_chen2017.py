"""VOC07+12 -> VOC07 test: MobileNetV2-SSDLite distilled from the aligned VGG16-SSD300 with
Chen et al. 2017 exactly as SsisyphusTao/SSD-Knowledge-Distillation computes it (variant
"ssd_repo", docs/methods.md §1.2; README: 68.68 -> 69.99 best / 69.45 released, teacher 77.43 on its
original 8732 priors):
L = [0.5·CE_hard + 0.5·L_soft(w_bg 1.5, T 1) + SmoothL1 + L_b(batch-level, ν 0.5, m 0)] / N_pos
    + 0.5·MSE(z_s, z_t).
Student, data, schedule (Adam 1.25e-4, batch 128, 70 epochs; scaling rule there):
configs/voc/ssd_mbv2_lite.py. Teacher: configs/voc/ssd_vgg16_aligned.py (fine-tune it first).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import Chen2017
from d2kd.modeling.meta_arch import DistillationSSD
from d2kd.teacher import build_teacher

from .ssd_mbv2_lite import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationSSD
model.teacher = L(build_teacher)(
    config_file="configs/voc/ssd_vgg16_aligned.py",
    weights="output/voc/ssd_vgg16_aligned/model_final.pth",
)
model.distillers = [L(Chen2017)(variant="ssd_repo", mu=0.5, w_bg=1.5, temperature=1.0, nu=0.5,
                                margin=0.0, lam=1.0, gamma_hint=0.5)]
train.output_dir = "output/voc/ssd_mbv2_lite_vgg16_chen2017"
