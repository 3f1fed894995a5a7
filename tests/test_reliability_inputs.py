"""Bad inputs, each with a one-line message that names the thing and the fix, and NaN through
train_net end to end (checkpoints left intact). ``train_net.cli`` runs in this process (with
``--num-gpus 1`` it trains in the calling process), which saves a Python start per case."""
import os
import pickle

import pytest
from conftest import D2_MISSING, REPO, TINY, run_cli, save_random_weights, tool_env

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from d2kd.distill import FeatureImitation  # noqa: E402

FITNET = "configs/shapes/retinanet_fitnet.py"


class FlakyFitNet(FeatureImitation):
    """FitNet whose 'p4' term is NaN from iteration ``nan_from`` on (a method going bad)."""

    def __init__(self, *, nan_from: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.nan_from = nan_from

    def forward(self, student, teacher):
        from d2kd.runtime import current_iteration

        losses = super().forward(student, teacher)
        if current_iteration() >= self.nan_from:
            losses["p4"] = losses["p4"] * float("nan")
        return losses


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("retinanet_teacher", "faster_rcnn_teacher"):
        out[name] = str(d / f"{name}.pth")
        save_random_weights(f"configs/shapes/{name}.py", out[name])
    return out


@pytest.fixture
def propagate():
    """Let caplog see d2kd's and detectron2's records (setup_logger turns propagation off)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("d2kd", "detectron2")]
    old = [l.propagate for l in loggers]
    for l in loggers:
        l.propagate = True
    yield
    for l, o in zip(loggers, old):
        l.propagate = o


def _fitnet_args(tmp_path, teacher, *extra, config=FITNET):
    return ["--config-file", config, *TINY, "train.eval_teacher=False", "train.max_iter=2",
            f"model.teacher.weights={teacher}", f"train.output_dir={tmp_path / 'out'}", *extra]


# ---- model building: class counts, levels, formats, weights -----------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.num_classes=3"], "ValueError: teacher has 8 classes but the student has 3 "),
        (["model.distillers.0.in_features=[p3,p8]"],
         "ValueError: FeatureImitation: feature level 'p8' is missing from the student and teacher "
         "(student {p3: stride 8, 32 ch, p4: stride 16, 32 ch, p5: stride 32, 32 ch, p6: stride 64, 32 ch, "
         "p7: stride 128, 32 ch}, teacher {p3: stride 8, 128 ch, p4: stride 16, 128 ch, p5: stride 32, 128 ch, "
         "p6: stride 64, 128 ch, p7: stride 128, 128 ch}); "
         "levels of equal stride pair under the student's name, so a level must have a stride both "
         "backbones output"),
        (["model.input_format=YUV-BT.601"],
         "ValueError: teacher input format BGR and student YUV-BT.601: only RGB/BGR images are supported"),
    ],
    ids=["class_count", "missing_level", "input_format"],
)
def test_model_that_cannot_be_built_fails_in_one_line(train_net, teachers, tmp_path, capfd, extra, message):
    code, lines, err = run_cli(train_net, capfd, _fitnet_args(tmp_path, teachers["retinanet_teacher"], *extra))
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"train_net.py: error: cannot build {FITNET}: ") and message in lines[0]
    assert "Traceback" not in err  # the traceback went to log.txt
    assert "Traceback" in open(tmp_path / "out" / "log.txt").read()


def test_levels_with_different_strides_are_refused_at_bind():
    from types import SimpleNamespace

    from detectron2.layers import ShapeSpec

    student = SimpleNamespace(backbone=SimpleNamespace(output_shape=lambda: {"p3": ShapeSpec(channels=16, stride=8)}))
    teacher = SimpleNamespace(output_shape=lambda: {"p3": ShapeSpec(channels=64, stride=16)})
    with pytest.raises(ValueError, match=r"level 'p3' has stride 8 in the student but 16 in the teacher \(student \{p3: stride 8, "
                                         r"16 ch\}, teacher \{p3: stride 16, 64 ch\}\); imitation needs aligned maps: pick "
                                         r"levels with equal strides"):
        FeatureImitation(in_features=["p3"]).bind(student, teacher)


def test_teacher_from_another_detector_lacking_a_level(train_net, teachers, tmp_path, capfd):
    """A Faster R-CNN teacher (p2-p6) for a RetinaNet student imitating p3-p7."""
    code, lines, err = run_cli(train_net, capfd, _fitnet_args(
        tmp_path, teachers["faster_rcnn_teacher"], "model.teacher.config_file=configs/shapes/faster_rcnn_teacher.py",
        "model.distillers.0.in_features=[p3,p4,p5,p6,p7]"))
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert "FeatureImitation: feature level 'p7' is missing from the teacher" in lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_teacher_weights(train_net, teachers, tmp_path, capfd, damage):
    path = tmp_path / "teacher.pth"
    good = open(teachers["retinanet_teacher"], "rb").read()
    path.write_bytes({"garbage": b"not a checkpoint" * 10, "truncated": good[: len(good) // 2], "empty": b""}[damage])
    code, lines, err = run_cli(train_net, capfd, _fitnet_args(tmp_path, path))
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert f"RuntimeError: teacher (configs/shapes/retinanet_teacher.py) weights file {path} could not be read (" in lines[0]


def test_missing_teacher_weights_fail_before_building(train_net, tmp_path, capfd):
    code, lines, err = run_cli(train_net, capfd, _fitnet_args(tmp_path, "/nonexistent/teacher.pth"))
    assert code == 2 and lines == [
        "train_net.py: error: model.teacher.weights: teacher weights file not found: /nonexistent/teacher.pth "
        "(train the teacher first, or set model.teacher.weights=PATH)"
    ]


def test_init_checkpoint_of_another_architecture(train_net, teachers, tmp_path, capfd):
    """Faster R-CNN weights as a RetinaNet student's init: not silently 'trained from scratch'."""
    args = ["--config-file", "configs/shapes/retinanet_student.py", *TINY, "train.max_iter=2",
            f"train.init_checkpoint={teachers['faster_rcnn_teacher']}", f"train.output_dir={tmp_path / 'out'}"]
    code, lines, err = run_cli(train_net, capfd, args)
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert f"train.init_checkpoint {teachers['faster_rcnn_teacher']} does not fit the model: only " in lines[0]
    assert "it is for a different architecture (pick the weights for this config, or set " \
           "train.allow_partial_init=True to load the matching part anyway)" in lines[0]
    assert not os.path.exists(tmp_path / "out" / "model_final.pth")


def test_init_checkpoint_fit_rule(teachers):
    """A backbone-only init (heads missing) fits; a checkpoint with more unusable than usable
    tensors does not."""
    from detectron2.config import LazyConfig, instantiate

    from d2kd.checkpoint import AtomicCheckpointer, init_checkpoint_fit

    model = instantiate(LazyConfig.load("configs/shapes/retinanet_teacher.py").model)
    sd = torch.load(teachers["retinanet_teacher"], weights_only=True)["model"]
    cases = {
        "whole": (sd, True),
        "backbone only": ({k: v for k, v in sd.items() if k.startswith("backbone.bottom_up.")}, True),
        "renamed": ({"x." + k: v for k, v in sd.items()}, False),
    }
    for name, (state, fits) in cases.items():
        ck = AtomicCheckpointer(model)
        ck._load_model({"model": dict(state)})
        assert (init_checkpoint_fit(model, ck.incompatible) is None) == fits, name


# ---- malformed overrides -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_iters=10", "override 'train.max_iters=10': 'train' has no key 'max_iters'; did you mean "
                               "'train.max_iter'? (write +train.max_iters=... to add a new key)"),
        ("train.max_iter=1e3x", "override 'train.max_iter=1e3x': expected int (the config has 1000), got str '1e3x'"),
        ("train.amp.enabled=yes", "override 'train.amp.enabled=yes': expected bool (the config has False), got str 'yes'"),
        ("model.distillers.0.weight=[1", "cannot apply overrides"),
    ],
)
def test_malformed_override(train_net, tmp_path, capfd, override, message):
    code, lines, err = run_cli(train_net, capfd, ["--config-file", FITNET, override, f"train.output_dir={tmp_path}"])
    assert code == 2 and len(lines) == 1 and message in lines[0], err[-2000:]


# ---- untrusted checkpoints ---------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/d2kd_pickle_payload_ran",))


def test_torch_load_is_called_with_weights_only(teachers, monkeypatch):
    from detectron2.config import LazyConfig, instantiate

    from d2kd.checkpoint import ReportingCheckpointer

    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = instantiate(LazyConfig.load("configs/shapes/retinanet_teacher.py").model)
    ReportingCheckpointer(model).load(teachers["retinanet_teacher"])
    assert calls == [True]


def _teacher_pkl(teachers, path, **extra):
    sd = torch.load(teachers["retinanet_teacher"], weights_only=True)["model"]
    data = {"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "test", "matching_heuristics": False}
    data.update(extra)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)


def test_model_zoo_style_pkl_loads_without_pickle_opt_in(teachers, tmp_path):
    from d2kd.teacher import build_teacher

    path = str(tmp_path / "teacher.pkl")
    _teacher_pkl(teachers, path)
    t = build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights=path)
    ref = torch.load(teachers["retinanet_teacher"], weights_only=True)["model"]
    assert torch.equal(t.model.state_dict()["head.cls_score.weight"], ref["head.cls_score.weight"])


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_checkpoint_that_needs_pickle_is_refused_unless_allowed(teachers, tmp_path, suffix, caplog, propagate):
    import fractions

    from d2kd.teacher import build_teacher

    marker = "/tmp/d2kd_pickle_payload_ran"
    if os.path.exists(marker):
        os.remove(marker)
    evil = str(tmp_path / f"evil{suffix}")
    benign = str(tmp_path / f"benign{suffix}")
    if suffix == ".pkl":
        _teacher_pkl(teachers, evil, payload=_Payload())
        _teacher_pkl(teachers, benign, note=fractions.Fraction(1, 3))
    else:
        sd = torch.load(teachers["retinanet_teacher"], weights_only=True)["model"]
        torch.save({"model": sd, "payload": _Payload()}, evil)
        torch.save({"model": sd, "note": fractions.Fraction(1, 3)}, benign)
    with pytest.raises(RuntimeError) as e:
        build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights=evil)
    assert not os.path.exists(marker), "the pickle payload ran"
    assert "could run arbitrary code: if you trust the file, opt in with train.allow_pickle_checkpoints=True " \
           "(teacher: model.teacher.allow_pickle=True)" in str(e.value)
    with caplog.at_level("WARNING", logger="d2kd.checkpoint"):
        build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights=benign, allow_pickle=True)
    assert "can run arbitrary code; only do this for files you trust" in caplog.text


# ---- NaN end to end ----------------------------------------------------------------------------
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(train_net, teachers, tmp_path, capfd):
    out = tmp_path / "out"
    args = ["--config-file", FITNET, *TINY, "train.eval_teacher=False", "train.max_iter=8",
            "train.checkpointer.period=2", f"model.teacher.weights={teachers['retinanet_teacher']}",
            f"train.output_dir={out}", f"model.distillers.0._target_={__name__}.FlakyFitNet",
            "+model.distillers.0.nan_from=4", "train.skip_nonfinite_kd_steps=2"]
    code, lines, err = run_cli(train_net, capfd, args)
    assert code == 1 and len(lines) == 1, err[-3000:]
    good = out / "model_0000005.pth"
    assert lines[0] == (
        "train_net.py: error: NonFiniteLossError: non-finite loss at iteration 6: loss_kd_fitnet_p4 = nan "
        "(KD method 'fitnet' [FlakyFitNet, distillers.0], term/level 'p4'). Training stopped before this "
        f"step's update; the last good checkpoint {good} is intact (continue from it with --resume). Fix: "
        "already skipped 2 steps with non-finite KD terms, the limit train.skip_nonfinite_kd_steps=2: check "
        "the teacher weights, the method's settings (temperature, normaliser) or lower the KD weight"
    )
    for it in (4, 5):
        assert (f"iteration {it}: non-finite loss_kd_fitnet_p4 = nan (KD method 'fitnet' [FlakyFitNet, "
                f"distillers.0], term/level 'p4') replaced by zero (skipped KD step {it - 3} of at most 2, "
                "train.skip_nonfinite_kd_steps)") in err
    # no checkpoint, evaluation or export after the failure
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth")) == [
        "model_0000001.pth", "model_0000003.pth", "model_0000005.pth"]
    assert open(out / "last_checkpoint").read() == "model_0000005.pth"
    assert not os.path.exists(out / "student")
    ckpt = torch.load(good, weights_only=True)
    assert ckpt["trainer"]["nonfinite"] == {"skipped": 2} and ckpt["iteration"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# ---- data --------------------------------------------------------------------------------------
def _write_images(root):
    from PIL import Image

    rgb = np.zeros((64, 80, 3), np.uint8)
    rgb[10:40, 20:60] = 200
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(root / "gray.png")  # mode L
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "deep.png")  # 16-bit
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


def _register(name, dicts):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])


def _record(root, file, image_id, boxes, h=64, w=80):
    from detectron2.structures import BoxMode

    return {"file_name": str(root / file), "image_id": image_id, "height": h, "width": w,
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]}


def _mapper():
    import detectron2.data.transforms as T
    from detectron2.data import DatasetMapper

    return DatasetMapper(is_train=True, augmentations=[T.NoOpTransform()], image_format="BGR")


def test_grayscale_and_16bit_images_become_3_channel_uint8_range(tmp_path):
    _write_images(tmp_path)
    mapper = _mapper()
    for name in ("gray.png", "deep.png"):
        out = mapper(_record(tmp_path, name, 1, [[20, 10, 60, 40]]))
        img = out["image"]
        assert img.shape == (3, 64, 80) and img.dtype == torch.uint8
        assert int(img.max()) == 200 or name == "deep.png"  # 16-bit is clipped into 0..255 by PIL
        assert len(out["instances"]) == 1


def test_boxes_outside_the_image_are_clipped_and_degenerate_ones_dropped(tmp_path):
    _write_images(tmp_path)
    boxes = [[-10, -5, 30, 20], [70, 50, 200, 300], [30, 30, 30, 50], [40, 10, 20, 30], [5, 5, 25, 25]]
    inst = _mapper()(_record(tmp_path, "rgb.png", 1, boxes))["instances"]
    got = inst.gt_boxes.tensor.tolist()
    # clipped to the image; zero width dropped; x2 < x1 reordered (transforms take corner min/max)
    assert got == [[0, 0, 30, 20], [70, 50, 80, 64], [20, 10, 40, 30], [5, 5, 25, 25]]


def test_images_without_annotations_are_skipped_in_training(tmp_path, caplog, propagate):
    from detectron2.data import get_detection_dataset_dicts

    _write_images(tmp_path)
    _register("rel_test_empty", [_record(tmp_path, "rgb.png", 1, [[20, 10, 60, 40]]), _record(tmp_path, "gray.png", 2, [])])
    with caplog.at_level("INFO"):
        dicts = get_detection_dataset_dicts("rel_test_empty")
    assert [d["image_id"] for d in dicts] == [1]
    assert "Removed 1 images with no usable annotations. 1 images left." in caplog.text
    _register("rel_test_all_empty", [_record(tmp_path, "gray.png", 2, [])])
    with pytest.raises(AssertionError, match="No valid data found in rel_test_all_empty"):
        get_detection_dataset_dicts("rel_test_all_empty")


def test_image_size_that_disagrees_with_its_annotation(tmp_path):
    from detectron2.data.detection_utils import SizeMismatchError

    _write_images(tmp_path)
    with pytest.raises(SizeMismatchError, match=r"Mismatched image shape for image .*rgb.png, got \(80, 64\), "
                                               r"expect \(80, 100\). Please check the width/height in your annotation."):
        _mapper()(_record(tmp_path, "rgb.png", 1, [[20, 10, 60, 40]], h=100))


def test_image_that_fails_to_decode_stops_training_naming_the_file(train_net, teachers, tmp_path, capfd):
    _write_images(tmp_path)
    _register("rel_test_broken", [_record(tmp_path, "broken.jpg", 1, [[20, 10, 60, 40]])] * 2)
    args = ["--config-file", "configs/shapes/retinanet_student.py", *TINY, "train.max_iter=2",
            "dataloader.train.dataset.names=rel_test_broken", "train.checkpointer.period=100",
            f"train.output_dir={tmp_path / 'out'}"]
    code, lines, err = run_cli(train_net, capfd, args)
    assert code == 1 and len(lines) == 1, err[-2000:]
    assert lines[0] == (
        f"train_net.py: error: ImageLoadError: cannot load training image {tmp_path / 'broken.jpg'}: "
        "OSError: Truncated File Read; fix or remove the file (or its record in the dataset)"
    )
    assert not os.path.exists(tmp_path / "out" / "model_final.pth")


def test_pseudo_label_tool_on_an_empty_folder(teachers, tmp_path):
    import subprocess
    import sys

    empty = tmp_path / "unlabeled"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/pseudo_label.py"), "--config-file", "configs/shapes/retinanet_teacher.py",
         "--weights", teachers["retinanet_teacher"], "--source", str(empty), "--output", str(tmp_path / "pl.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=tool_env(OMP_NUM_THREADS="1"),
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: no images (") and last.endswith(f") under folder {empty}")
    assert not os.path.exists(tmp_path / "pl.json")
