"""CWD (d2kd/distill/cwd.py): the loss against numpy loops and hand-computed values (softmax over
H·W per channel, τ², the N·C normaliser, PaddleDetection's ε variant), its edge cases, the
build-time checks, and the shapes and COCO configs (two iterations with random teachers,
gradients, export)."""
import math
import os
import time

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
from d2kd.distill.base import DISTILLER_REGISTRY  # noqa: E402
from d2kd.distill.cwd import CWD, cwd_loss  # noqa: E402
from d2kd.records import DetectorRecord  # noqa: E402

# shared helpers: the feature methods' (fake models, shapes configs), PKD's numpy standardisation, the fake COCO tree
from feature_kd_helpers import RCNN_STUDENT, RETINA_TEACHER, build_shapes, fake_models, random_teachers, shapes, train_two_steps  # noqa: E402
from test_coco_configs_gkd import _save_random_weights as save_small_gamma_weights  # noqa: E402
from test_coco_configs_gkd import _tiny as tiny_coco  # noqa: E402
from test_coco_configs_gkd import _train as train_coco  # noqa: E402
from test_coco_configs_gkd import fake_coco  # noqa: E402,F401
from test_pkd import numpy_standardize  # noqa: E402

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_cwd(s, t, tau=1.0, eps=None):
    """The loss written as loops: per image and channel, the softmax of the H·W values / τ, the
    KL of the teacher's from the student's, summed, × τ², / (N·C)."""
    s, t = np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64)
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for k in range(c):
            a, b = t[i, k].ravel() / tau, s[i, k].ravel() / tau
            p = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
            q = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
            if eps is None:
                total += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q) if pj > 0)
            else:
                total += sum(pj * (math.log(pj + eps) - math.log(qj + eps)) for pj, qj in zip(p, q))
    return total * tau**2 / (n * c)


# ----------------------------------------------------------------------------- the loss
def test_loss_by_hand_one_channel_two_locations():
    # teacher [0, 0] -> (1/2, 1/2); student [0, ln 3] -> (1/4, 3/4):
    # KL = ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln(4/3)
    t = torch.zeros(1, 1, 1, 2)
    s = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)
    assert cwd_loss(s, t).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # τ = 2: the student's logits halve -> (1, √3)/(1 + √3); × τ² = 4
    q = [1.0 / (1 + math.sqrt(3.0)), math.sqrt(3.0) / (1 + math.sqrt(3.0))]
    expected = 4 * sum(0.5 * (math.log(0.5) - math.log(qj)) for qj in q)
    assert cwd_loss(s, t, tau=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_normaliser_is_images_times_channels_not_locations():
    # the same 1x2 pair in every one of N=2 images and C=3 channels: the sum is 6 KLs, / (N·C) -> one KL
    t = torch.zeros(2, 3, 1, 2)
    s = torch.tensor([0.0, math.log(3.0)]).expand(2, 3, 1, 2).contiguous()
    assert cwd_loss(s, t).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # one channel with that KL and one with 0: the mean over channels
    s2 = torch.stack([s[:, 0], torch.zeros(2, 1, 2)], dim=1)
    assert cwd_loss(s2, torch.zeros(2, 2, 1, 2)).item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_loss_matches_a_numpy_loop(tau):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=gen) * 2
    t = torch.randn(2, 3, 4, 5, generator=gen) * 3
    assert cwd_loss(s, t, tau=tau).item() == pytest.approx(numpy_cwd(s.numpy(), t.numpy(), tau), rel=1e-5)
    # PaddleDetection's form: log(1e-5 + softmax) on both sides
    assert cwd_loss(s, t, tau=tau, log_eps=1e-5).item() == pytest.approx(
        numpy_cwd(s.numpy(), t.numpy(), tau, eps=1e-5), rel=1e-5)


def test_student_equal_to_teacher_gives_zero_and_one_location_gives_zero():
    x = torch.randn(2, 4, 3, 3) * 10
    assert cwd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cwd_loss(x + 5.0, x).item() == pytest.approx(0.0, abs=1e-5)  # shift-invariant per channel
    # a 1x1 map: the softmax over one location is 1 on both sides
    assert cwd_loss(torch.randn(2, 4, 1, 1), torch.randn(2, 4, 1, 1)).item() == 0.0


def test_large_and_constant_maps_stay_finite():
    s = torch.full((1, 2, 3, 3), 7.0, requires_grad=True)
    t = torch.randn(1, 2, 3, 3) * 1e4  # a near one-hot teacher
    loss = cwd_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # uniform student vs one-hot teacher: KL = ln(H·W) per channel
    assert loss.item() == pytest.approx(math.log(9), rel=1e-4)


def test_shape_mismatch_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3\).*\(1, 2, 4, 4\)"):
        cwd_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 4))
    for bad in (dict(tau=0), dict(tau=-1), dict(log_eps=0), dict(in_features=[])):
        with pytest.raises(ValueError):
            CWD(**bad)


# ----------------------------------------------------------------------------- building
def test_default_levels_are_the_common_same_stride_levels_cross_family():
    d = CWD(weight=10)
    d.bind(*fake_models(RCNN_STUDENT, RETINA_TEACHER))
    assert d.in_features == ["p3", "p4", "p5", "p6"]
    assert sorted(d.adapters) == ["p3", "p4", "p5", "p6"]
    assert all(a.kernel_size == (1, 1) and (a.in_channels, a.out_channels) == (32, 128) for a in d.adapters.values())
    assert DISTILLER_REGISTRY.get("CWD") is CWD and d.name == "cwd" and d.tau == 1.0 and d.log_eps is None


def test_level_mismatches_are_refused_naming_both_shapes():
    both = r"student \{p2: stride 4, 32 ch.*teacher \{p3: stride 8, 128 ch"
    with pytest.raises(ValueError, match=r"CWD: feature level 'p2' is missing from the teacher.*" + both):
        CWD(in_features=["p2"]).bind(*fake_models(RCNN_STUDENT, RETINA_TEACHER))
    odd = shapes(["p3"], [128], [16])
    with pytest.raises(ValueError, match=r"CWD: level 'p3' has stride 8 in the student but 16 in the teacher"):
        CWD(in_features=["p3"]).bind(*fake_models(RCNN_STUDENT, odd))
    with pytest.raises(ValueError, match=r"CWD: the student and the teacher share no feature level"):
        CWD().bind(*fake_models(RCNN_STUDENT, shapes(["p3"], [128], [16])))


def test_forward_through_the_adapter_normalize_and_fp32():
    torch.manual_seed(0)
    d = CWD(tau=2.0, normalize=True)
    d.bind(*fake_models(shapes(["p3", "p4"], [2, 3], [8, 16]), shapes(["p3", "p4"], [3, 3], [8, 16])))
    assert sorted(d.adapters) == ["p3"]
    feats_s = {"p3": torch.randn(2, 2, 4, 4), "p4": torch.randn(2, 3, 2, 2)}
    feats_t = {"p3": torch.randn(2, 3, 4, 4).bfloat16(), "p4": torch.randn(2, 3, 2, 2)}
    images = ImageList(torch.zeros(2, 3, 32, 32), [(32, 32)] * 2)
    losses = d(DetectorRecord(images=images, features=feats_s), DetectorRecord(images=images, features=feats_t))
    assert sorted(losses) == ["p3", "p4"] and all(v.dtype == torch.float32 for v in losses.values())
    adapted = d.adapters["p3"](feats_s["p3"]).detach().numpy()
    for level, s in (("p3", adapted), ("p4", feats_s["p4"].numpy())):
        expected = numpy_cwd(numpy_standardize(s), numpy_standardize(feats_t[level].float().numpy()), tau=2.0)
        assert losses[level].item() == pytest.approx(expected, rel=1e-4)
    # different map sizes (same strides at build) are an error naming both sizes
    feats_t["p4"] = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match=r"level 'p4' is \(2, 3, 2, 2\) in the student but \(2, 3, 3, 3\)"):
        d(DetectorRecord(images=images, features=feats_s), DetectorRecord(images=images, features=feats_t))


# ----------------------------------------------------------------------------- full models
CONFIGS = {"faster_rcnn_cwd": ("faster_rcnn_teacher", ["p2", "p3", "p4", "p5", "p6"]),
           "retinanet_cwd": ("retinanet_teacher", ["p3", "p4", "p5", "p6"])}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teachers(tmp_path_factory, [teacher for teacher, _ in CONFIGS.values()])


def build(config, teachers):
    cfg, model = build_shapes(config, teachers)
    assert cfg.model.teacher.config_file == f"configs/shapes/{CONFIGS[config][0]}.py"
    return cfg, model


@pytest.mark.parametrize("config", list(CONFIGS))
def test_shapes_config_runs_two_iterations(config, teachers):
    t0 = time.time()
    cfg, model = build(config, teachers)
    (d,) = model.distillers
    levels = CONFIGS[config][1]
    assert isinstance(d, CWD) and d.in_features == levels and d.tau == 1.0 and d.weight == 10.0
    train_two_steps(cfg, model, [f"loss_kd_cwd_{lv}" for lv in levels])
    assert time.time() - t0 < 15


def test_composes_with_pkd_each_with_its_own_adapters_and_keys(teachers):
    from detectron2.config import LazyCall as L

    from d2kd.distill.pkd import PKD

    cfg = LazyConfig.load("configs/shapes/faster_rcnn_cwd.py")
    cfg = LazyConfig.apply_overrides(cfg, ["dataloader.train.total_batch_size=2",
                                           "dataloader.train.dataset.names=shapes_tiny_train"])
    cfg.model.teacher.weights = teachers["faster_rcnn_teacher"]
    cfg.model.distillers.append(L(PKD)(in_features=["p3", "p4"], weight=6.0))
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cwd, pkd = model.distillers
    assert sorted(cwd.adapters) == ["p2", "p3", "p4", "p5", "p6"] and sorted(pkd.adapters) == ["p3", "p4"]
    with EventStorage(0):
        losses = model(next(iter(instantiate(cfg.dataloader.train))))
    kd = sorted(k for k in losses if k.startswith("loss_kd_"))
    assert kd == sorted([f"loss_kd_cwd_{lv}" for lv in ["p2", "p3", "p4", "p5", "p6"]] + ["loss_kd_pkd_p3", "loss_kd_pkd_p4"])
    assert all(torch.isfinite(losses[k]) and losses[k] > 0 for k in kd)


def test_gradients_reach_the_student_and_adapters_only_and_export_strips_them(teachers, tmp_path):
    from d2kd.export import export_student

    cfg, model = build("retinanet_cwd", teachers)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    d = model.distillers[0]
    with EventStorage(0):
        losses = model(batch)
    kd = sum(v for k, v in losses.items() if k.startswith("loss_kd_cwd_"))
    assert kd.item() > 0
    kd.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.head.parameters())  # CWD reads features only

    weights = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 1}, weights)
    paths = export_student(cfg, str(weights), str(tmp_path / "export"))
    state = torch.load(paths["weights"], weights_only=True)["model"]
    assert any(k.startswith("distillers.0.adapters.") for k in model.state_dict())
    assert not any("distillers" in k or "adapters" in k for k in state)
    stock = instantiate(LazyConfig.load(paths["config"]).model)
    incompatible = stock.load_state_dict(state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys


# ----------------------------------------------------------------------------- COCO config
def test_coco_cwd_config_mirrors_paddledetection_and_trains_two_iterations(fake_coco, tmp_path):
    cfg = LazyConfig.load(os.path.join(REPO, "configs/coco/retinanet_R101_R50_cwd.py"))
    (spec,) = cfg.model.distillers
    assert list(spec.in_features) == ["p3", "p4", "p5", "p6", "p7"]
    assert (spec.tau, spec.weight, spec.log_eps) == (1.0, 5.0, 1e-5)
    assert cfg.model.teacher.config_file == "configs/coco/retinanet_R101_2x.py"
    assert cfg.train.max_iter == 180000 and cfg.dataloader.train.total_batch_size == 16 and cfg.optimizer.lr == 0.01
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"

    teacher_file = os.path.join(REPO, "configs/coco/retinanet_R101_2x.py")
    teacher_weights, student_init = str(tmp_path / "teacher.pth"), str(tmp_path / "student.pth")
    save_small_gamma_weights(LazyConfig.load(teacher_file).model, teacher_weights)
    save_small_gamma_weights(LazyConfig.load(os.path.join(REPO, "configs/coco/retinanet_R50_2x.py")).model, student_init)
    cfg = tiny_coco(cfg, str(tmp_path / "cwd"), [f"train.init_checkpoint={student_init}",
                                                  f"model.teacher.weights={teacher_weights}"])
    cfg.model.teacher.config_file = teacher_file
    trainer, results = train_coco(cfg)
    d = trainer.model.distillers[0]
    assert d.in_features == ["p3", "p4", "p5", "p6", "p7"] and len(d.adapters) == 0
    assert "bbox" in results
