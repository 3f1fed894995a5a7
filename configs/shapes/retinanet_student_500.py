"""Shapes few-labels baseline: the shapes RetinaNet student trained on ``shapes_train_500`` only
(the first 500 images of ``shapes_train``), the labeled split of the ADL/SAD experiments
(``retinanet_adl.py``, ``retinanet_adl_semi.py``). With ~200 labels a from-scratch student
collapses to ~0 AP, hence 500."""
from ..common.data.shapes import NUM_CLASSES, dataloader
from ..common.models.retinanet_resnet_fpn import retinanet
from ..common.schedule import optimizer, step_schedule, train

dataloader.train.dataset.names = "shapes_train_500"
model = retinanet(depth=10, width=8, fpn_channels=32, head_convs=2, anchor_base=8, norm="BN",
                  num_classes=NUM_CLASSES)
optimizer.lr = 0.01
train.max_iter = 1000
lr_multiplier = step_schedule(train.max_iter)
train.eval_period = 500
train.checkpointer.period = 500
train.output_dir = "output/shapes/retinanet_student_500"
