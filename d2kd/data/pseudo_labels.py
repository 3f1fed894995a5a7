"""Teacher pseudo-labels (docs/methods.md §5.2): annotate an image set with a trained detector, store
the boxes as a COCO-format json, and load that json back as a training set.

Workflow (``tools/pseudo_label.py`` is the command line over this module)::

    images (registered dataset or folder)
      └─ annotate_images(teacher, ...)   one shard, appends one json line per image to
                                         <output>.parts/shard-IIIII-of-NNNNN.jsonl (resumable)
      └─ merge_parts(...)                all shards done -> <output> (COCO json, atomic write)
    load_pseudo_label_dicts(<output>)    -> Detectron2 dataset dicts (boxes as (pseudo-)GT)
    register_pseudo_labeled_dataset(name, <output>)

The json: ``images`` (id, file_name, height, width), ``annotations`` (id, image_id,
category_id = the dataset's category id, bbox = XYWH absolute, area, iscrowd 0, score),
``categories`` (id, name) and ``info`` (teacher, threshold, source, image_root). Only boxes with
score ≥ the threshold are kept (default 0.5: the threshold of the released file is not in the
reference code, §5.2). Images without any box stay in ``images`` (so the file records that they
were annotated) and are dropped at training time like any image without GT (Detectron's
roidb filter does the same).

Resuming: a shard re-reads its part file (and every other part file in the folder) and skips
the image ids already there, so a killed run continues where it stopped, whatever the shard
count was before. A truncated last line (killed mid-write) is cut off.
"""
from __future__ import annotations

import datetime
import glob
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..checkpoint import load_weights
from ..config import build_model_from_config_file, config_test_resize, load_config_file

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "image_dicts_from_source",
    "category_info",
    "shard_dicts",
    "parts_dir",
    "part_file",
    "read_part_files",
    "annotate_images",
    "merge_parts",
    "read_pseudo_label_json",
    "load_pseudo_label_dicts",
    "register_pseudo_labeled_dataset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# What to annotate
# ---------------------------------------------------------------------------------------------
def _image_size(path: str) -> Tuple[int, int]:
    from PIL import Image

    with PathManager.open(path, "rb") as f:
        w, h = Image.open(f).size  # reads the header only
    return h, w


def image_dicts_from_source(source: str) -> Tuple[List[dict], str]:
    """``(dicts, image_root)`` for a registered dataset name or a folder of images.

    Dicts carry ``file_name``, ``image_id``, ``height``, ``width`` only (any annotation of a
    registered set is dropped: the teacher's boxes replace it). A folder's images are sorted by
    relative path and numbered 1..n.
    """
    if source in DatasetCatalog.list():
        dicts = [
            {k: d[k] for k in ("file_name", "image_id", "height", "width") if k in d}
            for d in DatasetCatalog.get(source)
        ]
        ids = [d["image_id"] for d in dicts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset '{source}' has duplicate image ids; pseudo-labels are keyed by image id")
        image_root = getattr(MetadataCatalog.get(source), "image_root", "") or ""
        return dicts, image_root
    if os.path.isdir(source):
        files = sorted(
            os.path.relpath(os.path.join(r, f), source)
            for r, _, fs in os.walk(source)
            for f in fs
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under folder {source}")
        dicts = []
        for i, rel in enumerate(files):
            path = os.path.join(source, rel)
            h, w = _image_size(path)
            dicts.append({"file_name": path, "image_id": i + 1, "height": h, "width": w})
        return dicts, source
    raise FileNotFoundError(
        f"'{source}' is neither a registered dataset name nor a folder of images "
        f"(registered shapes/COCO names include shapes_unlabeled, coco_2017_unlabeled)"
    )


def category_info(metadata_name: Optional[str], num_classes: int) -> Tuple[List[dict], List[int]]:
    """COCO ``categories`` and contiguous-id -> dataset-id list for a dataset's metadata.

    Dataset ids come from ``thing_dataset_id_to_contiguous_id`` when the metadata has it (COCO:
    1..90 with gaps), else they are the contiguous ids (Detectron2's ``convert_to_coco_dict``
    convention, e.g. shapes: 0..7).
    """
    if metadata_name is None:
        names = [f"class_{i}" for i in range(num_classes)]
        to_dataset = list(range(num_classes))
    else:
        meta = MetadataCatalog.get(metadata_name)
        names = list(getattr(meta, "thing_classes", []) or [])
        if len(names) != num_classes:
            raise ValueError(
                f"the teacher predicts {num_classes} classes but dataset '{metadata_name}' has "
                f"{len(names)} thing_classes; pick matching metadata (--metadata-from)"
            )
        mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
        if mapping:
            inv = {v: k for k, v in mapping.items()}
            to_dataset = [int(inv[i]) for i in range(num_classes)]
        else:
            to_dataset = list(range(num_classes))
    cats = [{"id": to_dataset[i], "name": names[i]} for i in range(num_classes)]
    return cats, to_dataset


def shard_dicts(dicts: Sequence[dict], num_shards: int, shard_id: int) -> List[dict]:
    """Shard ``shard_id`` of ``num_shards``: every ``num_shards``-th image (deterministic)."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard id {shard_id} is not in [0, {num_shards})")
    return list(dicts[shard_id::num_shards])


# ---------------------------------------------------------------------------------------------
# Part files
# ---------------------------------------------------------------------------------------------
def parts_dir(output_json: str) -> str:
    return output_json + ".parts"


def part_file(output_json: str, shard_id: int, num_shards: int) -> str:
    return os.path.join(parts_dir(output_json), f"shard-{shard_id:05d}-of-{num_shards:05d}.jsonl")


def _read_jsonl(path: str) -> List[dict]:
    out = []
    with open(path, "r") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # truncated by a kill mid-write: that image is redone
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def read_part_files(output_json: str) -> Dict[int, dict]:
    """image id -> record ``{"image": {...}, "annotations": [...]}`` over every part file."""
    records: Dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(parts_dir(output_json), "*.jsonl"))):
        for rec in _read_jsonl(path):
            records[rec["image"]["id"]] = rec
    return records


def _open_for_append(path: str):
    """Open a part file for appending, first cutting a truncated last line off."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a")


# ---------------------------------------------------------------------------------------------
# Annotating
# ---------------------------------------------------------------------------------------------
def _relative_name(file_name: str, image_root: str) -> str:
    if image_root and "://" not in file_name:
        rel = os.path.relpath(file_name, image_root)
        if not rel.startswith(".."):
            return rel
    return file_name


def instances_to_annotations(instances, score_thresh: float, to_dataset_id: Sequence[int]) -> List[dict]:
    """Detectron2 ``Instances`` (pred_boxes XYXY, scores, pred_classes) -> COCO annotations
    (without ``id``/``image_id``) with score ≥ ``score_thresh``."""
    instances = instances.to("cpu")
    keep = instances.scores >= score_thresh
    boxes = instances.pred_boxes.tensor[keep].numpy().astype(np.float64)
    scores = instances.scores[keep].numpy().tolist()
    classes = instances.pred_classes[keep].numpy().tolist()
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS) if len(boxes) else boxes
    out = []
    for box, score, cls in zip(boxes.tolist(), scores, classes):
        box = [round(float(v), 2) for v in box]
        out.append({
            "category_id": int(to_dataset_id[cls]),
            "bbox": box,
            "area": round(box[2] * box[3], 2),
            "iscrowd": 0,
            "score": round(float(score), 5),
        })
    return out


class _MapList(torch.utils.data.Dataset):
    def __init__(self, dicts, mapper):
        self.dicts, self.mapper = dicts, mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        return self.dicts[i], self.mapper(dict(self.dicts[i]))


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


@torch.no_grad()
def annotate_images(
    model: Callable[[List[dict]], List[dict]],
    dicts: Sequence[dict],
    mapper: Callable[[dict], dict],
    part_path: str,
    *,
    output_json: Optional[str] = None,
    to_dataset_id: Sequence[int],
    image_root: str = "",
    score_thresh: float = 0.5,
    batch_size: int = 1,
    num_workers: int = 0,
    log_period_s: float = 30.0,
    desc: str = "",
) -> int:
    """Run ``model`` (a Detectron2 detector in eval mode, or any callable with its inference
    interface) on the images of ``dicts`` not yet done, appending one json line per image to
    ``part_path``. Returns the number of images annotated by this call.

    Done images are those in any part file next to ``part_path`` (``output_json``'s parts
    folder; default: the folder of ``part_path``).
    """
    if output_json is not None:
        done = set(read_part_files(output_json))
    else:
        done = {r["image"]["id"] for r in _read_jsonl(part_path)} if os.path.exists(part_path) else set()
    todo = [d for d in dicts if d["image_id"] not in done]
    total, skipped = len(dicts), len(dicts) - len(todo)
    if skipped:
        logger.info("%sresuming: %d of %d images already annotated, %d to go", desc, skipped, total, len(todo))
    if not todo:
        return 0
    loader = torch.utils.data.DataLoader(
        _MapList(todo, mapper), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=lambda batch: batch,
    )
    start = last_log = time.perf_counter()
    n = 0
    with _open_for_append(part_path) as f:
        for batch in loader:
            raw, inputs = zip(*batch)
            outputs = model(list(inputs))
            for d, out in zip(raw, outputs):
                rec = {
                    "image": {
                        "id": d["image_id"],
                        "file_name": _relative_name(d["file_name"], image_root),
                        "height": int(d["height"]),
                        "width": int(d["width"]),
                    },
                    "annotations": instances_to_annotations(out["instances"], score_thresh, to_dataset_id),
                }
                f.write(json.dumps(rec) + "\n")
            f.flush()
            n += len(batch)
            now = time.perf_counter()
            if now - last_log >= log_period_s or n == len(todo):
                rate = n / max(now - start, 1e-9)
                logger.info(
                    "%s%d/%d images (%.1f%%), %.2f img/s, ETA %s", desc, skipped + n, total,
                    100.0 * (skipped + n) / total, rate, _format_eta((len(todo) - n) / max(rate, 1e-9)),
                )
                last_log = now
    return n


def merge_parts(
    output_json: str,
    dicts: Sequence[dict],
    categories: List[dict],
    info: Optional[dict] = None,
    *,
    remove_parts: bool = False,
) -> Optional[dict]:
    """Write the COCO json (atomically) if every image of ``dicts`` is in the part files.

    Returns a summary dict, or ``None`` (nothing written) when images are missing; the missing
    count is logged.
    """
    records = read_part_files(output_json)
    missing = [d["image_id"] for d in dicts if d["image_id"] not in records]
    if missing:
        logger.info("merge of %s: %d of %d images not annotated yet (e.g. ids %s); not written",
                    output_json, len(missing), len(dicts), missing[:5])
        return None
    images, annotations = [], []
    for d in dicts:
        rec = records[d["image_id"]]
        images.append(rec["image"])
        for a in rec["annotations"]:
            annotations.append(dict(a, id=len(annotations) + 1, image_id=d["image_id"]))
    data = {
        "info": dict(info or {}, date_created=datetime.datetime.now().isoformat(timespec="seconds")),
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
    tmp = f"{output_json}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, output_json)  # atomic: readers see the old file or the whole new one
    if remove_parts:
        for p in glob.glob(os.path.join(parts_dir(output_json), "*.jsonl")):
            os.remove(p)
        try:
            os.rmdir(parts_dir(output_json))
        except OSError:
            pass
    with_boxes = sum(1 for d in dicts if records[d["image_id"]]["annotations"])
    summary = {"images": len(images), "images_with_boxes": with_boxes, "boxes": len(annotations)}
    logger.info("wrote %s: %s", output_json, summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------------------------
#: Keys every pseudo-label json has (what :func:`merge_parts` writes).
REQUIRED_KEYS = ("images", "annotations", "categories")


def read_pseudo_label_json(json_file: str) -> dict:
    """The parsed pseudo-label json, or a one-line error naming the file and how to rewrite it.

    ``merge_parts`` writes the file atomically, so an empty or truncated one was cut short
    elsewhere (a copy or download interrupted, a full disk); ``json``'s own error ("Expecting
    value: line 1 column 1") names neither the file nor the fix.
    """
    if not PathManager.exists(json_file):
        raise FileNotFoundError(
            f"pseudo-label file {json_file} does not exist: create it with tools/pseudo_label.py "
            f"(see its --help and configs/shapes/retinanet_adl_semi.py)"
        )
    rewrite = (
        f"write it again: run tools/pseudo_label.py with --output {json_file} (and the teacher's "
        f"--config-file, --weights, --source); it replaces a file it cannot read"
    )
    with PathManager.open(json_file, "r") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(
            f"pseudo-label file {json_file} is empty ({len(text)} bytes), e.g. cut short by an "
            f"interrupted copy or a full disk: {rewrite}"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"pseudo-label file {json_file} is not valid JSON ({e.msg} at line {e.lineno} column "
            f"{e.colno} of {len(text)} bytes), e.g. truncated by an interrupted copy or a full "
            f"disk: {rewrite}"
        ) from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(
            f"pseudo-label file {json_file} is not a COCO-format pseudo-label json (no "
            f"{', '.join(repr(k) for k in missing)}): point to a file written by "
            f"tools/pseudo_label.py, or {rewrite}"
        )
    return data


def load_pseudo_label_dicts(
    json_file: str,
    image_root: Optional[str] = None,
    *,
    min_score: Optional[float] = None,
    thing_classes: Optional[Sequence[str]] = None,
) -> List[dict]:
    """Detectron2 dataset dicts from a pseudo-label json: boxes (XYWH_ABS) with contiguous
    ``category_id`` (categories sorted by id, checked against ``thing_classes`` if given) and the
    teacher's ``score`` kept. ``min_score`` re-thresholds a json written with a lower threshold.
    ``image_root`` (default: the json's ``info.image_root``) is joined to relative file names.
    """
    data = read_pseudo_label_json(json_file)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if thing_classes is not None and [c["name"] for c in cats] != list(thing_classes):
        raise ValueError(
            f"{json_file}: categories {[c['name'] for c in cats]} do not match the training "
            f"classes {list(thing_classes)}"
        )
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    if image_root is None:
        image_root = data.get("info", {}).get("image_root", "") or ""
    by_image: Dict[int, List[dict]] = {}
    for a in data["annotations"]:
        if min_score is not None and a.get("score", 1.0) < min_score:
            continue
        by_image.setdefault(a["image_id"], []).append({
            "bbox": list(a["bbox"]),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[a["category_id"]],
            "iscrowd": 0,
            "score": a.get("score", 1.0),
        })
    dicts = []
    for im in data["images"]:
        fn = im["file_name"]
        if image_root and "://" not in fn and not os.path.isabs(fn):
            fn = os.path.join(image_root, fn)
        dicts.append({
            "file_name": fn,
            "image_id": im["id"],
            "height": im["height"],
            "width": im["width"],
            "annotations": by_image.get(im["id"], []),
        })
    return dicts


def register_pseudo_labeled_dataset(
    name: str,
    json_file: str,
    image_root: Optional[str] = None,
    *,
    metadata_from: Optional[str] = None,
    min_score: Optional[float] = None,
) -> None:
    """Register a pseudo-label json as a dataset (lazily read; idempotent for the same file).

    ``metadata_from``: a registered dataset whose ``thing_classes`` (and COCO id mapping) the
    set shares, e.g. ``shapes_train`` or ``coco_2017_train``; its class names are checked
    against the json's categories when the dicts are loaded.
    """
    meta_kwargs = {}
    if metadata_from is not None:
        src = MetadataCatalog.get(metadata_from)
        for key in ("thing_classes", "thing_colors", "thing_dataset_id_to_contiguous_id"):
            if hasattr(src, key):
                meta_kwargs[key] = getattr(src, key)
    if name in DatasetCatalog.list():
        if getattr(MetadataCatalog.get(name), "pseudo_label_json", None) == json_file:
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    classes = meta_kwargs.get("thing_classes")
    DatasetCatalog.register(
        name, lambda: load_pseudo_label_dicts(json_file, image_root, min_score=min_score, thing_classes=classes)
    )
    MetadataCatalog.get(name).set(
        pseudo_label_json=json_file, json_file=json_file, image_root=image_root or "",
        evaluator_type="coco", **meta_kwargs,
    )


# ---------------------------------------------------------------------------------------------
# The teacher as an annotator
# ---------------------------------------------------------------------------------------------
def teacher_test_resize(config_file: str, opts: Sequence[str] = ()) -> Tuple[int, int]:
    """``(short_edge, max_size)`` of the teacher config's test-time resize
    (:func:`d2kd.config.config_test_resize`); Detectron2's (800, 1333) if it has none."""
    return config_test_resize(load_config_file(config_file, opts)) or (800, 1333)


def build_annotator(
    config_file: str,
    weights: str,
    *,
    opts: Sequence[str] = (),
    device: str = "cpu",
    min_size: Optional[int] = None,
    max_size: Optional[int] = None,
):
    """``(model, mapper)``: the teacher in eval mode on ``device`` (built with
    :func:`d2kd.config.build_model_from_config_file` and :func:`d2kd.checkpoint.load_weights`),
    and a test-mode ``DatasetMapper`` resizing like the teacher's test config (or as given)."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetMapper

    model = build_model_from_config_file(config_file, opts)
    load_weights(model, weights, what=f"teacher ({config_file})")
    model.to(device).eval()
    short, longest = teacher_test_resize(config_file, opts)
    short = min_size or short
    longest = max_size or longest
    mapper = DatasetMapper(
        is_train=False,
        augmentations=[T.ResizeShortestEdge(short_edge_length=short, max_size=longest)],
        image_format=getattr(model, "input_format", "BGR"),
    )
    logger.info("pseudo-labelling with %s (%s), test resize short=%d max=%d, on %s",
                config_file, weights, short, longest, device)
    return model, mapper
