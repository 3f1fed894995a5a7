"""VOC07+12 -> VOC07 test: Chen et al. 2017 in the paper's form on the SSD pair (docs/methods.md §1.1):
soft labels μ 0.5 (w_bg 1.5), per-box teacher-bounded regression (ν 0.5, m 0) and the feature
hint the reference builds but never uses: teacher VGG ``conv4_3`` (ReLU, 512 ch, 38×38) ← 1×1
adapter (192→512) of the student's MobileNetV2 block-7 expansion ``expand7`` (stride 8), γ 0.5,
L2 mean. Everything else: configs/voc/ssd_mbv2_lite_vgg16_chen2017.py."""
from .ssd_mbv2_lite_vgg16_chen2017 import dataloader, lr_multiplier, model, optimizer, train

model.distillers[0].variant = "paper"
train.output_dir = "output/voc/ssd_mbv2_lite_vgg16_chen2017_paper"
