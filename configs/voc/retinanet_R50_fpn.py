"""VOC07+12: RetinaNet R50-FPN - LSHFM's student baseline (LSHFM README: 82.5 mAP on VOC07 test).

LSHFM recipe (``DoctorKey/LSHFM.detection`` experiments/*.sh, docs/methods.md §3.3): VOC07+12
trainval, 8 images (4 GPUs x 2), SGD momentum 0.9, wd 1e-4, lr 0.005, linear warm-up 1000 iterations,
24 epochs (2069 iterations each) with lr x0.1 at epochs 18 and 22, short side 480..800 step 32
(max 1333), test at 800; frozen BN statistics; ImageNet-initialised backbone.
ImageNet init: Detectron2's MSRA R-50 (BGR, pixel std 1, stride in 1x1; LSHFM used torchvision's
weights, which Detectron2 does not host for R-101), stem + res2 frozen (torchvision's
trainable_backbone_layers=3), FrozenBN.
"""
from ..common.data.voc import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import optimizer, step_schedule, train

model = retinanet(depth=50, num_classes=NUM_CLASSES)
model.backbone.bottom_up.freeze_at = 2
model.pixel_std = [1.0, 1.0, 1.0]  # the MSRA ImageNet weights' normalisation
# torchvision's int-truncated anchor sizes: x, int(x*2^(1/3)), int(x*2^(2/3))
model.anchor_generator.sizes = [[x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))] for x in [32, 64, 128, 256, 512]]
optimizer.lr = 0.005
EPOCH = 2069  # VOC07+12 trainval, 16551 images / batch 8
train.max_iter = 24 * EPOCH
lr_multiplier = step_schedule(train.max_iter, steps=(18 / 24, 22 / 24), warmup_iters=1000, warmup_factor=0.001)
train.eval_period = 2 * EPOCH
train.checkpointer.period = 2 * EPOCH
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/voc/retinanet_R50_fpn"
