"""PKD (d2kd/distill/pkd.py): the loss against independent routes (numpy loops, the Pearson
correlation), its edge cases, the build-time level checks shared with CWD, and the shapes and
COCO configs (two iterations with random teachers, gradients, export)."""
import os
import time

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
from d2kd.distill.base import DISTILLER_REGISTRY  # noqa: E402
from d2kd.distill.base import feature_levels  # noqa: E402
from d2kd.distill.pkd import PKD, pkd_loss, pkd_standardize  # noqa: E402
from d2kd.records import DetectorRecord  # noqa: E402
from feature_kd_helpers import RCNN_STUDENT, RETINA_TEACHER, build_shapes, fake_models, random_teachers, shapes, train_two_steps  # noqa: E402

# the fake COCO tree and helpers of the GKD COCO test (the same test-only datasets)
from test_coco_configs_gkd import _save_random_weights as save_small_gamma_weights  # noqa: E402
from test_coco_configs_gkd import _tiny as tiny_coco  # noqa: E402
from test_coco_configs_gkd import _train as train_coco  # noqa: E402
from test_coco_configs_gkd import fake_coco  # noqa: E402,F401

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- helpers
def numpy_standardize(x):
    """The reference's ``norm`` written as loops: per channel, over every (n, h, w), the unbiased
    standard deviation, ``(x − μ) / (σ + 1e-6)``."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        values = x[:, c].ravel()
        mu = values.sum() / values.size
        sigma = np.sqrt(((values - mu) ** 2).sum() / (values.size - 1))
        out[:, c] = (x[:, c] - mu) / (sigma + 1e-6)
    return out


def numpy_pkd(s, t):
    a, b = numpy_standardize(s), numpy_standardize(t)
    return 0.5 * ((a - b) ** 2).sum() / a.size


# ----------------------------------------------------------------------------- the loss
def test_standardisation_per_channel_over_n_h_w_matches_a_numpy_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=gen) * torch.tensor([0.1, 1.0, 7.0, 30.0])[None, :, None, None] + 5
    np.testing.assert_allclose(pkd_standardize(x).numpy(), numpy_standardize(x.numpy()), rtol=1e-5, atol=1e-5)


def test_loss_by_hand_one_channel():
    # s = [1, 2, 3] -> (μ 2, σ 1) -> [-1, 0, 1]; t = [3, 2, 1] -> [1, 0, -1]:
    # ½ · (4 + 0 + 4) / 3 = 4/3 (divided by (1 + 1e-6)² for the ε)
    s = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    t = torch.tensor([3.0, 2.0, 1.0]).reshape(1, 1, 1, 3)
    assert pkd_loss(s, t).item() == pytest.approx(4.0 / 3.0 / (1 + 1e-6) ** 2, rel=1e-6)


def test_loss_matches_numpy_and_is_one_minus_pearson_r():
    """½·MSE of standardised maps = mean over channels of (n−1)/n · (1 − r_c), r_c the Pearson
    correlation of channel c over its n = N·H·W values (numpy's corrcoef: another route)."""
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, 5, generator=gen) * 3 - 1
    t = 0.5 * s + torch.randn(2, 3, 4, 5, generator=gen) * torch.tensor([0.1, 1.0, 10.0])[None, :, None, None]
    loss = pkd_loss(s, t).item()
    assert loss == pytest.approx(numpy_pkd(s.numpy(), t.numpy()), rel=1e-5)
    n = 2 * 4 * 5
    r = [np.corrcoef(s[:, c].numpy().ravel(), t[:, c].numpy().ravel())[0, 1] for c in range(3)]
    assert loss == pytest.approx(np.mean([(n - 1) / n * (1 - rc) for rc in r]), rel=1e-4)
    # magnitude-free: scaling / shifting a channel of either map changes nothing
    scaled = s * torch.tensor([100.0, 0.01, 3.0])[None, :, None, None] + 7
    assert pkd_loss(scaled, t).item() == pytest.approx(loss, rel=1e-4)


def test_student_equal_to_teacher_gives_zero():
    x = torch.randn(2, 4, 6, 6)
    assert pkd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-10)


def test_constant_maps_stay_finite_in_value_and_gradient():
    # a constant student standardises to 0: the loss is ½·mean(t̂²) = ½·(n − 1)/n per channel
    s = torch.full((2, 3, 4, 4), 2.5, requires_grad=True)
    t = torch.randn(2, 3, 4, 4)
    loss = pkd_loss(s, t)
    n = 2 * 4 * 4
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * (n - 1) / n / (1 + 1e-6) ** 2, rel=1e-4)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    # both constant: 0, finite gradient
    s2 = torch.zeros(1, 2, 3, 3, requires_grad=True)
    loss2 = pkd_loss(s2, torch.ones(1, 2, 3, 3))
    loss2.backward()
    assert loss2.item() == 0.0 and torch.isfinite(s2.grad).all()
    # a single value per channel (one image, a 1x1 map): no unbiased σ; 0 instead of NaN
    s3 = torch.randn(1, 4, 1, 1, requires_grad=True)
    loss3 = pkd_loss(s3, torch.randn(1, 4, 1, 1))
    loss3.backward()
    assert loss3.item() == 0.0 and torch.isfinite(s3.grad).all()


def test_different_sizes_resize_student_or_teacher_or_refuse():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 6, generator=gen), torch.randn(2, 3, 8, 12, generator=gen)
    by_student = pkd_loss(s, t, resize="student").item()
    by_teacher = pkd_loss(s, t, resize="teacher").item()
    up = F.interpolate(s, size=(8, 12), mode="bilinear", align_corners=False)
    down = F.interpolate(t, size=(4, 6), mode="bilinear", align_corners=False)
    assert by_student == pytest.approx(numpy_pkd(up.numpy(), t.numpy()), rel=1e-5)
    assert by_teacher == pytest.approx(numpy_pkd(s.numpy(), down.numpy()), rel=1e-5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 6\).*\(2, 3, 8, 12\)"):
        pkd_loss(s, t, resize=None)
    with pytest.raises(ValueError, match="resize"):
        PKD(resize="both")


# ----------------------------------------------------------------------------- building
def test_default_levels_are_the_common_same_stride_levels_cross_family():
    d = PKD(weight=6)
    d.bind(*fake_models(RCNN_STUDENT, RETINA_TEACHER))
    assert d.in_features == ["p3", "p4", "p5", "p6"]
    # channels differ (32 vs 128): a 1x1 adapter per level, student -> teacher channels
    assert sorted(d.adapters) == ["p3", "p4", "p5", "p6"]
    assert all(a.kernel_size == (1, 1) and a.in_channels == 32 and a.out_channels == 128 for a in d.adapters.values())
    assert DISTILLER_REGISTRY.get("PKD") is PKD and d.name == "pkd"


def test_equal_channels_build_no_adapter():
    same = shapes(["p3", "p4"], [16, 16], [8, 16])
    d = PKD()
    d.bind(*fake_models(same, same))
    assert d.in_features == ["p3", "p4"] and len(d.adapters) == 0 and not list(d.parameters())


def test_level_mismatches_are_refused_naming_both_shapes():
    both = r"student \{p2: stride 4, 32 ch.*teacher \{p3: stride 8, 128 ch"
    with pytest.raises(ValueError, match=r"'p2' is missing from the teacher.*" + both):
        PKD(in_features=["p2", "p3"]).bind(*fake_models(RCNN_STUDENT, RETINA_TEACHER))
    with pytest.raises(ValueError, match=r"'p9' is missing from the student and teacher.*" + both):
        PKD(in_features=["p9"]).bind(*fake_models(RCNN_STUDENT, RETINA_TEACHER))
    odd = shapes(["p3", "p4"], [128, 128], [4, 16])  # p3 at stride 4: a different level layout
    with pytest.raises(ValueError, match=r"'p3' has stride 8 in the student but 4 in the teacher.*p3: stride 4, 128 ch"):
        PKD(in_features=["p3"]).bind(*fake_models(RCNN_STUDENT, odd))
    disjoint = shapes(["c4", "c5"], [64, 64], [16, 32])
    with pytest.raises(ValueError, match=r"share no feature level.*student \{p2: stride 4.*teacher \{c4: stride 16"):
        PKD().bind(*fake_models(RCNN_STUDENT, disjoint))
    with pytest.raises(ValueError, match="at least one level"):
        PKD(in_features=[])
    # the shared helper keeps an explicit, valid choice as given
    assert feature_levels("X", ["p5", "p3"], RCNN_STUDENT, RETINA_TEACHER) == ["p5", "p3"]


def test_forward_one_term_per_level_through_the_adapter_and_in_fp32():
    torch.manual_seed(0)
    s_shapes = shapes(["p3", "p4"], [2, 3], [8, 16])
    t_shapes = shapes(["p3", "p4"], [3, 3], [8, 16])
    d = PKD()
    d.bind(*fake_models(s_shapes, t_shapes))
    assert sorted(d.adapters) == ["p3"]  # p4 has equal channels
    feats_s = {"p3": torch.randn(2, 2, 4, 4), "p4": torch.randn(2, 3, 2, 2)}
    feats_t = {"p3": torch.randn(2, 3, 4, 4).bfloat16(), "p4": torch.randn(2, 3, 2, 2)}
    images = ImageList(torch.zeros(2, 3, 32, 32), [(32, 32)] * 2)
    losses = d(DetectorRecord(images=images, features=feats_s), DetectorRecord(images=images, features=feats_t))
    assert sorted(losses) == ["p3", "p4"] and all(v.dtype == torch.float32 for v in losses.values())
    adapted = d.adapters["p3"](feats_s["p3"]).detach().numpy()
    assert losses["p3"].item() == pytest.approx(numpy_pkd(adapted, feats_t["p3"].float().numpy()), rel=1e-5)
    assert losses["p4"].item() == pytest.approx(numpy_pkd(feats_s["p4"].numpy(), feats_t["p4"].numpy()), rel=1e-5)


# ----------------------------------------------------------------------------- full models
TEACHER_OF = {
    "faster_rcnn_pkd": "faster_rcnn_teacher",
    "retinanet_pkd": "retinanet_teacher",
    "faster_rcnn_pkd_from_retinanet": "retinanet_teacher",
}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teachers(tmp_path_factory, sorted(set(TEACHER_OF.values())))


def build(config, teachers):
    cfg, model = build_shapes(config, teachers)
    assert cfg.model.teacher.config_file == f"configs/shapes/{TEACHER_OF[config]}.py"
    return cfg, model


@pytest.mark.parametrize("config", list(TEACHER_OF))
def test_shapes_config_runs_two_iterations(config, teachers):
    t0 = time.time()
    cfg, model = build(config, teachers)
    (d,) = model.distillers
    assert isinstance(d, PKD)
    expected = {"faster_rcnn_pkd": ["p2", "p3", "p4", "p5"], "retinanet_pkd": ["p3", "p4", "p5", "p6"],
                "faster_rcnn_pkd_from_retinanet": ["p3", "p4", "p5", "p6"]}[config]
    assert d.in_features == expected and sorted(d.adapters) == sorted(expected)
    train_two_steps(cfg, model, [f"loss_kd_pkd_{lv}" for lv in expected])
    assert time.time() - t0 < 15


@pytest.mark.parametrize("config", ["faster_rcnn_pkd_from_retinanet"])
def test_gradients_reach_the_student_and_adapters_only_and_export_strips_them(config, teachers, tmp_path):
    from d2kd.export import export_student

    cfg, model = build(config, teachers)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    d = model.distillers[0]
    with EventStorage(0):
        losses = model(batch)
    kd = sum(v for k, v in losses.items() if k.startswith("loss_kd_pkd_"))
    assert kd.item() > 0
    kd.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    # the student's FPN output convs of the distilled levels get a gradient from PKD alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.roi_heads.parameters())  # PKD reads features only

    weights = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 1}, weights)
    paths = export_student(cfg, str(weights), str(tmp_path / "export"))
    state = torch.load(paths["weights"], weights_only=True)["model"]
    assert any(k.startswith("distillers.0.adapters.") for k in model.state_dict())
    assert not any("distillers" in k or "adapters" in k for k in state)
    stock = instantiate(LazyConfig.load(paths["config"]).model)
    incompatible = stock.load_state_dict(state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys


# ----------------------------------------------------------------------------- COCO configs
@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_coco_pkd_configs_mirror_the_released_ones_and_train_two_iterations(arch, fake_coco, tmp_path):
    cfg_file = os.path.join(REPO, f"configs/coco/{arch}_R101_R50_pkd.py")
    cfg = LazyConfig.load(cfg_file)
    (spec,) = cfg.model.distillers
    levels, weight = {"faster_rcnn": (["p2", "p3", "p4", "p5"], 6.0), "retinanet": (["p3", "p4", "p5", "p6"], 10.0)}[arch]
    assert list(spec.in_features) == levels and spec.weight == weight
    assert cfg.model.teacher.config_file == f"configs/coco/{arch}_R101_2x.py"
    assert cfg.train.max_iter == 180000 and cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == {"faster_rcnn": 0.02, "retinanet": 0.01}[arch]
    assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.model.backbone.bottom_up.stages.depth == 50

    teacher_file = os.path.join(REPO, f"configs/coco/{arch}_R101_2x.py")
    teacher_weights, student_init = str(tmp_path / "teacher.pth"), str(tmp_path / "student.pth")
    save_small_gamma_weights(LazyConfig.load(teacher_file).model, teacher_weights)
    save_small_gamma_weights(LazyConfig.load(os.path.join(REPO, f"configs/coco/{arch}_R50_2x.py")).model, student_init)
    cfg = tiny_coco(cfg, str(tmp_path / "pkd"), [f"train.init_checkpoint={student_init}",
                                                  f"model.teacher.weights={teacher_weights}"])
    cfg.model.teacher.config_file = teacher_file
    trainer, results = train_coco(cfg)
    d = trainer.model.distillers[0]
    assert d.in_features == levels and len(d.adapters) == 0  # 256 channels on both sides
    assert "bbox" in results

