"""The COCO configs of GKD (baselines and R101 -> R50 distillation) build and train two iterations
on a tiny fake COCO tree (images + instances json written here, registered under test-only
names), with random weights and tiny images."""
import json
import os

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, VAL = "gkd_test_fake_coco_train", "gkd_test_fake_coco_val"

def _categories():
    """All 80 COCO categories with their real ids (the evaluator checks predicted classes
    against the dataset's), of which the fake images use person (1), car (3) and dog (18)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]


def _write_split(root, split, n, rng):
    import cv2

    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        h, w = 72, 96
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        name = f"{i:012d}.jpg"
        cv2.imwrite(os.path.join(root, split, name), img)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for k, (x, y, bw, bh, cat) in enumerate([(4, 6, 40, 30, 1), (50, 20, 36, 44, 3), (10, 40, 20, 24, 18)]):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    path = os.path.join(root, f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": _categories()}, f)
    return path


@pytest.fixture(scope="module")
def fake_coco(tmp_path_factory):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    root = str(tmp_path_factory.mktemp("fake_coco"))
    rng = np.random.default_rng(0)
    for name, split, n in ((TRAIN, "train2017", 4), (VAL, "val2017", 2)):
        json_file = _write_split(root, split, n, rng)
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_file, os.path.join(root, split))
    return root


def _tiny(cfg, out, overrides=()):
    """Fake data, tiny images, 2 iterations, no workers."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.apply_overrides(
        cfg,
        [
            f"dataloader.train.dataset.names={TRAIN}",
            f"dataloader.test.dataset.names={VAL}",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            "dataloader.train.mapper.augmentations.0.short_edge_length=64",
            "dataloader.train.mapper.augmentations.0.max_size=96",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=96",
            "train.max_iter=2",
            "train.eval_period=0",
            "train.log_period=1",
            "train.device=cpu",
            "train.eval_teacher=False",
            f"train.output_dir={out}",
            *overrides,
        ],
    )
    if "roi_heads" in cfg.model:
        # The released 512 sampled RoIs per image (and 1000 test proposals) through a 12544x1024 fc6 cost
        # ~2 s a step on CPU; 64 of them exercise the same code.
        cfg.model.roi_heads.batch_size_per_image = 64
        cfg.model.proposal_generator.post_nms_topk = (128, 64)
    return cfg


def _save_random_weights(model_cfg, path):
    """Random weights that stay finite in a FrozenBN ResNet-50/101: each bottleneck's last
    FrozenBN scale is 0.1 (a "small-gamma" init; plain random deep FrozenBN ResNets overflow)."""
    from detectron2.config import instantiate

    torch.manual_seed(0)
    model = instantiate(model_cfg)
    for name, module in model.named_modules():
        if name.endswith("conv3.norm"):
            module.weight.mul_(0.1)
    torch.save({"model": model.state_dict()}, path)


def _train(cfg):
    from d2kd.engine import Trainer

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    return trainer, results


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_coco_gkd_configs_build_and_train_two_iterations(arch, fake_coco, tmp_path):
    from detectron2.config import LazyConfig, instantiate

    torch.manual_seed(0)
    # the config files as written
    base = LazyConfig.load(os.path.join(REPO, f"configs/coco/{arch}_R50_2x.py"))
    gkd_file = os.path.join(REPO, f"configs/coco/{arch}_R101_R50_gkd.py")
    gkd = LazyConfig.load(gkd_file)
    teacher_file = os.path.join(REPO, f"configs/coco/{arch}_R101_2x.py")
    assert gkd.train.max_iter == 180000 and gkd.dataloader.train.total_batch_size == 16
    assert gkd.train.init_checkpoint == f"output/coco/{arch}_R50_2x/model_final.pth"  # trained student
    assert gkd.model.teacher.config_file == f"configs/coco/{arch}_R101_2x.py"
    assert LazyConfig.load(teacher_file).model.backbone.bottom_up.stages.depth == 101
    assert base.model.backbone.bottom_up.stages.depth == 50
    assert gkd.dataloader.train.dataset.names == "coco_2017_train"
    assert gkd.dataloader.test.dataset.names == "coco_2017_val"
    assert "COCOEvaluator" in str(gkd.dataloader.evaluator._target_)
    sched = instantiate(gkd.lr_multiplier)
    assert sched(0.0) == pytest.approx(0.001)  # warm-up from 0.001
    assert sched(119999 / 180000) == pytest.approx(1.0)
    assert sched(120001 / 180000) == pytest.approx(0.1) and sched(165001 / 180000) == pytest.approx(0.01)

    # 1. the student baseline: two iterations from random weights
    init = str(tmp_path / "student_init.pth")
    _save_random_weights(base.model, init)
    base = _tiny(base, str(tmp_path / "student"), [f"train.init_checkpoint={init}"])
    trainer, results = _train(base)
    student_final = str(tmp_path / "student" / "model_final.pth")
    assert os.path.isfile(student_final) and "bbox" in results

    # 2. the teacher config: random weights saved for the distillation run
    teacher_cfg = LazyConfig.load(teacher_file)
    teacher_weights = str(tmp_path / "teacher.pth")
    _save_random_weights(teacher_cfg.model, teacher_weights)

    # 3. distillation: student initialised from the baseline's final weights (as §4.3)
    cfg = _tiny(gkd, str(tmp_path / "gkd"), [
        f"train.init_checkpoint={student_final}",
        f"model.teacher.weights={teacher_weights}",
        "model.distillers.0.pgm_min_box_size=8",
    ])
    cfg.model.teacher.config_file = teacher_file
    trainer, results = _train(cfg)
    model = trainer.model
    d = model.distillers[0]
    # the student started from the baseline: its untouched frozen stem equals the baseline's
    saved = torch.load(student_final, map_location="cpu", weights_only=False)["model"]
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, saved["backbone.bottom_up.stem.conv1.weight"])
    assert int(d.proto_period) == 0
    # COCO ids 1, 3, 18 -> contiguous 0, 2, 16: prototypes for exactly those classes
    assert len(_categories()) == 80
    assert d.proto_valid.any(dim=0).nonzero().flatten().tolist() == [0, 2, 16]
    assert d.proto_student.shape[-1] == 256 and d.proto_teacher.shape[-1] == 256
    assert len(d.adapters) == 5 and all(a.kernel_size == (3, 3) and a.padding == (1, 1) for a in d.adapters.values())
    assert "bbox" in results
