"""VOC07+12: RetinaNet R101-FPN - LSHFM's teacher (LSHFM README: 83.0 mAP on VOC07 test).

LSHFM recipe (``DoctorKey/LSHFM.detection`` experiments/*.sh, docs/methods.md §3.3): VOC07+12
trainval, 8 images (4 GPUs x 2), SGD momentum 0.9, wd 1e-4, lr 0.005, linear warm-up 1000 iterations,
24 epochs (2069 iterations each) with lr x0.1 at epochs 18 and 22, short side 480..800 step 32
(max 1333), test at 800; frozen BN statistics; ImageNet-initialised backbone.
ImageNet init: Detectron2's MSRA R-101 (BGR, pixel std 1, stride in 1x1; LSHFM used torchvision's
weights, which Detectron2 does not host for R-101), stem + res2 frozen (torchvision's
trainable_backbone_layers=3), FrozenBN.
"""
# The student baseline's recipe, deeper (as Detectron2's own R101 LazyConfigs derive from R50).
from .retinanet_R50_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/voc/retinanet_R101_fpn"
