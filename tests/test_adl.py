"""ADL (docs/methods.md §5.1): values and gradients against hand computations, an independent
element-by-element implementation, the reference CUDA backward formula, and gradcheck; the
distiller inside a RetinaNet distillation model."""
import math

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402

from d2kd.distill.adl import ADL, adaptive_distillation_loss, adaptive_normalizer  # noqa: E402


# ---- an independent, straightforward implementation (python floats, one element at a time) ----
def _sig(z):
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def ref_loss(x, t, valid, *, gamma=2.0, alpha=0.5, beta=0.0, theta=1.8, normalizer="adaptive",
             num_fg=None, T=1.0, form="reference"):
    """x, t: nested lists [N][R][K]; valid: [N][R] booleans."""
    total, pow_sum = 0.0, 0.0
    for n in range(len(x)):
        for r in range(len(x[n])):
            for k in range(len(x[n][r])):
                q_raw = _sig(t[n][r][k])
                pow_sum += q_raw ** theta
                if not valid[n][r]:
                    continue
                q = min(max(q_raw, 1e-6), 1 - 1e-6)
                p = _sig(x[n][r][k])
                ce = -q * math.log(p) - (1 - q) * math.log(1 - p)
                d = ce + beta * (q * math.log(q) + (1 - q) * math.log(1 - q))
                w = (1 - math.exp(-d)) ** gamma
                if form == "reference":
                    term = -(alpha * q * math.log(p) + (1 - alpha) * (1 - q) * math.log(1 - p))
                else:
                    term = ce - (-q * math.log(q) - (1 - q) * math.log(1 - q))
                total += w * term
    n_p = max(1.0, pow_sum) if normalizer == "adaptive" else max(1.0, float(num_fg))
    return total / n_p * T * T


def ref_grad_cuda(x, q, valid, *, gamma, alpha, beta, n_p):
    """dL/dx as written in the reference's SigmoidAdaptiveDistillLossGradientKernel."""
    p = torch.sigmoid(x)
    q = q.clamp(1e-6, 1 - 1e-6)
    dl = -(q * torch.log(p) + (1 - q) * torch.log(1 - p)) + beta * (q * torch.log(q) + (1 - q) * torch.log(1 - q))
    e = torch.exp(-dl)
    a = 1 - e
    dloss = alpha * q * torch.log(p) + (1 - alpha) * (1 - q) * torch.log(1 - p)
    g = -(-(q - p) * gamma * a ** (gamma - 1) * e * dloss + a ** gamma * (alpha * (q - p) - (1 - 2 * alpha) * (1 - q) * p))
    return g * valid / n_p


def _data(seed=0, N=2, R=6, K=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, R, K, generator=g, dtype=dtype) * 2
    t = torch.randn(N, R, K, generator=g, dtype=dtype) * 3
    valid = torch.ones(N, R, dtype=torch.bool)
    valid[0, 1] = False
    valid[N - 1, R - 2] = False
    return x, t, valid


def test_hand_computed_single_element():
    # x = 0, q = 0.5: p = 0.5, CE = D = log 2, weight (1 − 1/2)^2 = 1/4,
    # term = −(0.5·0.5·log 0.5 + 0.5·0.5·log 0.5) = 0.5 log 2, N_p = max(1, 0.5^1.8) = 1.
    x = torch.zeros(1, 1, 1, dtype=torch.float64)
    t = torch.zeros(1, 1, 1, dtype=torch.float64)
    assert adaptive_distillation_loss(x, t).item() == pytest.approx(0.125 * math.log(2), rel=1e-12)
    # paper form: KL = 0 when p = q
    assert adaptive_distillation_loss(x, t, form="paper").item() == pytest.approx(0.0, abs=1e-15)
    # T = 2 multiplies by 4; num_fg normaliser 4 divides by 4
    assert adaptive_distillation_loss(x, t, temperature=2.0).item() == pytest.approx(0.5 * math.log(2))
    assert adaptive_distillation_loss(x, t, normalizer="num_fg", num_fg=4).item() == pytest.approx(
        0.125 * math.log(2) / 4)


def test_adaptive_normaliser_by_hand():
    q = torch.tensor([0.5, 1.0, 0.0, 0.9], dtype=torch.float64)
    assert adaptive_normalizer(q).item() == pytest.approx(max(1.0, 0.5**1.8 + 1.0 + 0.0 + 0.9**1.8))
    assert adaptive_normalizer(torch.tensor([0.1, 0.2])).item() == 1.0  # max(1, ·)


@pytest.mark.parametrize("form", ["reference", "paper"])
@pytest.mark.parametrize("normalizer", ["adaptive", "num_fg"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_matches_independent_implementation(form, normalizer, beta):
    x, t, valid = _data()
    t[0, 0, 0], t[1, 2, 1] = 60.0, -60.0  # q exactly 1 / ~0 after sigmoid in fp64 → clamped
    kw = dict(gamma=2.0, alpha=0.5, beta=beta, theta=1.8, normalizer=normalizer, num_fg=3, T=1.0, form=form)
    expected = ref_loss(x.tolist(), t.tolist(), valid.tolist(), **kw)
    got = adaptive_distillation_loss(
        x, t, valid.unsqueeze(-1), gamma=2.0, alpha=0.5, beta_code=beta, theta=1.8,
        normalizer=normalizer, num_fg=3, form=form)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_other_hyperparameters_and_temperature():
    x, t, valid = _data(seed=3)
    kw = dict(gamma=1.5, alpha=0.25, beta=0.0, theta=2.0, normalizer="adaptive", T=2.0)
    expected = ref_loss(x.tolist(), t.tolist(), valid.tolist(), **kw)
    got = adaptive_distillation_loss(x, t, valid.unsqueeze(-1), gamma=1.5, alpha=0.25, theta=2.0, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_gradient_equals_reference_cuda_backward():
    """The weight is not detached: autograd equals the reference kernel's closed-form gradient."""
    x, t, valid = _data(seed=1)
    x.requires_grad_(True)
    for beta in (0.0, 0.3):
        loss = adaptive_distillation_loss(x, t, valid.unsqueeze(-1), beta_code=beta)
        (g,) = torch.autograd.grad(loss, x)
        n_p = adaptive_normalizer(torch.sigmoid(t))
        expected = ref_grad_cuda(x.detach(), torch.sigmoid(t), valid.unsqueeze(-1).double(),
                                 gamma=2.0, alpha=0.5, beta=beta, n_p=n_p)
        assert torch.allclose(g, expected, rtol=1e-9, atol=1e-12)
        # and it differs from the gradient with a detached weight
        assert not torch.allclose(g, _grad_detached_weight(x, t, valid, beta), rtol=1e-3)


def _grad_detached_weight(x, t, valid, beta):
    p_x = x.detach().clone().requires_grad_(True)
    q = torch.sigmoid(t).clamp(1e-6, 1 - 1e-6)
    logp, log1mp = torch.nn.functional.logsigmoid(p_x), torch.nn.functional.logsigmoid(-p_x)
    d = -(q * logp + (1 - q) * log1mp) + beta * (q * q.log() + (1 - q) * (1 - q).log())
    w = (1 - torch.exp(-d)).pow(2).detach()
    loss = (w * -(0.5 * q * logp + 0.5 * (1 - q) * log1mp) * valid.unsqueeze(-1)).sum() / adaptive_normalizer(torch.sigmoid(t))
    return torch.autograd.grad(loss, p_x)[0]


def test_gradcheck_float64():
    x, t, valid = _data(seed=2, N=1, R=3, K=2)
    x.requires_grad_(True)
    for form in ("reference", "paper"):
        assert torch.autograd.gradcheck(
            lambda a: adaptive_distillation_loss(a, t, valid.unsqueeze(-1), form=form, beta_code=0.2), (x,))
        assert torch.autograd.gradcheck(
            lambda a: adaptive_distillation_loss(a, t, valid.unsqueeze(-1), normalizer="num_fg", num_fg=2), (x,))


def test_q_exactly_zero_or_one_is_finite_fp32():
    x = torch.tensor([[[0.3, -2.0], [5.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[200.0, -200.0], [float("inf"), -float("inf")]]])  # σ = 1, 0, 1, 0 exactly
    assert torch.sigmoid(t).eq(1).sum() == 2 and torch.sigmoid(t).eq(0).sum() == 2
    for beta in (0.0, 1.0):
        loss = adaptive_distillation_loss(x, t, beta_code=beta)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        x.grad = None
    # value: same as the independent implementation with the clamp
    expected = ref_loss(x.tolist(), [[[200.0, -200.0], [800.0, -800.0]]], [[True, True]])
    assert adaptive_distillation_loss(x, t).item() == pytest.approx(expected, rel=1e-4)


def test_ignored_anchors_excluded_but_counted_in_adaptive_normaliser():
    x, t, valid = _data(seed=4)
    x.requires_grad_(True)
    loss = adaptive_distillation_loss(x, t, valid.unsqueeze(-1))
    (g,) = torch.autograd.grad(loss, x)
    assert (g[~valid] == 0).all() and (g[valid] != 0).any()
    # changing ignored logits (even to inf/NaN) changes nothing
    x2 = x.detach().clone()
    x2[~valid] = float("nan")
    assert adaptive_distillation_loss(x2, t, valid.unsqueeze(-1)).item() == pytest.approx(loss.item(), rel=1e-12)
    # N_p uses every element: dropping ignored elements' teacher mass changes the loss
    t2 = t.clone()
    t2[~valid] = -30.0
    assert adaptive_distillation_loss(x, t2, valid.unsqueeze(-1)).item() != pytest.approx(loss.item(), rel=1e-6)


def test_all_ignored_or_empty_gives_finite_zero():
    x, t, valid = _data()
    x.requires_grad_(True)
    loss = adaptive_distillation_loss(x, t, torch.zeros(2, 6, 1, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()
    empty = torch.zeros(2, 0, 3, requires_grad=True)
    out = adaptive_distillation_loss(empty, torch.zeros(2, 0, 3))
    out.backward()
    assert out.item() == 0.0


def test_bad_arguments():
    x, t, _ = _data()
    with pytest.raises(ValueError, match="shape"):
        adaptive_distillation_loss(x, t[:, :3])
    with pytest.raises(ValueError, match="num_fg"):
        adaptive_distillation_loss(x, t, normalizer="num_fg")
    with pytest.raises(ValueError, match="form"):
        adaptive_distillation_loss(x, t, form="nope")
    with pytest.raises(ValueError):
        ADL(normalizer="mean")


# ---- the distiller in a model --------------------------------------------------------------
def _build(tmp_path, **distiller_overrides):
    from conftest import TINY, save_random_weights
    from detectron2.config import LazyConfig, instantiate

    teacher = tmp_path / "teacher.pth"
    save_random_weights("configs/shapes/retinanet_teacher.py", str(teacher))
    cfg = LazyConfig.load("configs/shapes/retinanet_adl.py")
    cfg = LazyConfig.apply_overrides(cfg, [o for o in TINY if "test" not in o])
    cfg.model.teacher.weights = str(teacher)
    for k, v in distiller_overrides.items():
        setattr(cfg.model.distillers[0], k, v)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    return model, batch


@pytest.mark.parametrize("normalizer", ["adaptive", "num_fg"])
def test_distiller_in_retinanet(tmp_path, normalizer):
    from detectron2.utils.events import EventStorage

    model, batch = _build(tmp_path, normalizer=normalizer)
    model.train()
    adl = model.distillers[0]
    seen = {}
    orig = adl.forward

    def spy(student, teacher):
        seen["s"], seen["t"] = student, teacher
        return orig(student, teacher)

    adl.forward = spy
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) >= {"loss_cls", "loss_box_reg", "loss_kd_adl_cls"}
    loss = losses["loss_kd_adl_cls"]
    assert torch.isfinite(loss) and loss.item() > 0
    # the value, recomputed independently from the recorded tensors (all 5 levels)
    s, t = seen["s"], seen["t"]
    assert len(s.head.cls_logits) == 5 and t.head is not None
    xs = torch.cat(s.head.cls_logits, 1).detach().double()
    ts = torch.cat(t.head.cls_logits, 1).double()
    labels = s.head.gt_labels
    num_fg = int(((labels >= 0) & (labels != xs.shape[-1])).sum())
    assert (labels == -1).any(), "the tiny batch should have ignored anchors"
    valid = (labels >= 0)
    q = torch.sigmoid(ts)
    n_p = max(1.0, float(q.pow(1.8).sum())) if normalizer == "adaptive" else max(1.0, num_fg)
    qc = q.clamp(1e-6, 1 - 1e-6)
    logp, log1mp = torch.nn.functional.logsigmoid(xs), torch.nn.functional.logsigmoid(-xs)
    d = -(qc * logp + (1 - qc) * log1mp)
    el = (1 - torch.exp(-d)) ** 2 * -(0.5 * qc * logp + 0.5 * (1 - qc) * log1mp)
    expected = (el * valid.unsqueeze(-1)).sum() / n_p
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    # gradients reach the student, never the teacher
    loss.backward()
    assert model.head.cls_score.weight.grad is not None and model.head.cls_score.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad is not None
    for p in model.teacher.model.parameters():
        assert not p.requires_grad and p.grad is None
    # ADL does not touch the box branch
    assert model.head.bbox_pred.weight.grad is None or model.head.bbox_pred.weight.grad.abs().sum() == 0


def test_bind_rejects_mismatched_anchors(tmp_path):
    from detectron2.config import LazyConfig, instantiate

    from conftest import save_random_weights

    teacher = tmp_path / "teacher.pth"
    save_random_weights("configs/shapes/retinanet_teacher.py", str(teacher),
                        overrides=["model.anchor_generator.aspect_ratios=[1.0,2.0,0.5]"])
    cfg = LazyConfig.load("configs/shapes/retinanet_adl.py")
    cfg.model.teacher.weights = str(teacher)
    cfg.model.teacher.opts = ["model.anchor_generator.aspect_ratios=[1.0,2.0,0.5]"]
    with pytest.raises(ValueError, match="cell anchors .* student .* teacher"):
        instantiate(cfg.model)
