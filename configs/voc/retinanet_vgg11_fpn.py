"""VOC07+12: RetinaNet VGG11-FPN - LSHFM's student baseline (LSHFM README: 73.2 mAP on VOC07 test).

LSHFM recipe (``DoctorKey/LSHFM.detection`` experiments/*.sh, docs/methods.md §3.3): VOC07+12
trainval, 8 images (4 GPUs x 2), SGD momentum 0.9, wd 1e-4, lr 0.005, linear warm-up 1000 iterations,
24 epochs (2069 iterations each) with lr x0.1 at epochs 18 and 22, short side 480..800 step 32
(max 1333), test at 800; frozen BN statistics; ImageNet-initialised backbone.
Model: configs/common/models/retinanet_vgg_fpn.py (plain VGG, stages 1-2 frozen, RGB + torchvision normalisation).
ImageNet init: torchvision's vgg11-bbd30ac9.pth converted with
``python -m d2kd.modeling.backbone.vgg vgg11-bbd30ac9.pth pretrained/vgg11_fpn_d2.pkl --prefix backbone.bottom_up.``
"""
from ..common.data.voc import NUM_CLASSES, voc_dataloader
from ..common.models.retinanet_vgg_fpn import retinanet_vgg_fpn
from ..common.schedule import optimizer, step_schedule, train

dataloader = voc_dataloader(image_format="RGB")
model = retinanet_vgg_fpn(depth=11, num_classes=NUM_CLASSES)
optimizer.lr = 0.005
EPOCH = 2069  # VOC07+12 trainval, 16551 images / batch 8
train.max_iter = 24 * EPOCH
lr_multiplier = step_schedule(train.max_iter, steps=(18 / 24, 22 / 24), warmup_iters=1000, warmup_factor=0.001)
train.eval_period = 2 * EPOCH
train.checkpointer.period = 2 * EPOCH
train.init_checkpoint = "pretrained/vgg11_fpn_d2.pkl"
train.output_dir = "output/voc/retinanet_vgg11_fpn"
