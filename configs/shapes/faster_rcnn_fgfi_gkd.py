"""Shapes: FGFI and GKD composed in one run, each with its own weights and adapters, as in their
own configs (``faster_rcnn_fgfi.py``: near-object imitation of P2-P6; ``faster_rcnn_gkd.py``:
prototypes, robustness-weighted fg/bg imitation of P2-P6 and ROI soft labels). The KD losses add
up (each is logged as ``loss_kd_<method>_<term>``); the teacher runs once for both."""
from .faster_rcnn_fgfi import dataloader, lr_multiplier, model, optimizer, train
from .faster_rcnn_gkd import model as _gkd

model.distillers = [*model.distillers, *_gkd.distillers]
train.output_dir = "output/shapes/faster_rcnn_fgfi_gkd"
