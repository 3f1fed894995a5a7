"""SAD on COCO (docs/methods.md §5.2), the released R50 setup: ``retinanet_R101_R50_adl.py`` plus a
second training stream, ``coco_2017_train ∪ unlabeled2017`` with the R101 teacher's boxes
(scale 600) as GT, alternating 1:1 with the labeled stream in every process (reference
``UNLABEL_DATASETS: ('coco_2017_train', 'coco_2017_unlabel_R101_600')``). Both streams: focal +
box losses on their (pseudo-)GT and ADL on every non-ignored anchor.

Pseudo-labels (the score threshold of the released file is unknown; d2kd default 0.5)::

    python3 tools/pseudo_label.py --config-file COCO-Detection/retinanet_R_101_FPN_3x.yaml \\
        --weights output/coco/teachers/retinanet_R101_600/model_final.pth \\
        --source coco_2017_unlabeled --min-size 600 --max-size 1000 \\
        --num-gpus 8 --batch-size 8 --num-workers 4 \\
        --output output/coco/pseudo_labels/unlabeled2017_r101_600.json
    python3 train_net.py --config-file configs/coco/retinanet_R101_R50_adl_semi.py --num-gpus 8

The reference's released ``image_info_unlabeled2017_r101_600.json`` can be used instead:
``dataloader.train.unlabeled_dataset.pseudo_label_files=[PATH]`` (file names are taken relative
to ``image_root``, the ``coco_2017_unlabeled`` image folder).
"""
from detectron2.config import LazyCall as L
from detectron2.data import MetadataCatalog

from d2kd.data.mixed_loader import build_semi_supervised_train_loader, semi_supervised_dataset_dicts

from .retinanet_R101_R50_adl import dataloader, lr_multiplier, model, optimizer, train

labeled = dataloader.train
dataloader.train = L(build_semi_supervised_train_loader)(
    dataset=labeled.dataset,
    unlabeled_dataset=L(semi_supervised_dataset_dicts)(
        labeled="${..dataset.names}",
        pseudo_label_files=["output/coco/pseudo_labels/unlabeled2017_r101_600.json"],
        image_root=MetadataCatalog.get("coco_2017_unlabeled").image_root,
        min_score=None,
    ),
    mapper=labeled.mapper,
    total_batch_size=labeled.total_batch_size,
    ratio=[1, 1],
    num_workers=labeled.num_workers,
)
train.output_dir = "output/coco/retinanet_R101_R50_adl_semi"
