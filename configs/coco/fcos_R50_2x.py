"""COCO baseline: FCOS R50-FPN (Detectron2's ``FCOS``, GN head, as its model zoo's
``COCO-Detection/fcos_R_50_FPN_1x.py``), 2x schedule as retinanet_R50_2x.py (180k iterations at
16 images, lr 0.01, warm-up 500, steps at epochs 16/22; MSRA R-50, stem and res2 frozen)."""
from ..common.data.coco import NUM_CLASSES, dataloader
from ..common.models.fcos_resnet_fpn import fcos
from ..common.schedule import optimizer, step_schedule, train

model = fcos(depth=50, num_classes=NUM_CLASSES)
model.backbone.bottom_up.freeze_at = 2
model.pixel_std = [1.0, 1.0, 1.0]  # the MSRA ImageNet weights' normalisation
optimizer.lr = 0.01
train.max_iter = 180000
lr_multiplier = step_schedule(
    train.max_iter, steps=(120000 / 180000, 165000 / 180000), warmup_iters=500, warmup_factor=0.001
)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.eval_period = 7500
train.checkpointer.period = 7500
train.output_dir = "output/coco/fcos_R50_2x"
