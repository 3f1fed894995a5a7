"""Deploying the student (d2kd/deploy.py, d2kd/export.py): the exported ``student/`` folder is
self-contained; TorchScript and ONNX exports of tiny Faster R-CNN, Mask R-CNN, RetinaNet, FCOS and SSD
students predict what the eager ``DefaultPredictor`` predicts; the runtimes' hints and refusals."""
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import D2_MISSING, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import LazyConfig  # noqa: E402

from d2kd.export import build_predictor, export_student, load_predictor_config  # noqa: E402

#: Tiny students with every candidate kept (score threshold 0), so there are boxes to compare.
STUDENTS = {
    "retinanet": ("configs/shapes/retinanet_student.py", ["model.test_score_thresh=0.0"]),
    "faster_rcnn": ("configs/shapes/faster_rcnn_student.py",
                    ["model.roi_heads.box_predictor.test_score_thresh=0.0"]),
    "ssd": ("configs/shapes/ssd_student.py", []),
    "fcos": ("configs/shapes/fcos_student.py", ["model.test_score_thresh=0.0"]),
    "mask_rcnn": ("configs/shapes/mask_rcnn_student.py",
                  ["model.roi_heads.box_predictor.test_score_thresh=0.0"]),
}


def _export(name, folder):
    """``folder/student``: the export of a randomly initialised student whose parameters are
    jittered (at init the scores tie exactly, e.g. SSD's uniform softmax, and a top-k over ties
    has no defined order)."""
    config_file, overrides = STUDENTS[name]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), overrides)
    model = save_random_weights(config_file, str(folder / "run.pth"), overrides)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        if name == "fcos":  # random left/top/right/bottom distances of either sign give empty boxes
            model.head.bbox_pred.bias.fill_(1.0)
    torch.save({"model": model.state_dict()}, folder / "run.pth")
    return export_student(cfg, str(folder / "run.pth"), str(folder / "student"))


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    out = {}
    for name in STUDENTS:
        folder = tmp_path_factory.mktemp(name)
        _export(name, folder)
        out[name] = str(folder / "student")
    return out


def _image(h=100, w=140, seed=0):
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")


# ---- 0. the student folder is self-contained -----------------------------------------------------
def test_student_folder_moves_and_picks_the_device_where_it_is_loaded(students, tmp_path):
    import yaml

    moved = str(tmp_path / "elsewhere" / "student")
    shutil.copytree(students["retinanet"], moved)
    with open(os.path.join(moved, "predictor.yaml")) as f:
        written = yaml.safe_load(f)
    assert written["MODEL"]["LAZY_CONFIG"] == "config.yaml"
    assert written["MODEL"]["WEIGHTS"] == "model_final.pth"
    assert "DEVICE" not in written["MODEL"]

    # the original is gone: only the copy's own files can serve it
    original = students["retinanet"]
    hidden = original + ".hidden"
    os.rename(original, hidden)
    try:
        cfg = load_predictor_config(os.path.join(moved, "predictor.yaml"))
        assert cfg.MODEL.LAZY_CONFIG == os.path.join(moved, "config.yaml")
        assert cfg.MODEL.WEIGHTS == os.path.join(moved, "model_final.pth")
        assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
        assert load_predictor_config(os.path.join(moved, "predictor.yaml"), device="meta").MODEL.DEVICE == "meta"
        predictor = build_predictor(os.path.join(moved, "predictor.yaml"), device="cpu")
        assert len(predictor(_image())["instances"]) > 0
    finally:
        os.rename(hidden, original)


# ---- 1-3. TorchScript and ONNX exports predict what DefaultPredictor predicts -------------------
@pytest.fixture(scope="module")
def deployed(students):
    from d2kd.deploy import export_deployable

    return {name: export_deployable(folder, ["torchscript", "onnx"]) for name, folder in students.items()}


def _as_arrays(instances):
    return [instances.pred_boxes.tensor.numpy(), instances.scores.numpy(), instances.pred_classes.numpy()]


@pytest.mark.parametrize("name", list(STUDENTS))
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_predicts_the_eager_students_detections(deployed, students, name, fmt):
    import json

    from d2kd.deploy import DeployedModel, match_detections

    path = deployed[name][fmt]
    assert path == os.path.join(students[name], "deploy", {"torchscript": "model.ts", "onnx": "model.onnx"}[fmt])
    with open(path + ".json") as f:
        sidecar = json.load(f)
    predictor = build_predictor(os.path.join(students[name], "predictor.yaml"), device="cpu")
    assert sidecar["input"]["format"] == predictor.input_format
    assert sidecar["class_names"] == list(predictor.metadata.thing_classes)
    assert sidecar["check"]["max_abs_diff_vs_eager"] <= 1e-4 and sidecar["check"]["detections"] > 0
    if fmt == "onnx":
        assert sidecar["opset"] == 17
    model = DeployedModel(path)
    # SSD: a fixed Resize((128, 128)), which DefaultPredictor's shortest-edge resize equals on
    # square images only; the others: a non-square image, resized and scaled back.
    images = [_image(150, 150), _image(128, 128, seed=1)] if name == "ssd" else [_image(), _image(90, 200, seed=1)]
    for image in images:
        with torch.no_grad():
            eager = predictor(image)["instances"]
        exported = model(image)
        assert exported.image_size == image.shape[:2]
        assert len(eager) > 0
        eager_arrays, exported_arrays = _as_arrays(eager), _as_arrays(exported)
        # scores sorted: equal regardless of the order of ties; boxes and classes: each detection
        # against its nearest counterpart
        np.testing.assert_allclose(np.sort(exported_arrays[1]), np.sort(eager_arrays[1]), atol=1e-4, rtol=0)
        assert match_detections(eager_arrays, exported_arrays) <= 1e-4
        if name == "mask_rcnn":
            _assert_same_pasted_masks(eager, exported)
        else:
            assert not exported.has("pred_masks")


def _assert_same_pasted_masks(eager, exported):
    """Each exported detection's mask, pasted into the original image by the runtime, against
    the eager predictor's mask of the same detection (the one with the nearest box and score)."""
    assert exported.pred_masks.shape == eager.pred_masks.shape == (len(eager), *eager.image_size)
    assert exported.pred_masks.dtype == eager.pred_masks.dtype == torch.bool
    assert eager.pred_masks.any(), "no mask pixel on: nothing compared"
    key = lambda inst: torch.cat([inst.pred_boxes.tensor, inst.scores[:, None]], 1)  # noqa: E731
    nearest = torch.cdist(key(exported), key(eager), p=float("inf")).argmin(1)
    differing = (exported.pred_masks != eager.pred_masks[nearest]).sum().item()
    # probabilities equal to 1e-4: only a pixel whose pasted probability is within that of the 0.5
    # threshold may flip
    assert differing <= 1e-4 * exported.pred_masks.numel(), differing


def test_predict_cli_draws_a_png(deployed, tmp_path):
    import cv2

    from d2kd.deploy import main

    cv2.imwrite(str(tmp_path / "img.png"), _image())
    written = main(["predict", "--model", deployed["faster_rcnn"]["onnx"], "--input", str(tmp_path / "img.png"),
                    "--output", str(tmp_path / "out.png"), "--score-thresh", "0"])
    assert written == [str(tmp_path / "out.png")]
    drawn = cv2.imread(written[0])
    assert drawn is not None and drawn.shape[:2] == (365, 512)  # enlarged to a 512-px long side


def test_missing_onnxruntime_is_a_one_line_install_hint(deployed, monkeypatch, capsys):
    import builtins

    from d2kd.deploy import main

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", deployed["retinanet"]["onnx"], "--input", "x.png"])
    assert str(exit_info.value) == ("d2kd.deploy: error: running an ONNX model needs onnxruntime: "
                                    "pip install d2kd[deploy]")


def test_export_of_an_unsupported_model_names_it_and_the_route_that_works(students, tmp_path):
    """A Faster R-CNN student cut down to Detectron2's ProposalNetwork (RPN only)."""
    from d2kd.deploy import DeployError, export_deployable

    moved = tmp_path / "student"
    shutil.copytree(students["faster_rcnn"], moved, ignore=shutil.ignore_patterns("deploy"))
    cfg = LazyConfig.load(str(moved / "config.yaml"))
    model = cfg.model
    cfg.model = {"_target_": "detectron2.modeling.ProposalNetwork", "backbone": model.backbone,
                 "proposal_generator": model.proposal_generator, "pixel_mean": model.pixel_mean,
                 "pixel_std": model.pixel_std}
    LazyConfig.save(cfg, str(moved / "config.yaml"))
    with pytest.raises(DeployError) as refused:
        export_deployable(str(moved), ["torchscript"])
    message = str(refused.value)
    assert message.startswith("cannot export a ProposalNetwork (the student's model): TorchScript/ONNX export "
                              "covers GeneralizedRCNN (Faster R-CNN, Mask R-CNN), Detectron2's dense detectors (RetinaNet, "
                              "FCOS) and d2kd's SSD;"), message
    assert "d2kd.export.build_predictor(<student>/predictor.yaml)" in message
    assert not os.path.exists(moved / "deploy" / "model.ts")


def test_exported_models_score_the_eager_students_ap(deployed, students, tmp_path):
    """The same loader and COCOEvaluator for all three (``export --eval`` prints them)."""
    from d2kd.deploy import evaluate

    student = students["faster_rcnn"]
    models = [deployed["faster_rcnn"]["torchscript"], deployed["faster_rcnn"]["onnx"]]
    results = evaluate(student, models, dataset="shapes_tiny_val", output_dir=str(tmp_path))
    assert list(results) == ["eager", *models]
    for path in models:
        for metric in ("AP", "AP50", "AP75"):
            assert abs(results[path][metric] - results["eager"][metric]) <= 0.1, (path, results)


def _register_own_detections_as_ground_truth(predictor, source, name, per_image=5):
    """``name``: ``source``'s images annotated with ``predictor``'s own top detections (boxes,
    classes, masks as RLE). A random student scores 0 mask AP on real labels, which any broken
    export would match; on its own detections it scores well above 0."""
    import pycocotools.mask as mask_util
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import BoxMode

    dicts = []
    for record in DatasetCatalog.get(source):
        with torch.no_grad():
            inst = predictor(read_image(record["file_name"], format=predictor.input_format))["instances"]
        inst = inst[inst.pred_masks.flatten(1).sum(1) >= 4][:per_image]  # sorted by score
        annotations = [{"bbox": box.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c), "iscrowd": 0,
                        "segmentation": mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8)))}
                       for box, c, m in zip(inst.pred_boxes.tensor, inst.pred_classes, inst.pred_masks)]
        dicts.append({k: record[k] for k in ("file_name", "image_id", "height", "width")} | {"annotations": annotations})
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=MetadataCatalog.get(source).thing_classes)


def test_exported_mask_rcnn_scores_the_eager_students_mask_ap(deployed, students, tmp_path):
    """The exported models' masks, pasted by the evaluation loop's runtime, score what the eager
    student's masks score, on ground truth where that is far from 0."""
    from d2kd.deploy import evaluate

    student = students["mask_rcnn"]
    _register_own_detections_as_ground_truth(build_predictor(os.path.join(student, "predictor.yaml"), device="cpu"),
                                             "shapes_tiny_val_masks", "deploy_test_own_masks")
    models = [deployed["mask_rcnn"]["torchscript"], deployed["mask_rcnn"]["onnx"]]
    results = evaluate(student, models, dataset="deploy_test_own_masks", output_dir=str(tmp_path))
    assert results["eager"]["segm/AP"] > 20 and results["eager"]["AP"] > 20, results["eager"]
    for path in models:
        for metric in ("AP", "segm/AP", "segm/AP50", "segm/AP75"):
            assert abs(results[path][metric] - results["eager"][metric]) <= 0.1, (path, metric, results)


def test_latency_reports_a_median_per_runtime(deployed, students):
    from d2kd.deploy import latency

    models = [deployed["retinanet"]["torchscript"], deployed["retinanet"]["onnx"]]
    ms = latency(students["retinanet"], models, images=2, warmup=1)
    assert list(ms) == ["eager", *models] and all(0 < v < 60_000 for v in ms.values()), ms
    assert torch.get_num_threads() == 1  # restored


def test_ssd_with_a_shortest_edge_test_resize_is_refused_with_the_route(students, tmp_path):
    """SSD's priors are constants of the trace: it exports for one input size only."""
    from d2kd.deploy import DeployError, export_deployable

    moved = tmp_path / "student"
    shutil.copytree(students["ssd"], moved, ignore=shutil.ignore_patterns("deploy"))
    cfg = LazyConfig.load(str(moved / "config.yaml"))
    cfg.dataloader.test.mapper.augmentations = [
        {"_target_": "detectron2.data.transforms.ResizeShortestEdge", "short_edge_length": 128, "max_size": 1333}]
    LazyConfig.save(cfg, str(moved / "config.yaml"))
    with pytest.raises(DeployError, match=r"^SSD traces for one input size only, and the student's test resize is "
                                          r"ResizeShortestEdge, not a fixed Resize\(\(h, w\)\); serve it eagerly"):
        export_deployable(str(moved), ["onnx"])


def test_model_cost_tool_reports_the_three_runtimes_of_a_student(deployed, students, capsys):
    import model_cost  # tools/ (conftest puts it on the path)

    rows = model_cost.main(["--students", students["retinanet"], "--images", "2"])
    row = rows[students["retinanet"]]
    assert set(row) == {"params_m", "eager_ms", "torchscript_ms", "onnx_ms"}
    assert 0 < row["params_m"] < 10 and all(0 < row[k] < 60_000 for k in ("eager_ms", "torchscript_ms", "onnx_ms"))
    out = capsys.readouterr().out
    assert "| TorchScript (ms) | ONNX Runtime (ms) |" in out and students["retinanet"] in out
