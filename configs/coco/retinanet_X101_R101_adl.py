"""ADL on COCO (docs/methods.md §5): RetinaNet ResNeXt-101-64x4d-FPN teacher -> R101-FPN student,
scale 500 (max 833), labeled data only (with unlabeled2017, the released setup:
``retinanet_X101_R101_adl_semi.py``).

Reference: ``configs/focal_distillation/retinanet_R-101-FPN_distillation.yaml`` (same solver as
the R50 student: lr 0.01, 270k iterations, steps 180k/240k, warm-up 1000, 16 images; student
from MSRA R-101 ImageNet weights). The teacher is built from the model-zoo RetinaNet R101 yacs
config turned into X101-64x4d by ``opts`` (groups 64, width 4, stride in the 3x3 — the layout
of Detectron2's X101 configs, which also normalise with the ImageNet std); set
``model.teacher.weights`` to your trained teacher (same scale).
"""
from .retinanet_R101_R50_adl import dataloader, lr_multiplier, model, optimizer, train

from ..common.data.coco import coco_dataloader

dataloader = coco_dataloader(train_short_edge=500, train_max_size=833, test_short_edge=500,
                             test_max_size=833, total_batch_size=16, num_workers=4)
model.backbone.bottom_up.stages.depth = 101
model.teacher.weights = "output/coco/teachers/retinanet_X101_64x4d_500/model_final.pth"
model.teacher.opts = [
    "MODEL.RESNETS.NUM_GROUPS", "64",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.PIXEL_STD", "[57.375, 57.120, 58.395]",
    "INPUT.MIN_SIZE_TEST", "500", "INPUT.MAX_SIZE_TEST", "833",
]
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/coco/retinanet_X101_R101_adl"
