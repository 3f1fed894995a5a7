"""Property tests (hypothesis) for every KD loss function: finite for finite inputs over wide
ranges, non-negative where it should be, zero when the student equals the teacher (imitation
losses), invariant to the order of the rows, and gradients only into the student side."""
import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)
hypothesis = pytest.importorskip("hypothesis")

import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from d2kd.distill.adl import adaptive_distillation_loss  # noqa: E402
from d2kd.distill.chen2017 import bounded_regression_batch, bounded_regression_per_box, weighted_soft_ce  # noqa: E402
from d2kd.distill.gkd import decoupled_feature_loss, weighted_sigmoid_kd, weighted_softmax_kd  # noqa: E402
from d2kd.distill.lshfm import l2_loss, lsh_loss  # noqa: E402
from d2kd.distill.cwd import cwd_loss  # noqa: E402
from d2kd.distill.pkd import pkd_loss  # noqa: E402
from d2kd.distill.soft_label import sigmoid_kd_loss, softmax_kd_loss  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def pairs(draw, max_rows=6, max_cols=5):
    """(student, teacher, perm): two (R, C) float32 tensors at a random scale up to 1e3, a row
    permutation."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(2, max_cols))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, cols, generator=g) * scale
    t = torch.randn(rows, cols, generator=g) * scale
    perm = torch.randperm(rows, generator=g)
    return s, t, perm


temps = st.sampled_from([0.5, 1.0, 4.0, 10.0])


def _check(loss_fn, s, t, perm, *, rows=(), nonneg=True, zero_at_equal=False, order_invariant=True, atol=1e-4):
    """``loss_fn(student, teacher, *rows)``; ``rows``: other row-aligned inputs (targets)."""
    s = s.clone().requires_grad_(True)
    # Functions that detach the teacher themselves must leave it without gradient; for the others
    # the lambdas detach (in training the teacher runs under no_grad with frozen parameters,
    # checked in test_reliability_methods.py).
    t = t.clone().requires_grad_(True)
    out = loss_fn(s, t, *rows)
    assert out.dim() == 0 and torch.isfinite(out), out
    if nonneg:
        assert out >= -1e-4 * max(1.0, abs(float(out))), out
    out.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert t.grad is None or not t.grad.abs().sum(), "gradient reached the teacher"
    with torch.no_grad():
        if order_invariant:
            again = loss_fn(s[perm], t[perm], *[r[perm] for r in rows])
            assert torch.allclose(again, out, rtol=1e-4, atol=atol), (again, out)
        if zero_at_equal:
            same = loss_fn(s, s.detach().clone(), *rows)
            assert abs(float(same)) <= 1e-4 * max(1.0, float(s.abs().max()) ** 2), same


@SETTINGS
@given(pairs(), temps)
def test_softmax_kd(p, T):
    s, t, perm = p
    _check(lambda a, b: softmax_kd_loss(a, b.detach(), T), s, t, perm, zero_at_equal=True)


@SETTINGS
@given(pairs(), temps)
def test_sigmoid_kd(p, T):
    s, t, perm = p
    _check(lambda a, b: sigmoid_kd_loss(a, b.detach(), T).mean(), s, t, perm, zero_at_equal=True)


@SETTINGS
@given(pairs(), temps)
def test_gkd_weighted_kd(p, T):
    s, t, perm = p
    w = torch.rand(s.shape[0]) + 0.1
    for fn in (weighted_softmax_kd, weighted_sigmoid_kd):
        s_ = s.clone().requires_grad_(True)
        out = fn(s_, t, T, w)
        assert torch.isfinite(out) and out >= -1e-5
        out.backward()
        assert torch.isfinite(s_.grad).all()
        assert torch.allclose(fn(s[perm], t[perm], T, w[perm]), out.detach(), rtol=1e-4, atol=1e-5)
        assert abs(float(fn(s, s.clone(), T, w))) < 1e-4


@SETTINGS
@given(pairs(max_rows=3), st.integers(1, 4))
def test_fitnet(p, hw):
    """FeatureImitation's per-level term through the distiller (adapter = identity at s == t)."""
    from types import SimpleNamespace

    from torch import nn

    from d2kd.distill import FeatureImitation

    s, t, perm = p
    N, C = s.shape
    d = FeatureImitation(in_features=["p3"])
    d.adapters["p3"] = nn.Conv2d(C, C, 1)
    with torch.no_grad():
        d.adapters["p3"].weight.copy_(torch.eye(C)[:, :, None, None])
        d.adapters["p3"].bias.zero_()
    g = torch.Generator().manual_seed(N * 7 + C)
    fs = (s[:, :, None, None] * torch.rand(1, 1, hw, hw, generator=g)).requires_grad_(True)
    ft = t[:, :, None, None] * torch.rand(1, 1, hw, hw, generator=g)
    loss = d(SimpleNamespace(features={"p3": fs}), SimpleNamespace(features={"p3": ft}))["p3"]
    assert torch.isfinite(loss) and loss >= 0
    loss.backward()
    assert torch.isfinite(fs.grad).all() and all(p_.grad is not None for p_ in d.parameters())
    with torch.no_grad():
        again = d(SimpleNamespace(features={"p3": fs[perm]}), SimpleNamespace(features={"p3": ft[perm]}))["p3"]
        assert torch.allclose(again, loss, rtol=1e-4, atol=1e-6)
        same = d(SimpleNamespace(features={"p3": fs}), SimpleNamespace(features={"p3": fs.clone()}))["p3"]
        assert float(same) <= 1e-6 * max(1.0, float(fs.abs().max()) ** 2)


@SETTINGS
@given(pairs())
def test_lshfm_l2(p):
    s, t, perm = p
    _check(lambda a, b: l2_loss(a, b.detach()), s, t, perm, zero_at_equal=True)


@SETTINGS
@given(pairs(max_cols=8), st.sampled_from(["bce", "l2", "l1"]))
def test_lsh(p, kind):
    s, t, perm = p
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, s.shape[1], generator=g)
    b = torch.randn(16, generator=g)
    # bce: non-negative but not zero at s == t (BCE of a 0/1 target against its own logit)
    _check(lambda a, c: lsh_loss(a, c.detach(), w, b, kind), s, t, perm, zero_at_equal=kind != "bce")


@SETTINGS
@given(pairs(max_cols=4), st.sampled_from(["reference", "paper"]), st.sampled_from(["adaptive", 1.0]))
def test_adl(p, form, normalizer):
    s, t, perm = p
    _check(
        lambda a, b: adaptive_distillation_loss(a[None], b.detach()[None], form=form, normalizer=normalizer),
        s, t, perm,
    )


@SETTINGS
@given(pairs(), temps, st.sampled_from([0, -1]))
def test_chen2017_weighted_soft_ce(p, T, bg):
    s, t, perm = p
    bg_index = bg % s.shape[1]
    _check(lambda a, b: weighted_soft_ce(a, b, bg_index=bg_index, temperature=T), s, t, perm)


@SETTINGS
@given(pairs(max_cols=4), st.floats(0.0, 2.0))
def test_chen2017_bounded_regression(p, margin):
    s, t, perm = p
    s, t = s[:, :4] if s.shape[1] >= 4 else s, t[:, :4] if t.shape[1] >= 4 else t
    # Targets nearer the teacher: l_s = 0.49·d² > l_t = 0.09·d², away from the bounded loss's
    # on/off boundary (at y = (s + t) / 2, l_s == l_t and float summation order decides).
    y = 0.3 * s + 0.7 * t
    _check(lambda a, b, yy: bounded_regression_batch(a, b, yy, margin), s, t, perm, rows=(y,))
    _check(lambda a, b, yy: bounded_regression_per_box(a, b, yy, margin).sum(), s, t, perm, rows=(y,))
    # a student that matches the targets exactly costs nothing
    assert float(bounded_regression_per_box(y, t, y, margin).sum()) == 0.0


@SETTINGS
@given(pairs(max_rows=3, max_cols=3), st.integers(0, 2**31 - 1))
def test_gkd_decoupled_feature_loss(p, seed):
    s, t, perm = p
    g = torch.Generator().manual_seed(seed)
    N, C = s.shape
    a = (s[:, :, None, None] * torch.randn(1, 1, 3, 4, generator=g)).requires_grad_(True)
    b = t[:, :, None, None] * torch.randn(1, 1, 3, 4, generator=g)
    mask = torch.rand(N, 3, 4, generator=g) * (torch.rand(N, 3, 4, generator=g) > 0.5)
    fg, bg = decoupled_feature_loss(a, b, mask)
    assert torch.isfinite(fg) and torch.isfinite(bg) and fg >= 0 and bg >= 0
    (fg + bg).backward()
    assert torch.isfinite(a.grad).all()
    fg2, bg2 = decoupled_feature_loss(a.detach()[perm], b[perm], mask[perm])
    assert torch.allclose(fg2, fg, rtol=1e-4, atol=1e-6) and torch.allclose(bg2, bg, rtol=1e-4, atol=1e-6)
    z = decoupled_feature_loss(b, b.clone(), mask)
    assert float(z[0]) == 0.0 and float(z[1]) == 0.0


def _maps(p, hw):
    """(N, C, hw, hw) student and teacher maps from a row pair: each row's values spread over the
    locations by a fixed random pattern (so channels vary spatially); perm reorders images."""
    s, t, perm = p
    g = torch.Generator().manual_seed(s.shape[0] * 7 + s.shape[1])
    pattern = torch.rand(1, s.shape[1], hw, hw, generator=g) + 0.1
    return s[:, :, None, None] * pattern, t[:, :, None, None] * pattern.flip(-1), perm


@SETTINGS
@given(pairs(), st.sampled_from([1, 3]))
def test_pkd(p, hw):
    s, t, perm = _maps(p, hw)
    _check(lambda a, b: pkd_loss(a, b.detach()), s, t, perm, zero_at_equal=True)


@SETTINGS
@given(pairs(), temps, st.sampled_from([2, 4]))
def test_cwd(p, tau, hw):
    s, t, perm = _maps(p, hw)
    _check(lambda a, b: cwd_loss(a, b.detach(), tau=tau), s, t, perm, zero_at_equal=True)


def _bound(distiller, channels, hw):
    from types import SimpleNamespace

    from detectron2.layers import ShapeSpec

    shapes = {"p3": ShapeSpec(channels=channels, stride=8)}
    student = SimpleNamespace(backbone=SimpleNamespace(output_shape=lambda: shapes))
    distiller.bind(student, SimpleNamespace(output_shape=lambda: shapes, model=student, layout=lambda: None))
    return distiller


def _records(fs, ft, boxes):
    from types import SimpleNamespace

    from detectron2.structures import Boxes, ImageList, Instances

    n, _, h, w = fs.shape
    images = ImageList(torch.zeros(n, 3, 8 * h, 8 * w), [(8 * h, 8 * w)] * n)
    gts = []
    for i in range(n):
        inst = Instances((8 * h, 8 * w))
        inst.gt_boxes, inst.gt_classes = Boxes(boxes[i]), torch.zeros(len(boxes[i]), dtype=torch.long)
        gts.append(inst)
    return (SimpleNamespace(features={"p3": fs}, images=images, gt_instances=gts),
            SimpleNamespace(features={"p3": ft}, images=images, gt_instances=gts))


@SETTINGS
@given(pairs(), st.sampled_from([2, 4]))
def test_mgd_and_fgd_through_the_distiller(p, hw):
    """Finite, non-negative terms at any scale, a gradient into the student and the methods' own
    modules only, images without GT boxes allowed (FGD)."""
    from d2kd.distill import FGD, MGD

    s, t, _ = _maps(p, hw)
    n = s.shape[0]
    boxes = [torch.tensor([[0.0, 0.0, 4.0 * hw, 4.0 * hw]]) if i % 2 == 0 else torch.zeros(0, 4) for i in range(n)]
    for d in (_bound(MGD(in_features=["p3"]), s.shape[1], hw), _bound(FGD(in_features=["p3"]), s.shape[1], hw)):
        fs = s.clone().requires_grad_(True)
        ft = t.clone().requires_grad_(True)
        terms = d(*_records(fs, ft, boxes))
        assert terms and all(torch.isfinite(v) and v >= 0 for v in terms.values()), terms
        sum(terms.values()).backward()
        assert fs.grad is not None and torch.isfinite(fs.grad).all() and ft.grad is None, type(d).__name__


def test_every_distiller_has_a_property_test():
    """A new method must add its loss functions here."""
    from d2kd.distill import DISTILLER_REGISTRY

    covered = {"FeatureImitation", "SoftLabelKD", "FGFI", "LSHFM", "ADL", "GKD", "Chen2017", "PKD", "CWD", "MGD", "FGD"}
    registered = {name for name, _ in DISTILLER_REGISTRY}
    assert registered <= covered, registered - covered
