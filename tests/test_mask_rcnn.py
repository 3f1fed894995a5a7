"""Mask R-CNN students and teachers (issue #23, item 2) and the shapes set's instance masks."""
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from conftest import D2_MISSING, TINY, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.data.shapes import render_shapes_image  # noqa: E402
from d2kd.export import export_student  # noqa: E402

MASKS = ["dataloader.train.dataset.names=shapes_tiny_train_masks", "dataloader.test.dataset.names=shapes_tiny_val_masks"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("mask_rcnn")
    paths = {"faster_rcnn": str(d / "faster_rcnn_teacher.pth"), "mask_rcnn": str(d / "mask_rcnn_teacher.pth")}
    save_random_weights("configs/shapes/faster_rcnn_teacher.py", paths["faster_rcnn"])
    save_random_weights("configs/shapes/mask_rcnn_student.py", paths["mask_rcnn"])
    return paths


def _decode(rle):
    return mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def test_shapes_masks_are_each_objects_visible_pixels():
    dicts = DatasetCatalog.get("shapes_tiny_val_masks")
    plain = DatasetCatalog.get("shapes_tiny_val")
    checked = 0
    for i in (0, 3, 7):
        _, annos, label = render_shapes_image("shapes_tiny_val", i, return_label_map=True)
        assert [a["bbox"] for a in dicts[i]["annotations"]] == [a["bbox"] for a in plain[i]["annotations"]]
        for j, a in enumerate(dicts[i]["annotations"]):
            m = _decode(a["segmentation"])
            assert np.array_equal(m, label == j)  # the renderer's own label map
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # the box is the mask's
            checked += 1
    assert checked > 5 and "segmentation" not in plain[0]["annotations"][0]


def test_shapes_masks_evaluate_with_coco_bbox_and_segm(tmp_path):
    from detectron2.evaluation import COCOEvaluator

    evaluator = COCOEvaluator("shapes_tiny_val_masks", tasks=("bbox", "segm"), output_dir=str(tmp_path))
    evaluator.reset()
    for d in DatasetCatalog.get("shapes_tiny_val_masks"):
        inst = Instances((d["height"], d["width"]))
        annos = d["annotations"]
        inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in annos], dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(annos))
        inst.pred_classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.long)
        inst.pred_masks = torch.from_numpy(np.stack([_decode(a["segmentation"]) for a in annos])) if annos else \
            torch.zeros(0, d["height"], d["width"], dtype=torch.bool)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0) and results["segm"]["AP"] == pytest.approx(100.0)


def _build(config, weights, teacher=None, overrides=()):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(f"configs/shapes/{config}.py"), TINY + MASKS + list(overrides))
    if teacher is not None:
        cfg.model.teacher.config_file = f"configs/shapes/{teacher}.py"
        cfg.model.teacher.weights = weights["mask_rcnn" if teacher == "mask_rcnn_student" else "faster_rcnn"]
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model)


def test_a_mask_rcnn_student_distils_and_trains_its_mask_head(weights):
    cfg, model = _build("mask_rcnn_fgfi", weights, teacher="faster_rcnn_teacher")
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert batch[0]["instances"].has("gt_masks")
    with EventStorage(1000):  # FGFI's warm-up is over
        losses = model(batch)
    assert {"loss_mask", "loss_kd_fgfi_imitation"} <= set(losses) and float(losses["loss_kd_fgfi_imitation"]) > 0
    assert all(math.isfinite(float(v)) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_heads.mask_head.parameters())
    assert all(p.grad is None for p in model.teacher.model.parameters())


def test_a_mask_rcnn_teacher_serves_a_faster_rcnn_student(weights):
    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/faster_rcnn_softlabel.py"), TINY)
    cfg.model.teacher.config_file = "configs/shapes/mask_rcnn_student.py"
    cfg.model.teacher.weights = weights["mask_rcnn"]
    model = instantiate(cfg.model).train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(1000):
        losses = model(batch)
    kd = [k for k in losses if k.startswith("loss_kd_")]
    assert kd and "loss_mask" not in losses and all(math.isfinite(float(losses[k])) for k in kd)


def test_exported_mask_rcnn_student_loads_into_stock_and_predicts_masks(weights, tmp_path):
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import GeneralizedRCNN

    from d2kd.export import load_predictor_config

    cfg, model = _build("mask_rcnn_fgfi", weights, teacher="faster_rcnn_teacher",
                        overrides=["model.roi_heads.box_predictor.test_score_thresh=0.0"])
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 1}, path)
    paths = export_student(cfg, str(path), str(tmp_path / "export"))
    stock = instantiate(LazyConfig.load(paths["config"]).model)
    assert type(stock) is GeneralizedRCNN and stock.roi_heads.mask_on
    incompatible = stock.load_state_dict(torch.load(paths["weights"], weights_only=True)["model"], strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    predictor_cfg = load_predictor_config(paths["predictor"])
    predictor_cfg.MODEL.DEVICE = "cpu"
    image, _ = render_shapes_image("shapes_tiny_val", 0)
    out = DefaultPredictor(predictor_cfg)(image)["instances"]
    assert len(out) > 0 and out.has("pred_masks") and tuple(out.pred_masks.shape[1:]) == image.shape[:2]


def test_a_mask_rcnn_student_distils_over_two_cpu_processes(weights, tmp_path, monkeypatch):
    """DistillationRCNN with a mask head under DistributedDataParallel (gloo): both ranks step
    with FGFI, the mask loss and the KD term are logged, and the exported student is the stock
    GeneralizedRCNN with its mask head."""
    import json
    import os

    from conftest import TINY_2PROC, run_train_net_here

    out = str(tmp_path)
    code = run_train_net_here(["--config-file", "configs/shapes/mask_rcnn_fgfi.py", "--num-gpus", "2", *TINY_2PROC,
                               *MASKS, "train.max_iter=2", "train.eval_teacher=False", "train.eval_period=0",
                               "train.checkpointer.period=100", "model.distillers.0.schedule.warmup_iters=0",
                               f"model.teacher.weights={weights['faster_rcnn']}", f"train.output_dir={out}"], monkeypatch)
    assert code == 0
    assert "World size: 2" in open(os.path.join(out, "log.txt")).read()
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    steps = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in steps] == [0, 1]
    assert all(math.isfinite(r["loss_mask"]) and r["loss_mask"] > 0 for r in steps)
    assert all(math.isfinite(r["loss_kd_fgfi_imitation"]) and r["loss_kd_fgfi_imitation"] > 0 for r in steps)
    exported = LazyConfig.load(os.path.join(out, "student", "config.yaml"))
    assert exported.model._target_ == "detectron2.modeling.GeneralizedRCNN"
    assert "mask_head" in exported.model.roi_heads


@pytest.mark.parametrize("teacher,tasks", [("faster_rcnn_teacher", {"bbox"}), ("mask_rcnn_student", {"bbox", "segm"})])
def test_the_teacher_is_evaluated_on_the_tasks_it_predicts(weights, tmp_path, teacher, tasks):
    """The evaluation before training asks for what the teacher predicts, not the student's tasks:
    a Mask R-CNN student's ("bbox", "segm") failed inside pycocotools on a Faster R-CNN teacher's
    box-only predictions (tools/cuda_check.py found it; no test evaluated that teacher)."""
    from d2kd.engine.trainer import Trainer

    cfg, model = _build("mask_rcnn_fgfi", weights, teacher=teacher, overrides=[f"train.output_dir={tmp_path}"])
    model.teacher.model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep every box
    results = Trainer.test(cfg, model.teacher.model, Trainer.build_teacher_evaluator(cfg))
    assert set(results) == tasks and all(math.isfinite(v) for v in results["bbox"].values() if v == v)
    if teacher == "faster_rcnn_teacher":
        with pytest.raises(TypeError):  # the student's evaluator, as the hook used it before
            Trainer.test(cfg, model.teacher.model, Trainer.build_evaluator(cfg))
