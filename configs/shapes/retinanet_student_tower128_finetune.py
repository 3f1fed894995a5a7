"""The baseline of the LSHFM RetinaNet runs: ``retinanet_student_tower128.py`` trained for 1000
more iterations from its own checkpoint (train that config first; ``tools/benchmark.py`` does).

LSHFM's students start from ImageNet weights (docs/methods.md §3.3); on the shapes set, where nothing
is pretrained, a from-scratch student with tower mimicking fell below its baseline at every
weight tried (docs/results.md), while one that starts from its trained checkpoint gains — so both the
LSHFM runs and this baseline start there, and differ only in the KD loss."""
from .retinanet_student_tower128 import dataloader, lr_multiplier, model, optimizer, train

train.init_checkpoint = "output/shapes/retinanet_student_tower128/model_final.pth"
train.output_dir = "output/shapes/retinanet_student_tower128_finetune"
