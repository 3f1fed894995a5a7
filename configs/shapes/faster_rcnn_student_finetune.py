"""The baseline of the Faster R-CNN fine-tune rows: ``faster_rcnn_student.py`` trained for 1000
more iterations from its own 1000-iteration checkpoint (train that config first;
``tools/benchmark.py`` does), with the same schedule restarted (warm-up, lr 0.02, steps).

GKD's student starts from its trained checkpoint (docs/methods.md §4.3: R50-FPN 2x, 38.4 AP, before
24 more epochs with the teacher), as LSHFM's start from ImageNet weights. The distilled rows of
this protocol (``faster_rcnn_*_finetune.py``) start there too and differ from this baseline only
in the KD losses, so the comparison is not inflated by the start (docs/methods.md §4.5)."""
from .faster_rcnn_student import dataloader, lr_multiplier, model, optimizer, train

train.init_checkpoint = "output/shapes/faster_rcnn_student/model_final.pth"
train.output_dir = "output/shapes/faster_rcnn_student_finetune"
