"""COCO baseline (GKD's student): Faster R-CNN R50-FPN, 2x schedule.

2x = 24 epochs ~ 180k iterations at 16 images, SGD lr 0.02 (mom 0.9, wd 1e-4), linear warm-up
500 iterations from 0.001, lr x0.1 at epochs 16 and 22 (120k, 165k); 1333x800, flip 0.5
(docs/methods.md §4.3). ImageNet init: Detectron2's MSRA R-50 (BGR, pixel std 1, stride in 1x1), stem
and res2 frozen (mmdet ``frozen_stages=1``), FrozenBN. The mmdet checkpoints of the GKD README
(R50 38.4, R101 39.8) are not loadable here; this config trains the equivalent baseline."""
from ..common.data.coco import NUM_CLASSES, dataloader
from ..common.models.faster_rcnn_resnet_fpn import faster_rcnn
from ..common.schedule import optimizer, step_schedule, train

model = faster_rcnn(depth=50, num_classes=NUM_CLASSES)
model.backbone.bottom_up.freeze_at = 2
model.pixel_std = [1.0, 1.0, 1.0]  # the MSRA ImageNet weights' normalisation
optimizer.lr = 0.02
train.max_iter = 180000
lr_multiplier = step_schedule(
    train.max_iter, steps=(120000 / 180000, 165000 / 180000), warmup_iters=500, warmup_factor=0.001
)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.eval_period = 7500
train.checkpointer.period = 7500
train.output_dir = "output/coco/faster_rcnn_R50_2x"
