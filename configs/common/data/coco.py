"""COCO 2017: ``coco_2017_train`` for training, ``coco_2017_val`` with ``COCOEvaluator``
(Detectron2's registrations, rooted at ``$DETECTRON2_DATASETS``; see datasets/README.md).

``dataloader``: single-scale 800 (max 1333, i.e. mmdetection's "1333x800"), horizontal flip
0.5, 16 images, test at 800/1333. :func:`coco_dataloader` builds the same with other scales:
Detectron2's LazyConfig multi-scale training is ``train_short_edge=(640, 672, 704, 736, 768,
800)``; Detectron's single-scale ``SCALES: (600,) MAX_SIZE: 1000`` (the ADL configs) is
``train_short_edge=600, train_max_size=1000, test_short_edge=600, test_max_size=1000``.
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
from detectron2.evaluation import COCOEvaluator

NUM_CLASSES = 80


def coco_dataloader(*, train_short_edge=800, train_max_size=1333,
                    test_short_edge=800, test_max_size=1333, total_batch_size=16, num_workers=4,
                    train_names="coco_2017_train", test_names="coco_2017_val"):
    """Train/test loaders and the COCO box evaluator (``short_edge`` tuples: sampled per image)."""
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
            image_format="BGR",
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
    dl.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", tasks=("bbox",))
    return dl


dataloader = coco_dataloader()
