"""Shapes SAD (docs/methods.md §5.2): ADL on ``shapes_train_500`` plus the teacher-annotated
``shapes_unlabeled`` images, two streams alternating 1:1 per step (labeled; labeled ∪
pseudo-labelled), both with focal + box losses on their (pseudo-)GT and ADL on every
non-ignored anchor.

Command sequence::

    # 1. the teacher (if not trained yet)
    python3 train_net.py --config-file configs/shapes/retinanet_teacher.py
    # 2. the teacher annotates shapes_unlabeled (boxes with score >= 0.5; resumable)
    python3 tools/pseudo_label.py --config-file configs/shapes/retinanet_teacher.py \\
        --weights output/shapes/retinanet_teacher/model_final.pth --source shapes_unlabeled \\
        --output output/shapes/pseudo_labels/shapes_unlabeled_retinanet_teacher.json
    # 3. the student
    python3 train_net.py --config-file configs/shapes/retinanet_adl_semi.py

Same schedule as ``retinanet_adl.py`` (the reference keeps its schedule with the unlabeled
stream), so the labeled set gets half the steps.
"""
from detectron2.config import LazyCall as L

from d2kd.data.mixed_loader import build_semi_supervised_train_loader, semi_supervised_dataset_dicts

from .retinanet_adl import dataloader, lr_multiplier, model, optimizer, train

PSEUDO_LABELS = "output/shapes/pseudo_labels/shapes_unlabeled_retinanet_teacher.json"

labeled = dataloader.train
dataloader.train = L(build_semi_supervised_train_loader)(
    dataset=labeled.dataset,
    unlabeled_dataset=L(semi_supervised_dataset_dicts)(
        labeled="${..dataset.names}",  # the unlabeled pool = labeled ∪ pseudo-labelled (§5.2)
        pseudo_label_files=[PSEUDO_LABELS],
        min_score=None,  # None: as written by the tool (its --score-thresh, default 0.5)
    ),
    mapper=labeled.mapper,
    total_batch_size=labeled.total_batch_size,
    ratio=[1, 1],  # labeled : unlabeled batches, labeled first (reference loader.py)
    num_workers=labeled.num_workers,
)
train.output_dir = "output/shapes/retinanet_adl_semi"
