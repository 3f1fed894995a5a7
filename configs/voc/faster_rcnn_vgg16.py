"""VOC07+12: Faster R-CNN VGG16 (single level, conv5 stride 16) - FGFI's teacher (70.1 mAP in
the FGFI README: 1 GPU, batch 1, lr 1e-3, lr x0.1 after epoch 5, 7 epochs; docs/methods.md §2.4-2.5).

faster-rcnn.pytorch recipe: 600 px (max 1000) train and test, flip, SGD momentum 0.9, wd 5e-4,
bias lr x2 without decay, no warm-up; one "epoch" = the flip-doubled 07+12 trainval
(2 x 16551 images) = 33102 iterations at batch 1. conv1-conv2 frozen (faster-rcnn.pytorch VGG16).
ImageNet init: torchvision's vgg16 converted with
``python -m d2kd.modeling.backbone.vgg vgg16-397923af.pth pretrained/vgg16_d2.pkl --prefix backbone.``
Gradient-norm clipping at 10 as the reference (``train.clip_grad_norm``). Not reproduced:
ImageNet-initialised fc6/fc7, and the reference's 'crop'/'align' pooling details.
"""
from ..common.data.voc import NUM_CLASSES, voc_dataloader
from ..common.models.faster_rcnn_vgg import faster_rcnn_vgg
from ..common.schedule import optimizer, step_schedule, train

EPOCH = 33102  # iterations per (flip-doubled) epoch at batch 1
dataloader = voc_dataloader(train_short_edge=600, train_max_size=1000, test_short_edge=600, test_max_size=1000,
                            total_batch_size=1, image_format="RGB")
model = faster_rcnn_vgg(depth=16, num_classes=NUM_CLASSES, freeze_at=2)
optimizer.lr = 1e-3
optimizer.weight_decay = 5e-4
optimizer.params.base_lr = "${..lr}"  # bias_lr_factor needs it
optimizer.params.bias_lr_factor = 2.0
optimizer.params.weight_decay_bias = 0.0
train.clip_grad_norm = 10.0
train.max_iter = 7 * EPOCH
lr_multiplier = step_schedule(train.max_iter, steps=(5 * EPOCH / train.max_iter,), warmup_iters=0)
train.init_checkpoint = "pretrained/vgg16_d2.pkl"
train.eval_period = EPOCH
train.checkpointer.period = EPOCH
train.output_dir = "output/voc/faster_rcnn_vgg16"
