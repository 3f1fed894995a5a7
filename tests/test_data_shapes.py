import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import d2kd.data  # noqa: E402,F401  (registers the shapes splits)
from d2kd.data import shapes  # noqa: E402
from d2kd.data.shapes import CLASS_NAMES, render_shapes_image, register_shapes  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _digest(img, annos):
    h = hashlib.sha256(img.tobytes())
    h.update(json.dumps(annos, sort_keys=True).encode())
    return h.hexdigest()


def test_same_seed_and_index_give_identical_pixels_and_boxes():
    img1, ann1 = render_shapes_image("shapes_train", 7)
    shapes._layout_cached.cache_clear()  # recompute the layout from scratch
    img2, ann2 = render_shapes_image("shapes_train", 7)
    assert img1.shape == (128, 128, 3) and img1.dtype == np.uint8
    assert np.array_equal(img1, img2)
    assert ann1 == ann2 and len(ann1) > 0
    # the int-seed form addresses the same stream as the registered split
    img3, ann3 = render_shapes_image(1001, 7, image_size=128)
    assert np.array_equal(img1, img3) and ann1 == ann3
    # annotations without pixels agree with the rendered ones
    assert shapes.shapes_annotations("shapes_train", 7) == ann1


_CHILD = r"""
import hashlib, json, importlib, pickle, sys
# dicts of a split registered only in the parent: unpickling them must be enough to serve
# their images (what a DataLoader worker started with spawn/forkserver does)
dicts = pickle.loads(bytes.fromhex(sys.stdin.read()))
assert "d2kd.data.shapes" in sys.modules
from detectron2.data import detection_utils as utils
im = utils.read_image(dicts[1]["file_name"], format="BGR")
print("PICKLED", hashlib.sha256(im.tobytes()).hexdigest())
import d2kd.data
from d2kd.data import shapes
from d2kd.data.shapes import render_shapes_image
img, annos = render_shapes_image(sys.argv[1], int(sys.argv[2]))
h = hashlib.sha256(img.tobytes()); h.update(json.dumps(annos, sort_keys=True).encode())
print("DIGEST", h.hexdigest())
# importing again, re-registering and reloading the module (as a spawned worker may) must not
# raise, and images must still be served afterwards
import d2kd.data.builtin
from detectron2.data import detection_utils as utils
shapes.register_shapes("shapes_train", num_images=2000, seed=1001)
shapes._register_path_handler()
s2 = importlib.reload(shapes)
s2.register_shapes("shapes_train", num_images=2000, seed=1001)
im2 = utils.read_image("shapes://shapes_train/000003.png", format="BGR")
# a split registered before the reload is still served (resolved from the catalogs)
im3 = utils.read_image("shapes://shapes_val/%06d.png" % int(sys.argv[2]), format="BGR")
assert (im3 == img).all()
print("RELOAD_OK", im2.shape)
"""


def test_identical_in_a_fresh_process_and_reimport_is_harmless():
    img, annos = render_shapes_image("shapes_val", 11)
    name = "_test_pickled"
    try:
        register_shapes(name, num_images=2, seed=99, image_size=64)
        dicts = DatasetCatalog.get(name)
        payload = pickle.dumps(dicts, protocol=4).hex()
        pickled_img = render_shapes_image(name, 1)[0]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        shapes._SOURCES.pop(name, None)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, "shapes_val", "11"], cwd=REPO, env=env,
                         input=payload, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["PICKLED"] == hashlib.sha256(pickled_img.tobytes()).hexdigest()
    assert lines["DIGEST"] == _digest(img, annos)
    assert lines["RELOAD_OK"] == "(128, 128, 3)"


def test_different_seeds_and_indices_differ():
    a, ann_a = render_shapes_image(1, 0)
    b, ann_b = render_shapes_image(2, 0)
    c, ann_c = render_shapes_image(1, 1)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10
    assert ann_a != ann_b and ann_a != ann_c
    # the registered splits use different streams
    names = ["shapes_train", "shapes_val", "shapes_unlabeled", "shapes_tiny_train",
             "shapes_tiny_val"]
    seeds = {MetadataCatalog.get(n).shapes_seed for n in names}
    assert len(seeds) == len(names)
    assert not np.array_equal(render_shapes_image("shapes_train", 0)[0],
                              render_shapes_image("shapes_val", 0)[0])


def test_dataset_dicts_are_valid_detectron2_annotations():
    dicts = DatasetCatalog.get("shapes_train")
    assert len(dicts) == 2000
    assert len({d["image_id"] for d in dicts}) == 2000
    assert dicts[5]["file_name"] == "shapes://shapes_train/000005.png"
    counts, sizes = [], []
    for d in dicts[:300]:
        assert d["height"] == d["width"] == 128
        counts.append(len(d["annotations"]))
        for a in d["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            assert a["bbox_mode"] == BoxMode.XYXY_ABS
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            assert a["category_id"] in range(len(CLASS_NAMES))
            assert a["iscrowd"] == 0
            sizes.append(math.sqrt((x2 - x1) * (y2 - y1)))
    # difficulty knobs: several objects, mostly small (none below ~10 px), some up to about
    # half the image
    assert 4 <= np.mean(counts) <= 6.5, np.mean(counts)
    assert min(counts) >= 1
    assert 18 < np.median(sizes) < 30 and 9 < np.percentile(sizes, 5) < 14 and max(sizes) > 45
    cats = np.bincount([a["category_id"] for d in dicts[:300] for a in d["annotations"]],
                       minlength=len(CLASS_NAMES))
    assert (cats > 0.6 * cats.mean()).all(), cats  # every class well represented
    # dicts are fresh on every call: mutating one does not leak into the next call
    dicts[0]["annotations"].clear()
    assert len(DatasetCatalog.get("shapes_train")[0]["annotations"]) > 0


def test_read_image_through_pathmanager_equals_render(tmp_path, monkeypatch):
    img, _ = render_shapes_image("shapes_train", 5)
    read = utils.read_image("shapes://shapes_train/000005.png", format="BGR")
    assert read.dtype == np.uint8 and np.array_equal(read, img)
    assert np.array_equal(utils.read_image("shapes://shapes_train/000005.png", format="RGB"),
                          img[:, :, ::-1])
    # shapes_train_500 shares shapes_train's files
    assert DatasetCatalog.get("shapes_train_500") == DatasetCatalog.get("shapes_train")[:500]
    assert PathManager.exists("shapes://shapes_train/001999.png")
    assert PathManager.isfile("shapes://shapes_train/000000.png")
    assert PathManager.isdir("shapes://shapes_train")
    assert not PathManager.exists("shapes://shapes_train/002000.png")  # out of range
    assert not PathManager.exists("shapes://no_such_split/000000.png")
    with pytest.raises(FileNotFoundError, match="no_such_split"):
        PathManager.open("shapes://no_such_split/000000.png", "rb")
    # the self-describing seed form needs no registration
    seed_img = utils.read_image("shapes://seed1001_128px/000005.png", format="BGR")
    assert np.array_equal(seed_img, img)
    # a local copy for tools that need a real file
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    local = PathManager.get_local_path("shapes://shapes_train/000005.png")
    assert local.startswith(str(tmp_path)) and os.path.isfile(local)
    assert np.array_equal(cv2.imread(local, cv2.IMREAD_COLOR), img)


def test_served_pngs_are_cached_within_a_byte_budget(monkeypatch):
    """A second read of an image is served from the cache, byte-identical, without rendering;
    the least recently used image leaves first once the budget is full."""
    cache = shapes._PngCache(max_bytes=3 * 49_500)  # three 128 px PNGs (49,2xx bytes each)
    monkeypatch.setattr(shapes, "_PNG_CACHE", cache)
    rendered = []
    real = shapes.render_shapes_image
    monkeypatch.setattr(shapes, "render_shapes_image", lambda *a, **k: rendered.append(a[1]) or real(*a, **k))
    path = "shapes://shapes_train/{:06d}.png"
    first = [PathManager.open(path.format(i), "rb").read() for i in (0, 1, 2)]
    again = PathManager.open(path.format(0), "rb").read()  # 0 becomes the most recent
    assert rendered == [0, 1, 2] and again == first[0]
    assert np.array_equal(utils.read_image(path.format(0), format="BGR"), real("shapes_train", 0)[0])
    PathManager.open(path.format(3), "rb").read()  # evicts 1, the least recently used
    assert list(cache._items) == [(1001, 128, 2), (1001, 128, 0), (1001, 128, 3)]
    assert cache._bytes == sum(len(v) for v in cache._items.values()) <= cache.max_bytes
    PathManager.open(path.format(1), "rb").read()
    assert rendered == [0, 1, 2, 3, 1]


def test_boxes_are_tight_around_the_visible_object_mask():
    for index in range(12):
        img, annos, lab = render_shapes_image("shapes_val", index, return_label_map=True)
        assert lab.shape == img.shape[:2]
        assert set(np.unique(lab)) <= set(range(-2, len(annos)))
        for j, a in enumerate(annos):
            ys, xs = np.nonzero(lab == j)
            assert len(xs) >= 6
            # the mask lies in the box, and touches all four sides
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
    # independent geometric check: each box lies within the drawn polygon's extent (+-1 px)
    lay = shapes._sample_layout(2002, 3, 128)
    assert len(lay.kept) > 0
    for k, box in zip(lay.kept, lay.boxes):
        ob = lay.objects[k]
        outer, _ = shapes._unit_polygons(ob.cls, ob.u)
        pts = shapes._place(outer, ob.cx, ob.cy, ob.size / 2, ob.angle)
        lo, hi = pts.min(0), pts.max(0)
        assert box[0] >= math.floor(lo[0]) - 1 and box[2] <= math.ceil(hi[0]) + 1
        assert box[1] >= math.floor(lo[1]) - 1 and box[3] <= math.ceil(hi[1]) + 1


def test_objects_are_drawn_where_the_masks_are():
    # pixel-level link between boxes and pixels: the image differs from the same image
    # rendered without objects (same background stream) only on object pixels (+ noise)
    seed, index = 2002, 4
    lay = shapes._sample_layout(seed, index, 128)
    with_objects = shapes._render_pixels(seed, index, lay).astype(int)
    empty = shapes._Layout(128, lay.objects, np.full_like(lay.label, -1), [], [])
    background = shapes._render_pixels(seed, index, empty).astype(int)
    diff = np.abs(with_objects - background).sum(axis=2)
    on_objects, off_objects = diff[lay.label >= 0], diff[lay.label < 0]
    assert off_objects.max() == 0
    assert np.mean(on_objects > 20) > 0.6


def test_unlabeled_split_has_no_annotations():
    dicts = DatasetCatalog.get("shapes_unlabeled")
    assert len(dicts) == 2000
    assert all("annotations" not in d for d in dicts)
    assert dicts[0]["file_name"] == "shapes://shapes_unlabeled/000000.png"
    # its images are real, distinct from the labeled ones; hidden GT is available to tools
    img = utils.read_image(dicts[0]["file_name"], format="BGR")
    assert img.shape == (128, 128, 3)
    assert not np.array_equal(img, render_shapes_image("shapes_train", 0)[0])
    assert len(render_shapes_image("shapes_unlabeled", 0)[1]) > 0
    assert MetadataCatalog.get("shapes_unlabeled").thing_classes == list(CLASS_NAMES)


def test_register_shapes_is_idempotent_and_replaceable():
    name = "_test_shapes_reg"
    try:
        register_shapes(name, num_images=3, seed=77, image_size=64)
        register_shapes(name, num_images=3, seed=77, image_size=64)  # no-op, no raise
        d = DatasetCatalog.get(name)
        assert len(d) == 3 and d[0]["height"] == 64
        assert utils.read_image(d[2]["file_name"]).shape == (64, 64, 3)
        register_shapes(name, num_images=5, seed=78, image_size=64, labeled=False)  # replace
        d2 = DatasetCatalog.get(name)
        assert len(d2) == 5 and "annotations" not in d2[0]
        assert MetadataCatalog.get(name).shapes_seed == 78
        with pytest.raises(ValueError, match="seed"):
            register_shapes(name + "_sub", num_images=2, seed=1, source="shapes_train")
    finally:
        for n in (name, name + "_sub"):
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
            if n in MetadataCatalog.list():
                MetadataCatalog.remove(n)
            shapes._SOURCES.pop(n, None)


def test_train_loader_with_stock_dataset_mapper():
    from detectron2.data import DatasetMapper, build_detection_train_loader
    from detectron2.data import transforms as T

    torch.manual_seed(0)
    mapper = DatasetMapper(is_train=True, augmentations=[T.RandomFlip(prob=0.5)],
                           image_format="BGR")
    loader = build_detection_train_loader(
        dataset=DatasetCatalog.get("shapes_tiny_train"), mapper=mapper, total_batch_size=4,
        num_workers=0,
    )
    batch = next(iter(loader))
    assert len(batch) == 4
    by_id = {d["image_id"]: d for d in DatasetCatalog.get("shapes_tiny_train")}
    for item in batch:
        assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.uint8
        inst = item["instances"]
        assert len(inst) == len(by_id[item["image_id"]]["annotations"]) > 0
        boxes = inst.gt_boxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 128
        assert inst.gt_classes.max() < len(CLASS_NAMES)


def test_coco_evaluator_scores_ground_truth_as_perfect(tmp_path):
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    name = "shapes_tiny_val"
    assert MetadataCatalog.get(name).evaluator_type == "coco"
    ev = COCOEvaluator(name, output_dir=str(tmp_path), tasks=("bbox",))
    ev.reset()
    for d in DatasetCatalog.get(name):
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in d["annotations"]]))
        inst.scores = torch.ones(len(d["annotations"]))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    res = ev.evaluate()
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["bbox"]["APs"] == pytest.approx(100.0)
