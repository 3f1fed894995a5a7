"""The COCO ADL/SAD configs: their spec values (§5.3), and each one builds (R101/X101 teacher
from the model-zoo yacs config with random weights saved here, model-zoo R50/R101 student) and
trains two iterations on a tiny fake COCO tree written by the test."""
import json
import os

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: F401,E402
from d2kd.data.mixed_loader import STREAM_KEY  # noqa: E402

CONFIGS = {
    "configs/coco/retinanet_R101_R50_adl.py": dict(depth=50, scale=600, max_size=1000, semi=False),
    "configs/coco/retinanet_R101_R50_adl_semi.py": dict(depth=50, scale=600, max_size=1000, semi=True),
    "configs/coco/retinanet_X101_R101_adl.py": dict(depth=101, scale=500, max_size=833, semi=False),
    "configs/coco/retinanet_X101_R101_adl_semi.py": dict(depth=101, scale=500, max_size=833, semi=True),
}
THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]


def _tame(model):
    """Random FrozenBN ResNets (scale 1, no statistics) blow activations up to inf through 50+
    layers on raw-pixel inputs (pixel std 1); a FrozenBN scale of 0.1 keeps a random net finite."""
    from detectron2.layers import FrozenBatchNorm2d

    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.fill_(0.1)
    return model


@pytest.fixture(scope="module")
def fake_coco(tmp_path_factory):
    """coco/{train2017,val2017,unlabeled2017} with a few 72x96 images, instances jsons,
    image_info_unlabeled2017.json and a pseudo-label json (relative file names, as released)."""
    import cv2

    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    cats = [{"id": c["id"], "name": c["name"]} for c in THINGS]

    def images(split, n):
        (root / split).mkdir()
        out = []
        for i in range(n):
            name = f"{split}_{i:03d}.jpg"
            cv2.imwrite(str(root / split / name), rng.integers(0, 255, (72, 96, 3), dtype=np.uint8))
            out.append({"id": 100 * len(split) + i, "file_name": name, "height": 72, "width": 96})
        return out

    def boxes(imgs):
        anns = []
        for im in imgs:
            for k in range(2):
                anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": THINGS[(im["id"] + 7 * k) % 80]["id"],
                             "bbox": [5.0 + 30 * k, 8.0, 40.0, 35.0], "area": 1400.0, "iscrowd": 0, "score": 0.8})
        return anns

    (root / "annotations").mkdir()
    train, val, unl = images("train2017", 4), images("val2017", 2), images("unlabeled2017", 3)
    for split, imgs in (("train2017", train), ("val2017", val)):
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump({"images": imgs, "annotations": boxes(imgs), "categories": cats}, f)
    with open(root / "annotations" / "image_info_unlabeled2017.json", "w") as f:
        json.dump({"images": unl, "categories": cats}, f)
    with open(root / "annotations" / "pseudo_unlabeled2017.json", "w") as f:
        json.dump({"images": unl, "annotations": boxes(unl[:2]), "categories": cats}, f)  # unl[2]: no box
    names = {"train": "adltest_coco_train", "val": "adltest_coco_val"}
    register_coco_instances(names["train"], {}, str(root / "annotations/instances_train2017.json"), str(root / "train2017"))
    register_coco_instances(names["val"], {}, str(root / "annotations/instances_val2017.json"), str(root / "val2017"))
    yield dict(root=root, pseudo=str(root / "annotations/pseudo_unlabeled2017.json"),
               unlabeled_root=str(root / "unlabeled2017"), **names)
    for n in names.values():
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """Random weights for a teacher (model-zoo yacs config + the config's opts), saved once per
    distinct teacher (the _adl and _adl_semi configs of a pair share it)."""
    from d2kd.config import build_model_from_config_file

    cache = {}

    def get(config_file, opts):
        key = (config_file, tuple(opts))
        if key not in cache:
            torch.manual_seed(0)
            teacher = build_model_from_config_file(config_file, opts)
            if "64" in opts:
                assert teacher.backbone.bottom_up.res2[0].conv2.groups == 64  # X101-64x4d
            path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
            torch.save({"model": _tame(teacher).state_dict()}, path)
            cache[key] = str(path)
        return cache[key]

    return get


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_config_values_follow_the_spec(path):
    want = CONFIGS[path]
    cfg = LazyConfig.load(path)
    assert cfg.model.backbone.bottom_up.stages.depth == want["depth"]
    train_aug = cfg.dataloader.train.mapper.augmentations[0]
    assert list(train_aug.short_edge_length) == [want["scale"]] and train_aug.max_size == want["max_size"]
    test_aug = cfg.dataloader.test.mapper.augmentations[0]
    assert test_aug.short_edge_length == want["scale"] and test_aug.max_size == want["max_size"]
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.dataloader.test.dataset.names == "coco_2017_val"
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.train.max_iter == 270000
    sched = instantiate(cfg.lr_multiplier)
    assert sched(0.0) == pytest.approx(1 / 3)  # warm-up from 1/3
    for it, value in ((999, 1.0), (1001, 1.0), (179999, 1.0), (180001, 0.1), (240001, 0.01)):
        assert sched(it / 270000) == pytest.approx(value, rel=1e-2), it
    adl = cfg.model.distillers[0]
    assert (adl.gamma, adl.alpha, adl.beta_code, adl.theta, adl.normalizer, adl.temperature, adl.weight) == (
        2.0, 0.5, 0.0, 1.8, "adaptive", 1.0, 1.0)
    assert cfg.train.init_checkpoint.endswith(f"R-{want['depth']}.pkl")
    if want["semi"]:
        assert list(cfg.dataloader.train.ratio) == [1, 1]
        assert cfg.dataloader.train.unlabeled_dataset.labeled == "coco_2017_train"
    else:
        assert "ratio" not in cfg.dataloader.train


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_config_builds_and_trains_two_iterations(path, fake_coco, teacher_weights):
    want = CONFIGS[path]
    cfg = LazyConfig.load(path)
    cfg = LazyConfig.apply_overrides(cfg, [
        f"dataloader.train.dataset.names={fake_coco['train']}",
        f"dataloader.test.dataset.names={fake_coco['val']}",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "train.device=cpu", "train.init_checkpoint=",
    ])
    cfg.dataloader.train.mapper.augmentations[0].short_edge_length = [64]
    cfg.dataloader.train.mapper.augmentations[0].max_size = 96
    if want["semi"]:
        cfg.dataloader.train.unlabeled_dataset.pseudo_label_files = [fake_coco["pseudo"]]
        cfg.dataloader.train.unlabeled_dataset.image_root = fake_coco["unlabeled_root"]
    cfg.model.teacher.weights = teacher_weights(cfg.model.teacher.config_file, list(cfg.model.teacher.opts))

    model = _tame(instantiate(cfg.model)).train()
    assert model.backbone.bottom_up.stages[-1][0].conv1.weight.shape[0] == 512  # ResNet res5 bottleneck
    assert len(model.backbone.bottom_up.res4) == (6 if want["depth"] == 50 else 23)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = iter(instantiate(cfg.dataloader.train))
    streams = []
    with EventStorage(0) as storage:
        for it in range(2):
            storage.iter = it
            batch = next(loader)
            streams.append({x.get(STREAM_KEY) for x in batch})
            assert max(x["image"].shape[-1] for x in batch) <= 96
            losses = model(batch)
            assert {"loss_cls", "loss_box_reg", "loss_kd_adl_cls"} <= set(losses)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    if want["semi"]:
        assert streams == [{"labeled"}, {"unlabeled"}]
        pool = instantiate(cfg.dataloader.train.unlabeled_dataset)
        unl = [d for d in pool if "unlabeled2017" in d["file_name"]]
        assert len(pool) == 4 + 2 and len(unl) == 2  # train ∪ the 2 pseudo images with boxes
        assert all(os.path.isfile(d["file_name"]) for d in unl)
        assert {a["category_id"] for d in unl for a in d["annotations"]} <= set(range(80))
    assert all(p.grad is None for p in model.teacher.model.parameters())
