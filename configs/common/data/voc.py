"""Pascal VOC "07+12": ``voc_2007_trainval`` + ``voc_2012_trainval`` for training, ``voc_2007_test``
with the VOC07 (11-point) metric (Detectron2's registrations, rooted at ``$DETECTRON2_DATASETS``;
see datasets/README.md). The evaluator is :class:`d2kd.evaluation.VOCDetectionEvaluator`, i.e.
Detectron2's ``PascalVOCDetectionEvaluator`` plus per-class AP50 (``AP50-<class>``, a logged table
and ``inference/voc_per_class_ap.json``).

``dataloader`` is LSHFM's recipe (docs/methods.md §3.3; torchvision references): multi-scale training,
short side sampled from 480..800 step 32, max 1333, flip 0.5, 8 images (4 GPUs x 2); test at
800/1333 (torchvision's transform uses ``min_size[-1]`` at test time).
:func:`voc_dataloader` builds other scales, e.g. FGFI's single 600 px scale with max 1000.
Detectron2 boxes are 0-based continuous coordinates (``load_voc_instances`` subtracts 1 from
x1/y1); the evaluator adds it back for ``voc_eval``.
"""
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from d2kd.evaluation import VOCDetectionEvaluator

NUM_CLASSES = 20
LSHFM_TRAIN_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800


def voc_dataloader(*, train_short_edge=LSHFM_TRAIN_SCALES, train_max_size=1333, test_short_edge=800,
                   test_max_size=1333, total_batch_size=8, num_workers=4,
                   train_names=("voc_2007_trainval", "voc_2012_trainval"), test_names="voc_2007_test",
                   image_format="BGR"):
    """Train/test loaders and the VOC evaluator (``short_edge`` tuples: sampled per image)."""
    dl = OmegaConf.create()
    dl.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train_names),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=tuple(train_short_edge) if isinstance(train_short_edge, (list, tuple))
                    else (train_short_edge,),
                    sample_style="choice",
                    max_size=train_max_size,
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format=image_format,
        ),
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )
    dl.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test_names, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=test_short_edge, max_size=test_max_size)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=num_workers,
    )
    dl.evaluator = L(VOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")
    return dl


dataloader = voc_dataloader()
