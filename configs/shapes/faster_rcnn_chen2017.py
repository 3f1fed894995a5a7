"""Shapes: Faster R-CNN (FPN) student distilled with Chen et al. 2017 (paper form, docs/methods.md
§1.1/§1.3): μ 0.5 soft labels (w_bg 1.5) on the sampled RPN anchors ([1−σ(z), σ(z)]) and on the
ROI logits of the student's sampled proposals (background last), per-box teacher-bounded
regression (ν 0.5, m 0) on positive anchors and proposals, hint on p2..p6 with 1×1 adapters
(sum of per-level means, γ 0.5). Student/data/schedule: configs/shapes/faster_rcnn_student.py;
teacher: configs/shapes/faster_rcnn_teacher.py (train it first)."""
from detectron2.config import LazyCall as L

from d2kd.distill import Chen2017
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/shapes/faster_rcnn_teacher.py",
    weights="output/shapes/faster_rcnn_teacher/model_final.pth",
    autocast_dtype="auto",  # bfloat16 where the CPU computes it natively (docs/results.md: x1.64 here)
)
model.distillers = [L(Chen2017)(variant="paper", mu=0.5, w_bg=1.5, temperature=1.0, nu=0.5,
                                margin=0.0, lam=1.0, gamma_hint=0.5,
                                hint_features=["p2", "p3", "p4", "p5", "p6"])]
train.output_dir = "output/shapes/faster_rcnn_chen2017"
