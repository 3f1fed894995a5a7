"""Semi-supervised ADL (docs/methods.md §5.2): the alternating loader, the labeled ∪ pseudo-labelled
pool, and the shapes SAD config training on CPU with 1 and 2 processes."""
import json
import os

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

import d2kd  # noqa: F401,E402
from d2kd.data.mixed_loader import STREAM_KEY, AlternatingLoader, semi_supervised_dataset_dicts  # noqa: E402

CONFIG = "configs/shapes/retinanet_adl_semi.py"


def _batches(tag, n=None):
    def gen():
        i = 0
        while n is None or i < n:
            yield [{"src": tag, "i": i}]
            i += 1
    return _Iterable(gen)


class _Iterable:
    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def _streams(loader, k):
    it = iter(loader)
    return [next(it) for _ in range(k)]


@pytest.mark.parametrize("ratio,expected", [
    ((1, 1), "ABABABAB"),
    ((2, 1), "AABAABAA"),
    ((1, 3), "ABBBABBB"),
    ((0, 1), "BBBBBBBB"),
])
def test_alternating_loader_follows_the_ratio(ratio, expected):
    loader = AlternatingLoader([_batches("A"), _batches("B")], ratio=ratio, names=["lab", "unl"])
    got = _streams(loader, len(expected))
    assert "".join(b[0]["src"] for b in got) == expected
    assert [b[0][STREAM_KEY] for b in got] == ["lab" if c == "A" else "unl" for c in expected]
    # each stream is consumed in its own order, nothing is skipped
    assert [b[0]["i"] for b in got if b[0]["src"] == "B"] == list(range(expected.count("B")))


def test_alternating_loader_restarts_a_finite_stream_and_checks_arguments():
    loader = AlternatingLoader([_batches("A", n=2), _batches("B")], ratio=(1, 1))
    got = _streams(loader, 8)
    assert [b[0]["i"] for b in got if b[0]["src"] == "A"] == [0, 1, 0, 1]
    with pytest.raises(ValueError):
        AlternatingLoader([_batches("A")], ratio=(1, 1))
    with pytest.raises(ValueError):
        AlternatingLoader([_batches("A"), _batches("B")], ratio=(0, 0))


def write_pseudo_json(path, num_images=16, boxes_per_image=2, empty_every=4):
    """A pseudo-label json over shapes_tiny_val (every ``empty_every``-th image without boxes)."""
    images, anns = [], []
    for i in range(num_images):
        images.append({"id": i, "file_name": f"shapes://shapes_tiny_val/{i:06d}.png", "height": 128, "width": 128})
        if i % empty_every == 0:
            continue
        for k in range(boxes_per_image):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": (i + k) % 8,
                         "bbox": [10.0 + 20 * k, 12.0, 30.0, 25.0], "area": 750.0, "iscrowd": 0, "score": 0.6 + 0.1 * k})
    from d2kd.data.shapes import CLASS_NAMES

    data = {"info": {"image_root": ""}, "images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES)]}
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_pool_is_labeled_union_pseudo(tmp_path):
    path = write_pseudo_json(str(tmp_path / "pl.json"))
    pool = semi_supervised_dataset_dicts("shapes_tiny_train", [path])
    from detectron2.data import get_detection_dataset_dicts

    n_lab = len(get_detection_dataset_dicts("shapes_tiny_train"))
    assert len(pool) == n_lab + 12  # 4 of the 16 pseudo images have no box: dropped
    pseudo = pool[n_lab:]
    assert all(d["file_name"].startswith("shapes://shapes_tiny_val/") and d["annotations"] for d in pseudo)
    assert len(semi_supervised_dataset_dicts("shapes_tiny_train", [path], min_score=0.65)) == n_lab + 12
    assert sum(len(d["annotations"]) for d in semi_supervised_dataset_dicts(
        "shapes_tiny_train", [path], min_score=0.65)[n_lab:]) == 12
    assert len(semi_supervised_dataset_dicts("shapes_tiny_train", [path], include_labeled=False)) == 12


def _cfg(tmp_path, teacher_weights, pseudo, extra=()):
    from conftest import TINY

    cfg = LazyConfig.load(CONFIG)
    return LazyConfig.apply_overrides(cfg, list(TINY) + [
        f"model.teacher.weights={teacher_weights}",
        f"dataloader.train.unlabeled_dataset.pseudo_label_files=['{pseudo}']",
        "train.max_iter=2", "train.eval_teacher=False", f"train.output_dir={tmp_path / 'out'}",
        "dataloader.test.dataset.names=shapes_tiny_val",
    ] + list(extra))


def test_config_loader_alternates_real_batches(tmp_path):
    pseudo = write_pseudo_json(str(tmp_path / "pl.json"))
    cfg = _cfg(tmp_path, "unused.pth", pseudo)
    assert cfg.dataloader.train.unlabeled_dataset.labeled == "shapes_tiny_train"  # follows dataset.names
    loader = instantiate(cfg.dataloader.train)
    got = _streams(loader, 4)
    assert [b[0][STREAM_KEY] for b in got] == ["labeled", "unlabeled", "labeled", "unlabeled"]
    assert all(len(b) == 2 and all(x["image"].shape[0] == 3 for x in b) for b in got)
    for b in got[0::2]:
        assert all(x["file_name"].startswith("shapes://shapes_tiny_train/") for x in b)
    # the unlabeled stream draws from train ∪ pseudo: over a few batches both sources show up
    it = iter(loader)
    names = set()
    for _ in range(24):
        b = next(it)
        if b[0][STREAM_KEY] == "unlabeled":
            names |= {x["file_name"].split("/")[2] for x in b}
            assert all(len(x["instances"]) > 0 for x in b)
    assert names == {"shapes_tiny_train", "shapes_tiny_val"}


def test_semi_config_trains_two_iterations_one_process(tmp_path):
    from conftest import save_random_weights

    from d2kd.engine import Trainer

    teacher = str(tmp_path / "teacher.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", teacher)
    cfg = _cfg(tmp_path, teacher, write_pseudo_json(str(tmp_path / "pl.json")))
    trainer = Trainer(cfg)
    inner = trainer._trainer.data_loader
    seen = []

    class Recording:
        def __iter__(self):
            for b in inner:
                seen.append({x[STREAM_KEY] for x in b})
                yield b

    trainer._trainer.data_loader = Recording()
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert seen[:2] == [{"labeled"}, {"unlabeled"}]
    from conftest import read_metrics

    rows = [r for r in read_metrics(str(tmp_path / "out")) if "loss_kd_adl_cls" in r]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in rows)


def test_semi_config_trains_two_iterations_two_processes(tmp_path, monkeypatch):
    from conftest import TINY_2PROC, read_metrics, run_train_net_here, save_random_weights

    teacher = str(tmp_path / "teacher.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", teacher)
    pseudo = write_pseudo_json(str(tmp_path / "pl.json"))
    out = tmp_path / "out2"
    code = run_train_net_here([
        "--config-file", CONFIG, "--num-gpus", "2", *TINY_2PROC,
        f"model.teacher.weights={teacher}", f"dataloader.train.unlabeled_dataset.pseudo_label_files=['{pseudo}']",
        "train.max_iter=2", "train.eval_teacher=False", f"train.output_dir={out}",
    ], monkeypatch)
    assert code == 0, (out / "log.txt").read_text()[-4000:]
    rows = [m for m in read_metrics(str(out)) if "loss_kd_adl_cls" in m]
    assert [m["iteration"] for m in rows] == [0, 1]
    assert "World size: 2" in (out / "log.txt").read_text()
