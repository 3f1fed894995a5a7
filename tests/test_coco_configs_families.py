"""The COCO configs of the FCOS and Mask R-CNN families (issue #23, item 4): FCOS R101 -> R50 and
Mask R-CNN R101 -> R50 with PKD build and train two iterations on a tiny fake COCO tree (boxes and
polygon masks), from random small-gamma weights."""
import json
import os

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402

from detectron2.config import LazyConfig  # noqa: E402

from test_coco_configs_gkd import REPO, _categories  # noqa: E402
from test_coco_configs_gkd import _save_random_weights as save_small_gamma_weights  # noqa: E402
from test_coco_configs_gkd import _tiny as tiny_coco  # noqa: E402
from test_coco_configs_gkd import _train as train_coco  # noqa: E402

TRAIN, VAL = "families_test_fake_coco_train", "families_test_fake_coco_val"


def _write_split(root, split, n, rng):
    import cv2

    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        h, w = 72, 96
        cv2.imwrite(os.path.join(root, split, f"{i:012d}.jpg"), rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": h, "width": w})
        for x, y, bw, bh, cat in [(4, 6, 40, 30, 1), (50, 20, 36, 44, 3)]:
            polygon = [x, y, x + bw, y, x + bw / 2, y + bh]  # a triangle inside the box
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh / 2, "iscrowd": 0, "segmentation": [polygon]})
    path = os.path.join(root, f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": _categories()}, f)
    return path


@pytest.fixture(scope="module")
def fake_coco_masks(tmp_path_factory):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    root = str(tmp_path_factory.mktemp("fake_coco_masks"))
    rng = np.random.default_rng(0)
    for name, split, n in ((TRAIN, "train2017", 4), (VAL, "val2017", 2)):
        json_file = _write_split(root, split, n, rng)
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_file, os.path.join(root, split))
    return root


@pytest.mark.parametrize("arch, meta_arch, tasks", [
    ("fcos", "DistillationFCOS", {"bbox"}),
    ("mask_rcnn", "DistillationRCNN", {"bbox", "segm"}),
])
def test_coco_family_configs_build_and_train_two_iterations(arch, meta_arch, tasks, fake_coco_masks, tmp_path):
    cfg = LazyConfig.load(os.path.join(REPO, f"configs/coco/{arch}_R101_R50_pkd.py"))
    assert cfg.model._target_.__name__ == meta_arch
    assert cfg.model.teacher.config_file == f"configs/coco/{arch}_R101_2x.py"
    assert cfg.train.max_iter == 180000 and cfg.model.backbone.bottom_up.stages.depth == 50
    assert set(cfg.dataloader.evaluator.tasks) == tasks
    teacher_file = os.path.join(REPO, f"configs/coco/{arch}_R101_2x.py")
    assert LazyConfig.load(teacher_file).model.backbone.bottom_up.stages.depth == 101
    teacher, student = str(tmp_path / "teacher.pth"), str(tmp_path / "student.pth")
    save_small_gamma_weights(LazyConfig.load(teacher_file).model, teacher)
    save_small_gamma_weights(LazyConfig.load(os.path.join(REPO, f"configs/coco/{arch}_R50_2x.py")).model, student)
    small = ["model.proposal_generator.pre_nms_topk=[200,100]", "model.proposal_generator.post_nms_topk=[50,50]",
             "model.roi_heads.batch_size_per_image=32"] if arch == "mask_rcnn" else []
    cfg = tiny_coco(cfg, str(tmp_path / arch), [f"train.init_checkpoint={student}", f"model.teacher.weights={teacher}",
                                                f"dataloader.train.dataset.names={TRAIN}",
                                                f"dataloader.test.dataset.names={VAL}", *small])
    cfg.model.teacher.config_file = teacher_file
    trainer, results = train_coco(cfg)
    assert set(results) == tasks
    assert trainer.model.distillers[0].in_features and trainer.iter == 2
