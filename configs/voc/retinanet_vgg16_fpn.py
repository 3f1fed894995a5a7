"""VOC07+12: RetinaNet VGG16-FPN - LSHFM's teacher (LSHFM README: 76.6 mAP on VOC07 test).

LSHFM recipe (``DoctorKey/LSHFM.detection`` experiments/*.sh, docs/methods.md §3.3): VOC07+12
trainval, 8 images (4 GPUs x 2), SGD momentum 0.9, wd 1e-4, lr 0.005, linear warm-up 1000 iterations,
24 epochs (2069 iterations each) with lr x0.1 at epochs 18 and 22, short side 480..800 step 32
(max 1333), test at 800; frozen BN statistics; ImageNet-initialised backbone.
Model: configs/common/models/retinanet_vgg_fpn.py (plain VGG, stages 1-2 frozen, RGB + torchvision normalisation).
ImageNet init: torchvision's vgg16-397923af.pth converted with
``python -m d2kd.modeling.backbone.vgg vgg16-397923af.pth pretrained/vgg16_fpn_d2.pkl --prefix backbone.bottom_up.``
"""
# The student baseline's recipe, deeper (as Detectron2's own R101 LazyConfigs derive from R50).
from .retinanet_vgg11_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.depth = 16
train.init_checkpoint = "pretrained/vgg16_fpn_d2.pkl"
train.output_dir = "output/voc/retinanet_vgg16_fpn"
