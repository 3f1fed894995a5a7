"""The embedded synthetic shapes set (128-px images rendered on the fly; nothing to download)."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

import d2kd.data  # noqa: F401  (registers the shapes datasets; fails clearly where "d2kd" is a folder)

NUM_CLASSES = len(MetadataCatalog.get("shapes_train").thing_classes)

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[L(T.RandomFlip)(horizontal=True)],
            image_format="BGR",
        ),
        total_batch_size=8,
        num_workers=0,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=1333)],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=0,
    ),
    # COCOEvaluator converts a set without a COCO json (shapes) into one, cached in output_dir,
    # and refuses to run without it; d2kd's trainer would fill it in, but Detectron2's own
    # tools/lazyconfig_train_net.py instantiates the evaluator as written.
    evaluator=L(COCOEvaluator)(
        dataset_name="${..test.dataset.names}",
        tasks=("bbox",),
        output_dir="${...train.output_dir}/inference",
    ),
)
