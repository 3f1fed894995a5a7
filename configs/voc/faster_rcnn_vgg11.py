"""VOC07+12: Faster R-CNN VGG11 (single level, conv5 stride 16) - FGFI's student baseline
(59.6 mAP in the FGFI README, docs/methods.md §2.5).

Same schedule as the distilled run (configs/voc/faster_rcnn_vgg11_vgg16_fgfi.py) so that the two
compare: the README's distilled model ("VGG-11-I": 8 GPUs x 2 = batch 16, lr 3e-3, 15 epochs,
--lr_decay_step 8, i.e. lr x0.1 at the start of epoch 9 since the code decays when
``epoch % (lr_decay_step + 1) == 0``). (The README's own baseline used batch 4.)
600 px (max 1000), flip, SGD momentum 0.9, wd 5e-4, bias lr x2 without decay, no warm-up;
one epoch = 2 x 16551 flip-doubled images / 16 = 2069 iterations. The first 7 VGG11 modules
(conv1_1, conv2_1, conv3_1) are frozen (``freeze_layers=3``).
ImageNet init: ``python -m d2kd.modeling.backbone.vgg vgg11-bbd30ac9.pth pretrained/vgg11_d2.pkl --prefix backbone.``
Gradient-norm clipping at 10 as faster-rcnn.pytorch's ``clip_gradient(model, 10.)`` (``train.clip_grad_norm``).
"""
from ..common.data.voc import NUM_CLASSES, voc_dataloader
from ..common.models.faster_rcnn_vgg import faster_rcnn_vgg
from ..common.schedule import optimizer, step_schedule, train

EPOCH = 2069  # 33102 flip-doubled images / batch 16
dataloader = voc_dataloader(train_short_edge=600, train_max_size=1000, test_short_edge=600, test_max_size=1000,
                            total_batch_size=16, image_format="RGB")
model = faster_rcnn_vgg(depth=11, num_classes=NUM_CLASSES, freeze_at=0, freeze_layers=3)
optimizer.lr = 3e-3
optimizer.weight_decay = 5e-4
optimizer.params.base_lr = "${..lr}"  # bias_lr_factor needs it
optimizer.params.bias_lr_factor = 2.0
optimizer.params.weight_decay_bias = 0.0
train.clip_grad_norm = 10.0
train.max_iter = 15 * EPOCH
lr_multiplier = step_schedule(train.max_iter, steps=(8 * EPOCH / train.max_iter,), warmup_iters=0)
train.init_checkpoint = "pretrained/vgg11_d2.pkl"
train.eval_period = EPOCH
train.checkpointer.period = EPOCH
train.output_dir = "output/voc/faster_rcnn_vgg11"
