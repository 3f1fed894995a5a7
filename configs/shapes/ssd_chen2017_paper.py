"""Shapes: Chen et al. 2017 as the paper defines it, on the SSD pair (docs/methods.md §1.1):
μ 0.5 soft labels (w_bg 1.5), per-box teacher-bounded regression (ν 0.5, m 0) and a feature hint
conv4_3 (teacher) ← 1×1 adapter(expand7) (student), γ 0.5 (L2, mean).
Everything else: configs/shapes/ssd_chen2017.py."""
from .ssd_chen2017 import dataloader, lr_multiplier, model, optimizer, train

model.distillers[0].variant = "paper"
train.output_dir = "output/shapes/ssd_chen2017_paper"
