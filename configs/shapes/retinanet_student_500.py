"""Shapes few-labels baseline: the shapes RetinaNet student trained on ``shapes_train_500`` only
(the first 500 images of ``shapes_train``), the labeled split of the ADL/SAD experiments
(``retinanet_adl.py``, ``retinanet_adl_semi.py``). With ~200 labels a from-scratch student
collapses to ~0 AP, hence 500."""
from .retinanet_student import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.dataset.names = "shapes_train_500"
train.output_dir = "output/shapes/retinanet_student_500"
