"""Deploying the student (d2kd/deploy.py, d2kd/export.py): the exported ``student/`` folder is
self-contained; TorchScript and ONNX exports of tiny Faster R-CNN, RetinaNet and SSD students
predict what the eager ``DefaultPredictor`` predicts; the runtimes' hints and refusals."""
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
