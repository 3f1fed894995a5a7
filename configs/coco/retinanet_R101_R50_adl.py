"""ADL on COCO (docs/methods.md §5): RetinaNet R101-FPN teacher -> R50-FPN student, scale 600 (max
1000), labeled data only (the ablation without unlabeled2017; with it:
``retinanet_R101_R50_adl_semi.py``, the released setup).

Reference: ``configs/focal_distillation/retinanet_R-50-FPN_distillation.yaml`` — SGD lr 0.01,
wd 1e-4, 270k iterations at 16 images (8 GPUs x 2), steps 180k/240k, linear warm-up 1000
iterations from 1/3 (Detectron's default factor), single scale 600/1000 train and test with
flip, ImageNet-initialised student (MSRA R-50), ADL γ 2, α 0.5, β_c 0, θ 1.8, adaptive
normaliser, T 1, weight 1, plus the student's focal (α 0.25, γ 2) and box losses.

Student: Detectron2's model-zoo RetinaNet (``common/models/retinanet.py``: R50, FrozenBN, P6/P7
from C5, 9 anchors). Teacher: a Detectron2 RetinaNet R101-FPN (model-zoo config
``COCO-Detection/retinanet_R_101_FPN_3x.yaml``) trained at the same scale; set
``model.teacher.weights`` to its checkpoint. The reference's released teacher is a Detectron1
(Caffe2) pickle with anchor aspect ratios ordered (1, 2, 0.5): loading it needs
``MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS [[1.0,2.0,0.5]]`` in ``model.teacher.opts`` and the same
order in ``model.anchor_generator.aspect_ratios`` (ADL checks the anchors match).
"""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from d2kd.distill import ADL
from d2kd.modeling.meta_arch import DistillationRetinaNet
from d2kd.teacher import build_teacher

from ..common.data.coco import coco_dataloader
from ..common.schedule import optimizer, step_schedule, train

dataloader = coco_dataloader(train_short_edge=600, train_max_size=1000, test_short_edge=600,
                             test_max_size=1000, total_batch_size=16, num_workers=4)

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone.bottom_up.stages.depth = 50
model.backbone.bottom_up.freeze_at = 2
model._target_ = DistillationRetinaNet
model.teacher = L(build_teacher)(
    config_file="COCO-Detection/retinanet_R_101_FPN_3x.yaml",
    weights="output/coco/teachers/retinanet_R101_600/model_final.pth",  # your trained teacher
    opts=["INPUT.MIN_SIZE_TEST", "600", "INPUT.MAX_SIZE_TEST", "1000"],
)
model.distillers = [L(ADL)(gamma=2.0, alpha=0.5, beta_code=0.0, theta=1.8, normalizer="adaptive",
                           temperature=1.0, weight=1.0)]

optimizer.lr = 0.01
optimizer.weight_decay = 1e-4
train.max_iter = 270000
lr_multiplier = step_schedule(train.max_iter, steps=(180000 / 270000, 240000 / 270000),
                              warmup_iters=1000, warmup_factor=1.0 / 3)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.eval_period = 10000
train.checkpointer.period = 10000
train.output_dir = "output/coco/retinanet_R101_R50_adl"
