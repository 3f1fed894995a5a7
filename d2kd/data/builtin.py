"""Dataset registrations done when ``d2kd.data`` is imported.

* The embedded synthetic ``shapes_*`` splits (:mod:`d2kd.data.shapes`), which need no files.
* VOC 2007/2012 and COCO 2017 are registered by Detectron2 itself
  (``detectron2.data.datasets.builtin``, rooted at ``$DETECTRON2_DATASETS``, default
  ``./datasets``, read when detectron2 is imported); they are *not* re-registered here. This
  module adds only what Detectron2 lacks:

  - ``voc_2007_2012_trainval``: VOC2007 trainval + VOC2012 trainval in one name (the usual
    "07+12" training set; listing ``("voc_2007_trainval", "voc_2012_trainval")`` in
    ``DATASETS.TRAIN`` is equivalent). A training set: no evaluator is attached.
  - ``coco_2017_unlabeled``: the 123k images of COCO ``unlabeled2017`` as an image list
    (``file_name``/``image_id``/``height``/``width``, no ``annotations``), read from
    ``coco/annotations/image_info_unlabeled2017.json``.

:func:`check_dataset_available` tells, in one line, which file of a registered real dataset
is missing, before a training run starts.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Iterator, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import builtin as _d2_builtin  # noqa: F401  (VOC/COCO names)
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.utils.file_io import PathManager

from .. import import_check  # noqa: F401  (first: a clear error where "d2kd" is a folder, not the package)
from .shapes import is_shapes_dataset, register_shapes

__all__ = [
    "SHAPES_SPLITS",
    "DATASETS_ROOT",
    "check_dataset_available",
    "DatasetNotRegisteredError",
    "load_coco_unlabeled",
    "register_all_d2kd",
]

# name -> register_shapes kwargs. All 128 px (the tiny ones too, so that a config can swap a
# tiny split in without changing its input sizes: a few dozen images render in no time).
SHAPES_SPLITS = {
    "shapes_train": dict(num_images=2000, seed=1001),
    "shapes_val": dict(num_images=300, seed=2002),
    # the first 500 images of shapes_train (same files, same image ids)
    "shapes_train_500": dict(num_images=500, seed=1001, source="shapes_train"),
    "shapes_unlabeled": dict(num_images=2000, seed=3003, labeled=False),
    "shapes_tiny_train": dict(num_images=32, seed=4004),
    "shapes_tiny_val": dict(num_images=16, seed=5005),
    # the same images with instance masks (Mask R-CNN; COCO segm evaluation)
    "shapes_train_masks": dict(num_images=2000, seed=1001, source="shapes_train", masks=True),
    "shapes_val_masks": dict(num_images=300, seed=2002, source="shapes_val", masks=True),
    "shapes_tiny_train_masks": dict(num_images=32, seed=4004, source="shapes_tiny_train", masks=True),
    "shapes_tiny_val_masks": dict(num_images=16, seed=5005, source="shapes_tiny_val", masks=True),
}


def _detectron2_root() -> str:
    """The root Detectron2's builtin registrations used (it read $DETECTRON2_DATASETS when it
    was imported); derived from a registered VOC path so that both always agree."""
    try:
        return os.path.dirname(MetadataCatalog.get("voc_2007_trainval").dirname)
    except AttributeError:  # pragma: no cover - detectron2 without its builtin VOC names
        return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


DATASETS_ROOT = _detectron2_root()


def load_coco_unlabeled(json_file: str, image_root: str) -> List[dict]:
    """Image-list dicts (no annotations) from a COCO ``image_info_*.json``."""
    with PathManager.open(json_file) as f:
        images = json.load(f)["images"]
    return [
        {
            "file_name": os.path.join(image_root, im["file_name"]),
            "image_id": im["id"],
            "height": im["height"],
            "width": im["width"],
        }
        for im in images
    ]


def _load_voc_0712(dirnames, split):
    dicts = []
    for d in dirnames:
        dicts.extend(load_voc_instances(d, split, VOC_CLASS_NAMES))
    return dicts


def register_all_d2kd(root: str) -> None:
    """Register d2kd's datasets (idempotent: names already registered are left alone)."""
    for name, kwargs in SHAPES_SPLITS.items():
        register_shapes(name, **kwargs)

    registered = set(DatasetCatalog.list())
    name = "voc_2007_2012_trainval"
    if name not in registered:
        dirnames = [os.path.join(root, "VOC2007"), os.path.join(root, "VOC2012")]
        DatasetCatalog.register(name, lambda: _load_voc_0712(dirnames, "trainval"))
        MetadataCatalog.get(name).set(
            thing_classes=list(VOC_CLASS_NAMES), dirnames=dirnames, years=[2007, 2012],
            split="trainval",
        )

    name = "coco_2017_unlabeled"
    if name not in registered:
        json_file = os.path.join(root, "coco", "annotations", "image_info_unlabeled2017.json")
        image_root = os.path.join(root, "coco", "unlabeled2017")
        DatasetCatalog.register(name, lambda: load_coco_unlabeled(json_file, image_root))
        meta = _get_builtin_metadata("coco")
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **meta)


class DatasetNotRegisteredError(KeyError):
    """Raised by :func:`check_dataset_available` for an unknown name (a ``KeyError`` whose
    message prints as plain text)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _required_paths(meta) -> Iterator[str]:
    """Paths a registered dataset needs, most general first."""
    dirnames = list(getattr(meta, "dirnames", None) or [])
    if getattr(meta, "dirname", None):
        dirnames.insert(0, meta.dirname)
    split = getattr(meta, "split", None)
    for d in dirnames:  # Pascal VOC layout
        yield d
        if split:
            yield os.path.join(d, "ImageSets", "Main", f"{split}.txt")
        yield os.path.join(d, "Annotations")
        yield os.path.join(d, "JPEGImages")
    for key in ("image_root", "json_file", "image_dir", "gt_dir", "sem_seg_root",
                "panoptic_root", "panoptic_json"):
        value = getattr(meta, key, None)
        if isinstance(value, str) and value:
            yield value


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    try:
        return PathManager.exists(path)
    except NotImplementedError:  # a handler that cannot tell: do not block the run
        return True


def check_dataset_available(name: str) -> None:
    """Fail early, in one line, when a dataset cannot be loaded.

    * unknown ``name``: :class:`DatasetNotRegisteredError` (a ``KeyError``) listing close or
      available names;
    * a registered real dataset (VOC, COCO, ...) whose files are missing: ``FileNotFoundError``
      naming the first missing path and how to point ``DETECTRON2_DATASETS`` at the data;
    * shapes datasets (rendered, no files) and datasets without path metadata: returns.
    """
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=6, cutoff=0.6)
        if close:
            hint = "did you mean: " + ", ".join(close)
        else:
            some = [n for p in ("shapes_", "voc_", "coco_2017") for n in registered
                    if n.startswith(p) and "panoptic" not in n]
            hint = "available include: " + ", ".join(some)
        raise DatasetNotRegisteredError(
            f"dataset '{name}' is not registered; {hint} "
            f"({len(registered)} registered in all: detectron2.data.DatasetCatalog.list())"
        )
    if is_shapes_dataset(name):
        return
    meta = MetadataCatalog.get(name)
    for path in _required_paths(meta):
        if not _exists(path):
            if not os.path.isabs(path) and "://" not in path:
                path = f"{path} (i.e. {os.path.abspath(path)})"
            raise FileNotFoundError(
                f"dataset '{name}' is registered but {path} does not exist: set "
                f"DETECTRON2_DATASETS to the folder holding VOC2007/, VOC2012/ and coco/ "
                f"(now {DATASETS_ROOT!r}, read when detectron2 is imported), "
                f"see datasets/README.md"
            )


register_all_d2kd(DATASETS_ROOT)
