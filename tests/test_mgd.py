"""MGD (d2kd/distill/mgd.py): the mask, the loss against an independent numpy route with a fixed
mask, zero where it should be, levels and build errors, gradients, export, the shapes configs
(two iterations, random teachers, and a cross-family pair) and the COCO config on a fake COCO tree."""
import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
import d2kd.distill.mgd as mgd_module  # noqa: E402
from d2kd.distill.base import feature_levels  # noqa: E402
from d2kd.distill.mgd import MGD, mgd_keep_mask  # noqa: E402
from d2kd.records import DetectorRecord  # noqa: E402
from feature_kd_helpers import (  # noqa: E402
    TINY_TRAIN, assert_export_strips_the_distillers, build_shapes, fake_models, random_teachers, train_two_steps)
from test_coco_configs_gkd import TRAIN, VAL, _save_random_weights, fake_coco  # noqa: E402,F401

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def records(s_feats, t_feats):
    n = next(iter(s_feats.values())).shape[0]
    images = ImageList(torch.zeros(n, 3, 32, 32), [(32, 32)] * n)
    return DetectorRecord(images=images, features=s_feats), DetectorRecord(images=images, features=t_feats)


def conv2d_numpy(x, weight, bias, pad):
    """Cross-correlation with zero padding by explicit loops over the kernel taps: (C_in, H, W) -> (C_out, H, W)."""
    c_out, c_in, kh, kw = weight.shape
    _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((c_out, h, w))
    for o in range(c_out):
        out[o] += bias[o]
        for i in range(c_in):
            for dy in range(kh):
                for dx in range(kw):
                    out[o] += weight[o, i, dy, dx] * xp[i, dy : dy + h, dx : dx + w]
    return out


def fixed_mask(mask):
    """A replacement for ``mgd_keep_mask`` that returns ``mask`` (N, 1, H, W) and records the calls."""
    calls = []

    def draw(n, h, w, ratio, device):
        calls.append((n, h, w, ratio))
        return mask.to(device)

    return draw, calls


# ----------------------------------------------------------------------------- the mask
def test_mask_is_the_references_draw_on_the_global_cpu_generator():
    torch.manual_seed(3)
    ours = mgd_keep_mask(2, 5, 7, 0.65, "cpu")
    torch.manual_seed(3)
    r = torch.rand((2, 1, 5, 7))  # the reference: torch.where(mat > 1 - λ, 0, 1)
    assert ours.shape == (2, 1, 5, 7) and ours.dtype == torch.float32
    assert torch.equal(ours, (r <= 1 - 0.65).float())
    torch.manual_seed(3)
    assert torch.equal(mgd_keep_mask(2, 5, 7, 0.65, "cpu"), ours)  # reproducible under the seed
    torch.manual_seed(0)
    big = mgd_keep_mask(4, 64, 64, 0.45, "cpu")
    assert set(big.unique().tolist()) == {0.0, 1.0}
    assert 1 - big.mean().item() == pytest.approx(0.45, abs=0.01)  # masked fraction ≈ λ


# ----------------------------------------------------------------------------- the loss
def test_loss_with_a_fixed_mask_equals_an_independent_numpy_route(monkeypatch):
    torch.manual_seed(0)
    d = MGD(in_features=["p3"], alpha_mgd=0.5, lambda_mgd=0.65)
    d.bind(*fake_models({"p3": (2, 8)}, {"p3": (3, 8)}))
    assert "p3" in d.align and d.align["p3"].kernel_size == (1, 1)
    gen = d.generation["p3"]
    assert [type(m).__name__ for m in gen] == ["Conv2d", "ReLU", "Conv2d"]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.in_channels == c.out_channels == 3 for c in (gen[0], gen[2]))
    s = torch.randn(2, 2, 4, 5)
    t = torch.randn(2, 3, 4, 5)
    mask = (torch.rand(2, 1, 4, 5) > 0.5).float()
    draw, calls = fixed_mask(mask)
    monkeypatch.setattr(mgd_module, "mgd_keep_mask", draw)
    loss = d(*records({"p3": s}, {"p3": t}))["p3"]
    assert calls == [(2, 4, 5, 0.65)]
    # independent route: numpy 1x1 align, mask, 3x3 conv, ReLU, 3x3 conv, Σ (G − t)² / N, × α
    a_w = d.align["p3"].weight.detach().numpy()[:, :, 0, 0]
    a_b = d.align["p3"].bias.detach().numpy()
    p = [x.detach().numpy().astype(np.float64) for x in (gen[0].weight, gen[0].bias, gen[2].weight, gen[2].bias)]
    total = 0.0
    for i in range(2):
        aligned = np.einsum("oc,chw->ohw", a_w, s[i].numpy()) + a_b[:, None, None]
        masked = aligned * mask[i].numpy()
        g = conv2d_numpy(np.maximum(conv2d_numpy(masked, p[0], p[1], 1), 0), p[2], p[3], 1)
        total += ((g - t[i].numpy()) ** 2).sum()
    assert loss.item() == pytest.approx(0.5 * total / 2, rel=1e-5)


def test_zero_when_the_generation_reproduces_the_teacher(monkeypatch):
    """Same channels (no align), an identity generation block (centre taps 1, no bias) on a
    non-negative map, nothing masked: student == teacher gives exactly 0; masking a cell adds
    that cell's Σ_c t² / N."""
    d = MGD(in_features=["p4"], alpha_mgd=1.0, lambda_mgd=0.0)
    d.bind(*fake_models({"p4": (3, 16)}, {"p4": (3, 16)}))
    assert len(d.align) == 0
    for conv in (d.generation["p4"][0], d.generation["p4"][2]):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
        with torch.no_grad():
            conv.weight[:, :, 1, 1] = torch.eye(3)
    t = torch.rand(2, 3, 3, 4)
    keep = torch.ones(2, 1, 3, 4)
    monkeypatch.setattr(mgd_module, "mgd_keep_mask", fixed_mask(keep)[0])
    assert d(*records({"p4": t.clone()}, {"p4": t}))["p4"].item() == 0.0
    keep[1, 0, 2, 3] = 0.0
    monkeypatch.setattr(mgd_module, "mgd_keep_mask", fixed_mask(keep)[0])
    expected = float((t[1, :, 2, 3] ** 2).sum()) / 2
    assert d(*records({"p4": t.clone()}, {"p4": t}))["p4"].item() == pytest.approx(expected, rel=1e-6)


def test_each_step_draws_a_mask_from_the_training_seed():
    d = MGD(in_features=["p3", "p4"])
    d.bind(*fake_models({"p3": (4, 8), "p4": (4, 16)}, {"p3": (4, 8), "p4": (4, 16)}))
    s = {"p3": torch.randn(2, 4, 6, 6), "p4": torch.randn(2, 4, 3, 3)}
    t = {"p3": torch.randn(2, 4, 6, 6), "p4": torch.randn(2, 4, 3, 3)}
    values = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        values.append({k: v.item() for k, v in d(*records(s, t)).items()})
    assert values[0] == values[1] and values[0] != values[2]


def test_defaults_and_argument_checks():
    d = MGD()
    assert (d.alpha_mgd, d.lambda_mgd, d.weight, d.in_features) == (2e-5, 0.65, 1.0, None)
    with pytest.raises(ValueError, match="lambda_mgd"):
        MGD(lambda_mgd=1.0)
    with pytest.raises(ValueError, match="alpha_mgd"):
        MGD(alpha_mgd=-1.0)
    with pytest.raises(ValueError, match="in_features"):
        MGD(in_features=[])


# ----------------------------------------------------------------------------- levels
def test_default_levels_are_the_shared_strides_and_bad_levels_are_refused():
    frcnn = {f"p{k}": (32, 2**k) for k in range(2, 7)}  # p2-p6
    retina = {f"p{k}": (128, 2**k) for k in range(3, 8)}  # p3-p7
    d = MGD()
    d.bind(*fake_models(frcnn, retina))  # a RetinaNet teacher for a Faster R-CNN student
    assert d.in_features == ["p3", "p4", "p5", "p6"]
    retina_student, frcnn_teacher = fake_models(retina, frcnn)
    assert feature_levels("X", None, retina_student.backbone.output_shape(), frcnn_teacher.output_shape()) == [
        "p3", "p4", "p5", "p6"]  # the student's order
    with pytest.raises(ValueError, match=r"'p2' is missing from the teacher.*student \{.*p2.*teacher \{.*p7"):
        MGD(in_features=["p2"]).bind(*fake_models(frcnn, retina))
    with pytest.raises(ValueError, match=r"stride 16 in the student but 8 in the teacher \(student \{p4: stride 16, 32 ch\}, teacher \{p4: stride 8, 128 ch\}\)"):
        MGD(in_features=["p4"]).bind(*fake_models({"p4": (32, 16)}, {"p4": (128, 8)}))
    with pytest.raises(ValueError, match=r"no feature level with the same stride.*student .*stride 16, 32 ch.*teacher .*stride 8, 128 ch"):
        MGD().bind(*fake_models({"p4": (32, 16)}, {"p4": (128, 8)}))


def test_a_spatial_mismatch_names_both_shapes():
    d = MGD(in_features=["p3"])
    d.bind(*fake_models({"p3": (2, 8)}, {"p3": (2, 8)}))
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\) in the student but \(1, 2, 4, 5\) in the teacher"):
        d(*records({"p3": torch.zeros(1, 2, 4, 4)}, {"p3": torch.zeros(1, 2, 4, 5)}))


# ----------------------------------------------------------------------------- full models
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teachers(tmp_path_factory)


@pytest.mark.parametrize(
    "config,levels,lam", [("retinanet_mgd", ["p3", "p4", "p5"], 0.65), ("faster_rcnn_mgd", ["p2", "p3", "p4", "p5"], 0.45)]
)
def test_shapes_config_two_iterations_gradients_and_export(config, levels, lam, teachers):
    cfg, model = build_shapes(config, teachers)
    (d,) = model.distillers
    assert isinstance(d, MGD) and d.in_features == levels and d.lambda_mgd == lam
    loader = iter(instantiate(cfg.dataloader.train))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with EventStorage(0):
        for it in range(2):
            losses = model(next(loader))
            kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_mgd_")}
            assert set(kd) == {f"loss_kd_mgd_{lv}" for lv in levels}
            assert all(torch.isfinite(v) for v in losses.values())
            opt.zero_grad()
            if it == 0:  # the KD terms alone: gradients reach the student, align and generation only
                sum(kd.values()).backward(retain_graph=True)
                assert all(not p.requires_grad and p.grad is None for p in model.teacher.model.parameters())
                assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
                opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    # export: the student's state without the distiller's align and generation convs
    assert_export_strips_the_distillers(cfg, model, "generation")


def test_cross_family_retinanet_teacher_for_a_faster_rcnn_student(teachers):
    """Default levels: P3-P6, the ones a RetinaNet teacher (P3-P7) and a Faster R-CNN student
    (P2-P6) share; one step runs."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/faster_rcnn_mgd.py"), TINY_TRAIN)
    cfg.model.teacher.config_file = "configs/shapes/retinanet_teacher.py"
    cfg.model.teacher.weights = teachers["retinanet_teacher"]
    cfg.model.distillers[0].in_features = None
    model = instantiate(cfg.model).train()
    assert model.distillers[0].in_features == ["p3", "p4", "p5", "p6"]
    with EventStorage(0):
        losses = model(next(iter(instantiate(cfg.dataloader.train))))
    assert {f"loss_kd_mgd_p{k}" for k in range(3, 7)} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- COCO
def test_coco_config_builds_and_trains_two_iterations(fake_coco, tmp_path):  # noqa: F811
    path = "configs/coco/retinanet_R101_R50_mgd.py"
    cfg = LazyConfig.load(path)
    d = cfg.model.distillers[0]
    assert (d.alpha_mgd, d.lambda_mgd, list(d.in_features)) == (2e-5, 0.65, ["p3", "p4", "p5", "p6", "p7"])
    assert cfg.train.clip_grad_norm == 35.0 and cfg.train.max_iter == 180000 and cfg.optimizer.lr == 0.01
    assert cfg.model.teacher.config_file == "configs/coco/retinanet_R101_2x.py"
    assert cfg.model.backbone.bottom_up.stages.depth == 50
    teacher_cfg = LazyConfig.load(cfg.model.teacher.config_file)
    assert teacher_cfg.model.backbone.bottom_up.stages.depth == 101
    weights = str(tmp_path / "teacher.pth")
    _save_random_weights(teacher_cfg.model, weights)
    cfg = LazyConfig.apply_overrides(cfg, [
        f"dataloader.train.dataset.names={TRAIN}", "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0", "train.init_checkpoint=", f"model.teacher.weights={weights}",
    ])
    cfg.dataloader.train.mapper.augmentations[0].short_edge_length = [64]
    cfg.dataloader.train.mapper.augmentations[0].max_size = 96
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    for name, module in model.named_modules():  # as _save_random_weights: a finite random FrozenBN ResNet
        if name.endswith("conv3.norm"):
            module.weight.mul_(0.1)
    assert len(model.distillers[0].align) == 0 and len(model.distillers[0].generation) == 5  # 256 ch both sides
    cfg.optimizer.params.model = model
    train_two_steps(cfg, model, {f"loss_kd_mgd_p{k}" for k in range(3, 8)}, optimizer=instantiate(cfg.optimizer))
    assert all(p.grad is None for p in model.teacher.model.parameters())
