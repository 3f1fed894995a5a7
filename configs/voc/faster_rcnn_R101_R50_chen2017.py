"""VOC07+12 -> VOC07 test: Faster R-CNN R50-FPN student distilled from R101-FPN with Chen et al.
2017 (paper form, docs/methods.md §1.1/§1.3): soft labels μ 0.5 (w_bg 1.5, T 1) on the sampled RPN
anchors (2-class [1−σ(z), σ(z)]) and on the ROI logits of the student's 512 sampled
proposals/image (background last; the teacher's box head runs on the same boxes); per-box
teacher-bounded regression (ν 0.5, m 0, λ 1) on positive anchors and on positive proposals with
the GT-class deltas; hint on p2..p6 through 1×1 adapters (sum of per-level means, γ 0.5).
Student, data and schedule: configs/voc/faster_rcnn_R50_fpn.py (baseline); teacher:
configs/voc/faster_rcnn_R101_fpn.py (train it first). Both share Detectron2's anchors and box
coder weights (checked at build time).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import Chen2017
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_R50_fpn import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/voc/faster_rcnn_R101_fpn.py",
    weights="output/voc/faster_rcnn_R101_fpn/model_final.pth",
)
model.distillers = [L(Chen2017)(variant="paper", mu=0.5, w_bg=1.5, temperature=1.0, nu=0.5,
                                margin=0.0, lam=1.0, gamma_hint=0.5,
                                hint_features=["p2", "p3", "p4", "p5", "p6"])]
train.output_dir = "output/voc/faster_rcnn_R101_R50_chen2017"
