"""SAD on COCO, the released R101 setup: ``retinanet_X101_R101_adl.py`` plus the
``coco_2017_train ∪ unlabeled2017`` stream with the X101 teacher's boxes at scale 500 as GT,
alternating 1:1 (reference ``UNLABEL_DATASETS: ('coco_2017_train', 'coco_2017_unlabel_X101_500')``)::

    python3 tools/pseudo_label.py --config-file COCO-Detection/retinanet_R_101_FPN_3x.yaml \\
        --weights output/coco/teachers/retinanet_X101_64x4d_500/model_final.pth \\
        --source coco_2017_unlabeled --min-size 500 --max-size 833 --num-gpus 8 --batch-size 8 \\
        --output output/coco/pseudo_labels/unlabeled2017_x101_500.json \\
        MODEL.RESNETS.NUM_GROUPS 64 MODEL.RESNETS.WIDTH_PER_GROUP 4 MODEL.RESNETS.STRIDE_IN_1X1 False \\
        MODEL.PIXEL_STD "[57.375, 57.120, 58.395]"
"""
from detectron2.config import LazyCall as L
from detectron2.data import MetadataCatalog

from d2kd.data.mixed_loader import build_semi_supervised_train_loader, semi_supervised_dataset_dicts

from .retinanet_X101_R101_adl import dataloader, lr_multiplier, model, optimizer, train

labeled = dataloader.train
dataloader.train = L(build_semi_supervised_train_loader)(
    dataset=labeled.dataset,
    unlabeled_dataset=L(semi_supervised_dataset_dicts)(
        labeled="${..dataset.names}",
        pseudo_label_files=["output/coco/pseudo_labels/unlabeled2017_x101_500.json"],
        image_root=MetadataCatalog.get("coco_2017_unlabeled").image_root,
        min_score=None,
    ),
    mapper=labeled.mapper,
    total_batch_size=labeled.total_batch_size,
    ratio=[1, 1],
    num_workers=labeled.num_workers,
)
train.output_dir = "output/coco/retinanet_X101_R101_adl_semi"
