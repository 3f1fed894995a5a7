"""Semi-supervised training data (docs/methods.md §5.2): two training streams alternating per step.

The reference (``detectron/lib/roi_data/loader.py``, per GPU) keeps a labeled queue and an
"unlabel" queue and feeds the GPU from them in turn: even steps labeled, odd steps unlabeled
(1:1). The "unlabel" pool is ``coco_2017_train ∪ unlabeled2017`` with the teacher's boxes as GT.
Both streams train with the same losses: the detector's on their (pseudo-)GT, and the
distillers' (ADL on every non-ignored anchor). Nothing in the model depends on the stream.

Here each stream is an ordinary Detectron2 training loader (``build_detection_train_loader``:
``DatasetMapper``, ``TrainingSampler`` sharded over the processes, aspect-ratio grouping), and
:class:`AlternatingLoader` yields their batches in a fixed repeating pattern (``ratio=(1, 1)``:
labeled, unlabeled, labeled, ...). Under ``--num-gpus N`` every process alternates its own two
loaders in lockstep, as the reference does per GPU.

In a LazyConfig (``cfg.dataloader.train``; the trainer only instantiates and iterates it)::

    dataloader.train = L(build_semi_supervised_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_train_500"),
        unlabeled_dataset=L(semi_supervised_dataset_dicts)(
            labeled="${..dataset.names}", pseudo_label_files=["output/.../pseudo.json"]),
        mapper=L(DatasetMapper)(...), total_batch_size=8, ratio=(1, 1))
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterable, List, Optional, Sequence, Union

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts

from .pseudo_labels import load_pseudo_label_dicts

logger = logging.getLogger(__name__)

__all__ = ["AlternatingLoader", "build_semi_supervised_train_loader", "semi_supervised_dataset_dicts",
           "STREAM_KEY"]

#: Key added to every dict of a batch: the name of the stream it came from.
STREAM_KEY = "d2kd_stream"


class AlternatingLoader:
    """Batches from several (infinite) loaders in a fixed repeating pattern.

    ``ratio=(a, b, ...)``: ``a`` batches from the first loader, then ``b`` from the second, ...,
    then again. A loader that ends (finite) is restarted. Every dict of a batch gets
    ``dict[STREAM_KEY] = names[i]`` (ignored by the models; useful for logging and tests).
    """

    def __init__(self, loaders: Sequence[Iterable], ratio: Sequence[int] = (1, 1),
                 names: Optional[Sequence[str]] = None):
        loaders, ratio = list(loaders), [int(r) for r in ratio]
        if len(loaders) != len(ratio):
            raise ValueError(f"AlternatingLoader: {len(loaders)} loaders but ratio {ratio}")
        if any(r < 0 for r in ratio) or sum(ratio) == 0:
            raise ValueError(f"AlternatingLoader: ratio must be non-negative with a positive sum, got {ratio}")
        self.loaders, self.ratio = loaders, ratio
        self.names = list(names) if names is not None else [f"stream{i}" for i in range(len(loaders))]
        self.pattern: List[int] = [i for i, r in enumerate(ratio) for _ in range(r)]

    def __iter__(self):
        iters = {}
        for i in itertools.cycle(self.pattern):
            if i not in iters:
                iters[i] = iter(self.loaders[i])
            try:
                batch = next(iters[i])
            except StopIteration:
                iters[i] = iter(self.loaders[i])
                batch = next(iters[i])
            for d in batch:
                if isinstance(d, dict):
                    d[STREAM_KEY] = self.names[i]
            yield batch


def semi_supervised_dataset_dicts(
    labeled: Union[str, Sequence[str]],
    pseudo_label_files: Sequence[str] = (),
    *,
    image_root: Optional[str] = None,
    min_score: Optional[float] = None,
    include_labeled: bool = True,
) -> List[dict]:
    """The "unlabeled" pool of §5.2: the labeled set ∪ the pseudo-labelled images.

    Images without any (pseudo-)box are dropped (Detectron's roidb filter does the same).
    The json categories must match the labeled set's ``thing_classes``.
    """
    names = [labeled] if isinstance(labeled, str) else list(labeled)
    pool = list(get_detection_dataset_dicts(names, filter_empty=True)) if include_labeled else []
    # read after loading: a COCO-json dataset sets its thing_classes when its dicts are loaded
    classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
    n_labeled = len(pool)
    if isinstance(pseudo_label_files, str):
        pseudo_label_files = [pseudo_label_files]
    for path in pseudo_label_files:
        dicts = load_pseudo_label_dicts(path, image_root, min_score=min_score, thing_classes=classes)
        kept = [d for d in dicts if d["annotations"]]
        logger.info("pseudo-labels %s: %d of %d images have boxes (%d boxes)", path, len(kept),
                    len(dicts), sum(len(d["annotations"]) for d in kept))
        pool.extend(kept)
    logger.info("unlabeled stream: %d labeled + %d pseudo-labelled images", n_labeled, len(pool) - n_labeled)
    if not pool:
        raise ValueError(f"the unlabeled stream is empty (labeled={names}, files={list(pseudo_label_files)})")
    return pool


def build_semi_supervised_train_loader(
    dataset,
    unlabeled_dataset,
    *,
    mapper,
    total_batch_size: int,
    ratio: Sequence[int] = (1, 1),
    unlabeled_total_batch_size: Optional[int] = None,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    unlabeled_mapper=None,
) -> AlternatingLoader:
    """Two ``build_detection_train_loader`` streams alternating ``ratio`` (labeled first).

    ``dataset``/``unlabeled_dataset``: lists of dicts (e.g. ``get_detection_dataset_dicts`` and
    :func:`semi_supervised_dataset_dicts`). Batch sizes are totals over all processes, as in
    ``build_detection_train_loader``; the unlabeled one defaults to ``total_batch_size``.
    """
    labeled = build_detection_train_loader(
        dataset, mapper=mapper, total_batch_size=total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping, num_workers=num_workers,
    )
    unlabeled = build_detection_train_loader(
        unlabeled_dataset, mapper=unlabeled_mapper if unlabeled_mapper is not None else mapper,
        total_batch_size=unlabeled_total_batch_size or total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping, num_workers=num_workers,
    )
    return AlternatingLoader([labeled, unlabeled], ratio=ratio, names=["labeled", "unlabeled"])
