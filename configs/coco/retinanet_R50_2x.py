"""COCO baseline (GKD's student): RetinaNet R50-FPN, 2x schedule.

24 epochs ~ 180k iterations at 16 images, SGD lr 0.01 (RetinaNet's usual rate, mmdet's
``retinanet_r50_fpn_2x``), warm-up 500 iterations from 0.001, steps at epochs 16 and 22;
1333x800, flip 0.5. ImageNet init: Detectron2's MSRA R-50 (BGR, pixel std 1), stem and res2
frozen, FrozenBN."""
from ..common.data.coco import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import optimizer, step_schedule, train

model = retinanet(depth=50, num_classes=NUM_CLASSES)
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
train.output_dir = "output/coco/retinanet_R50_2x"
