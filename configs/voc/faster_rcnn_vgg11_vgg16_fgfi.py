"""VOC07+12: FGFI, Faster R-CNN VGG16 -> VGG11 (docs/methods.md §2; FGFI README: 59.6 -> 67.6,
teacher 70.1).

Imitation of the teacher's conv5_3 (after ReLU, stride 16) by the student's conv5_2 through a
3x3 conv + ReLU adapter (N(0, sigma=1e-4) folded at 2 sigma), on the near-object mask from the
RPN's 9 anchors per location (psi 0.5), normalised by 2*N_p; lambda 0.01, imitation multiplied
by 0 for the first 400 iterations. The anchors are py-faster-rcnn's (configs/common/models/
faster_rcnn_vgg.py); with them and Detectron2's VOC boxes, both in continuous coordinates,
Detectron2's IoU (iou_plus_one=False) is the reference's "+1" IoU on its inclusive coordinates:
the mask equals the reference's cell for cell (tests/test_anchor_generator.py). Schedule: configs/voc/faster_rcnn_vgg11.py.
Teacher: configs/voc/faster_rcnn_vgg16.py (train it first).
"""
from detectron2.config import LazyCall as L

from d2kd.distill import FGFI, KDSchedule
from d2kd.modeling.meta_arch import DistillationRCNN
from d2kd.teacher import build_teacher

from .faster_rcnn_vgg11 import dataloader, lr_multiplier, model, optimizer, train

model._target_ = DistillationRCNN
model.teacher = L(build_teacher)(
    config_file="configs/voc/faster_rcnn_vgg16.py",
    weights="output/voc/faster_rcnn_vgg16/model_final.pth",
)
model.distillers = [
    L(FGFI)(in_features=["conv5"], psi=0.5, iou_plus_one=False, adapter_relu=True, weight=0.01,
            schedule=L(KDSchedule)(warmup_iters=400))
]
train.output_dir = "output/voc/faster_rcnn_vgg11_vgg16_fgfi"
