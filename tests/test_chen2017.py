"""Chen et al. 2017 loss terms (d2kd.distill.chen2017) against hand-computed numbers and against a
transcription of the SSD-KD reference (SsisyphusTao/SSD-Knowledge-Distillation, branch mbv2-lite,
nets/multibox_loss.py) in plain torch."""
import math

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402

from d2kd.distill.chen2017 import (  # noqa: E402
    Chen2017,
    bounded_regression_batch,
    bounded_regression_per_box,
    weighted_soft_ce,
)
from d2kd.records import DetectorRecord, ROIRecord, RPNRecord, SSDRecord, StageLayout  # noqa: E402

torch.set_num_threads(1)


# ---- the reference, transcribed (only .cuda() removed) ------------------------------------------
def ref_weighted_KL_div(ps, qt, pos_w, neg_w):
    eps = 1e-10
    ps = ps + eps
    qt = qt + eps
    log_p = qt * torch.log(ps)
    log_p[:, 0] *= neg_w
    log_p[:, 1:] *= pos_w
    return -torch.sum(log_p)


def ref_bounded_regression_loss(Rs, Rt, gt, m, v=0.5):
    loss = F.mse_loss(Rs, gt)
    if loss + m > F.mse_loss(Rt, gt):
        return loss * v
    else:
        loss = loss.clone()
        loss.fill_(0)
        return loss


def ref_multibox_kd(conf_data, loc_data, confT, locT, conf_t, loc_t, pos, neg, u=0.5, T=1.0, m=0.0, lmda=1.0):
    """MultiBoxLoss.forward's distillation branch, from the point where matching and mining are done."""
    num_classes = conf_data.shape[-1]
    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    loc_p = loc_data[pos_idx].view(-1, 4)
    loc_tt = loc_t[pos_idx].view(-1, 4)
    loss_l = F.smooth_l1_loss(loc_p, loc_tt, reduction="sum")
    locT_p = locT[pos_idx].view(-1, 4)
    loss_br = ref_bounded_regression_loss(loc_p, locT_p, loc_tt, m)
    loss_reg = loss_l + loss_br
    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, num_classes)
    targets_weighted = conf_t[(pos + neg).gt(0)]
    loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")
    N = pos.long().sum()
    confT_p = confT[(pos_idx + neg_idx).gt(0)].view(-1, num_classes)
    conf_p = F.softmax(conf_p / T, dim=1)
    confT_p = F.softmax(confT_p / T, dim=1)
    loss_soft = ref_weighted_KL_div(conf_p, confT_p, 1.0, 1.5)
    loss_hint = F.mse_loss(conf_data, confT)
    loss_cls = u * loss_c + (1 - u) * loss_soft
    return (loss_cls + lmda * loss_reg) / N + loss_hint * 0.5, loss_c / N, loss_l / N


# ---- weighted soft cross-entropy ------------------------------------------------------------------
def test_weighted_soft_ce_by_hand_and_background_index():
    s = torch.zeros(1, 3)  # p_s = 1/3 each
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # p_t = (1/2, 1/4, 1/4)
    # SSD: background = column 0 gets w_bg = 1.5
    assert weighted_soft_ce(s, t, bg_index=0).item() == pytest.approx((1.5 * 0.5 + 0.25 + 0.25) * math.log(3), rel=1e-6)
    # Detectron2 ROI heads: background = LAST column
    assert weighted_soft_ce(s, t, bg_index=2).item() == pytest.approx((0.5 + 0.25 + 1.5 * 0.25) * math.log(3), rel=1e-6)
    assert weighted_soft_ce(s, t, bg_index=0, w_bg=1.0).item() == pytest.approx(math.log(3), rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_weighted_soft_ce_matches_reference_with_temperature(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=g) * 3, torch.randn(7, 5, generator=g) * 3
    ref = ref_weighted_KL_div(F.softmax(s / T, 1), F.softmax(t / T, 1), 1.0, 1.5)
    assert weighted_soft_ce(s, t, bg_index=0, temperature=T).item() == pytest.approx(ref.item(), rel=1e-6)
    # by hand for one row at T: -Σ w (p_t + ε) log(p_s + ε)
    ps, pt = F.softmax(s[0] / T, 0), F.softmax(t[0] / T, 0)
    w = torch.tensor([1.5, 1, 1, 1, 1])
    hand = -sum(w[c] * (pt[c] + 1e-10) * math.log(ps[c] + 1e-10) for c in range(5))
    assert weighted_soft_ce(s[:1], t[:1], bg_index=0, temperature=T).item() == pytest.approx(float(hand), rel=1e-6)


def test_weighted_soft_ce_empty_is_finite_zero_with_graph():
    s = torch.zeros(0, 4, requires_grad=True)
    out = weighted_soft_ce(s, torch.zeros(0, 4), bg_index=0)
    assert out.item() == 0.0 and out.requires_grad


# ---- bounded regression -----------------------------------------------------------------------------
def test_bounded_regression_batch_by_hand_and_margin():
    y = torch.zeros(1, 4)
    rs = torch.tensor([[1.0, 0, 0, 0]])  # ℓ_s = 1/4
    better_teacher = torch.tensor([[0.5, 0, 0, 0]])  # ℓ_t = 1/16 -> active: 0.5 * 1/4
    worse_teacher = torch.tensor([[2.0, 0, 0, 0]])  # ℓ_t = 1 -> inactive
    assert bounded_regression_batch(rs, better_teacher, y, 0.0, 0.5).item() == pytest.approx(0.125)
    assert bounded_regression_batch(rs, worse_teacher, y, 0.0, 0.5).item() == 0.0
    assert bounded_regression_batch(rs, worse_teacher, y, 0.8, 0.5).item() == pytest.approx(0.125)  # 0.25+0.8 > 1
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a, b, c = (torch.randn(6, 4, generator=g) for _ in range(3))
        for m in (0.0, 0.3):
            ref = ref_bounded_regression_loss(a, b, c, m)
            assert bounded_regression_batch(a, b, c, m, 0.5).item() == pytest.approx(ref.item(), rel=1e-6)


def test_bounded_regression_per_box_by_hand_and_margin():
    y = torch.zeros(2, 4)
    rs = torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0, 0]])  # ||.||² = 1, 0.25
    rt = torch.tensor([[0.5, 0, 0, 0], [1.0, 0, 0, 0]])  # ||.||² = 0.25, 1
    assert bounded_regression_per_box(rs, rt, y, 0.0).tolist() == [1.0, 0.0]
    assert bounded_regression_per_box(rs, rt, y, 0.8).tolist() == [1.0, 0.25]  # 0.25 + 0.8 > 1


def test_bounded_regression_empty_and_gradients():
    rs = torch.zeros(0, 4, requires_grad=True)
    out = bounded_regression_batch(rs, torch.zeros(0, 4), torch.zeros(0, 4))
    assert out.item() == 0.0 and out.requires_grad
    rs = torch.tensor([[1.0, 2.0, 0, 0]], requires_grad=True)
    rt = torch.zeros(1, 4, requires_grad=True)  # a teacher tensor that would take a gradient
    bounded_regression_per_box(rs, rt, torch.zeros(1, 4)).sum().backward()
    assert rs.grad.tolist() == [[2.0, 4.0, 0.0, 0.0]] and rt.grad is None


# ---- the SSD terms ----------------------------------------------------------------------------------
def _ssd_records(seed=0, N=2, P=30, C=4, num_pos_per_image=(3, 2), with_features=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(N, P, dtype=torch.int64)
    for i, k in enumerate(num_pos_per_image):
        labels[i, :k] = torch.randint(1, C, (k,), generator=g)
    pos = labels > 0
    neg = torch.zeros(N, P, dtype=torch.bool)
    for i, k in enumerate(num_pos_per_image):
        neg[i, P - 3 * k:] = True if k else False
    priors = torch.rand(P, 4, generator=g)
    common = dict(priors=priors, level_sizes=[(5, 1)], num_priors_per_location=[6])
    s = SSDRecord(logits=torch.randn(N, P, C, generator=g).requires_grad_(), deltas=torch.randn(N, P, 4, generator=g).requires_grad_(),
                  labels=labels, targets=torch.randn(N, P, 4, generator=g), pos_mask=pos, neg_mask=neg,
                  num_pos=int(pos.sum()), **common)
    t = SSDRecord(logits=torch.randn(N, P, C, generator=g), deltas=torch.randn(N, P, 4, generator=g), **common)
    img = ImageList(torch.zeros(N, 3, 8, 8), [(8, 8)] * N)
    sf = {"expand7": torch.randn(N, 3, 4, 4, generator=g, requires_grad=True)} if with_features else {}
    tf = {"conv4_3": torch.randn(N, 5, 4, 4, generator=g)} if with_features else {}
    return (DetectorRecord(images=img, features=sf, ssd=s),
            DetectorRecord(images=img, features=tf, ssd=t))


# What bind() takes from the student's record layout, for distillers built without models.
SSD_STAGE = StageLayout("ssd", "loss_cls", "loss_box_reg", (0.1, 0.2), "anchors")
RPN_STAGE = StageLayout("rpn", "loss_rpn_cls", "loss_rpn_loc", (1.0, 1.0, 1.0, 1.0), "anchors")
ROI_STAGE = StageLayout("roi", "loss_cls", "loss_box_reg", (10.0, 10.0, 5.0, 5.0), "shared_boxes")


def _ssd_distiller(**kw):
    d = Chen2017(**kw)
    d._stages = [SSD_STAGE]
    d.variant = d.variant or "ssd_repo"
    if d.variant == "paper":
        d._hints = {"hint": (d.student_hint, d.teacher_hint)}
    return d


@pytest.mark.parametrize("T,m,mu,lam", [(1.0, 0.0, 0.5, 1.0), (2.0, 0.5, 0.3, 2.0)])
def test_ssd_repo_total_equals_reference_multibox_loss(T, m, mu, lam):
    from d2kd.modeling.meta_arch.ssd import multibox_loss

    student, teacher = _ssd_records()
    s, t = student.ssd, teacher.ssd
    d = _ssd_distiller(temperature=T, margin=m, mu=mu, lam=lam)
    terms = d(student, teacher)
    assert set(terms) == {"soft", "bounded", "hint"}
    hard = multibox_loss(s.logits, s.deltas, s.labels, s.targets, s.neg_mask)
    scales = d.detector_loss_scales()
    assert scales["loss_cls"] == mu and scales.get("loss_box_reg", 1.0) == lam
    ours = hard["loss_cls"] * scales["loss_cls"] + hard["loss_box_reg"] * scales.get("loss_box_reg", 1.0) + sum(terms.values())
    ref, ref_c, ref_l = ref_multibox_kd(s.logits, s.deltas, t.logits, t.deltas, s.labels, s.targets, s.pos_mask,
                                       s.neg_mask, u=mu, T=T, m=m, lmda=lam)
    assert hard["loss_cls"].item() == pytest.approx(ref_c.item(), rel=1e-5)
    assert hard["loss_box_reg"].item() == pytest.approx(ref_l.item(), rel=1e-5)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # the hint alone: 0.5 * mean over all priors x classes
    assert terms["hint"].item() == pytest.approx(0.5 * ((s.logits - t.logits) ** 2).mean().item(), rel=1e-6)


def test_ssd_terms_normalised_by_batch_num_pos_and_grads_reach_only_student():
    student, teacher = _ssd_records()
    s, t = student.ssd, teacher.ssd
    t.logits.requires_grad_()  # a teacher tensor that could take a gradient must not get one
    terms = _ssd_distiller()(student, teacher)
    sel = s.pos_mask | s.neg_mask
    soft_sum = weighted_soft_ce(s.logits[sel], t.logits[sel], bg_index=0)
    assert terms["soft"].item() == pytest.approx(0.5 * soft_sum.item() / 5, rel=1e-6)  # N_pos = 3 + 2
    sum(terms.values()).backward()
    assert s.logits.grad is not None and s.deltas.grad is not None and t.logits.grad is None


def test_ssd_no_positives_gives_finite_zeros():
    student, teacher = _ssd_records(num_pos_per_image=(0, 0))
    terms = _ssd_distiller()(student, teacher)
    assert terms["soft"].item() == 0.0 and terms["bounded"].item() == 0.0
    assert math.isfinite(terms["hint"].item()) and terms["hint"].item() > 0
    terms = _ssd_distiller(variant="paper", student_hint="expand7", teacher_hint="conv4_3")
    terms.adapters["hint"] = nn.Conv2d(3, 5, 1)
    student, teacher = _ssd_records(num_pos_per_image=(0, 0), with_features=True)
    out = terms(student, teacher)
    assert all(math.isfinite(v.item()) for v in out.values()) and out["bounded"].item() == 0.0


def test_ssd_paper_variant_terms_by_independent_route():
    student, teacher = _ssd_records(with_features=True, seed=3)
    s, t = student.ssd, teacher.ssd
    d = _ssd_distiller(variant="paper", student_hint="expand7", teacher_hint="conv4_3", margin=0.1)
    d.adapters["hint"] = nn.Conv2d(3, 5, 1)
    terms = d(student, teacher)
    n_pos = int(s.pos_mask.sum())
    total = 0.0
    for i, j in s.pos_mask.nonzero().tolist():  # loop: per-box L_b
        es = sum((s.deltas[i, j, k].item() - s.targets[i, j, k].item()) ** 2 for k in range(4))
        et = sum((t.deltas[i, j, k].item() - s.targets[i, j, k].item()) ** 2 for k in range(4))
        total += es if es + 0.1 > et else 0.0
    assert terms["bounded"].item() == pytest.approx(0.5 * total / n_pos, rel=1e-5)
    a = d.adapters["hint"](student.features["expand7"])
    assert terms["hint"].item() == pytest.approx(0.5 * ((a - teacher.features["conv4_3"]) ** 2).mean().item(), rel=1e-6)
    sum(terms.values()).backward()
    assert d.adapters["hint"].weight.grad is not None and student.features["expand7"].grad is not None


def test_variant_validation():
    with pytest.raises(ValueError, match="variant"):
        Chen2017(variant="nope")
    with pytest.raises(ValueError, match="mu"):
        Chen2017(mu=1.5)


# ---- the Faster R-CNN terms ---------------------------------------------------------------------------
def _rcnn_distiller(**kw):
    d = Chen2017(variant="paper", **kw)
    d._stages = [st for st, on in ((RPN_STAGE, d.use_rpn), (ROI_STAGE, d.use_roi)) if on]
    d._prefix_terms = True
    d.hint_features, d._hints = ["p2"], {"p2": ("p2", "p2")}
    d.adapters["p2"] = nn.Conv2d(3, 4, 1)
    return d


def _rcnn_records(seed=0, K=3, no_fg=False):
    g = torch.Generator().manual_seed(seed)
    N, R1, R2 = 2, 6, 4
    anchors = [Boxes(torch.rand(R1, 2, generator=g).repeat(1, 2) * 20 + torch.tensor([0, 0, 10.0, 10.0])),
               Boxes(torch.rand(R2, 2, generator=g).repeat(1, 2) * 20 + torch.tensor([0, 0, 20.0, 20.0]))]
    R = R1 + R2
    gt_labels = [torch.tensor([1, 0, -1, 0, 1, -1, 0, 0, 1, -1]), torch.tensor([0, -1, -1, 1, 0, 0, -1, -1, 0, 1])]
    if no_fg:
        gt_labels = [torch.where(x == 1, torch.zeros_like(x), x) for x in gt_labels]
    gt_boxes = [torch.rand(R, 2, generator=g).repeat(1, 2) * 20 + torch.tensor([0, 0, 15.0, 15.0]) for _ in range(N)]

    def rpn(grad):
        lg = [torch.randn(N, R1, generator=g), torch.randn(N, R2, generator=g)]
        dl = [torch.randn(N, R1, 4, generator=g), torch.randn(N, R2, 4, generator=g)]
        if grad:
            lg, dl = [x.requires_grad_() for x in lg], [x.requires_grad_() for x in dl]
        return RPNRecord(anchors=anchors, objectness_logits=lg, anchor_deltas=dl, gt_labels=gt_labels, gt_boxes=gt_boxes,
                         box_coder=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)), batch_size_per_image=16)

    props = []
    for n, classes in enumerate(([0, 3, 2, 3], [3, 1, 3])):
        if no_fg:
            classes = [K] * len(classes)
        p = Instances((64, 64))
        p.proposal_boxes = Boxes(torch.rand(len(classes), 2, generator=g).repeat(1, 2) * 30 + torch.tensor([0, 0, 12.0, 12.0]))
        p.gt_boxes = Boxes(torch.rand(len(classes), 2, generator=g).repeat(1, 2) * 30 + torch.tensor([0, 0, 14.0, 14.0]))
        p.gt_classes = torch.tensor(classes)
        props.append(p)
    Rr = 7

    def roi(grad):
        sc, de = torch.randn(Rr, K + 1, generator=g), torch.randn(Rr, 4 * K, generator=g)
        if grad:
            sc, de = sc.requires_grad_(), de.requires_grad_()
        return ROIRecord(proposals=props, box_features=torch.zeros(Rr, 2), scores=sc, deltas=de,
                         box_coder=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)))

    img = ImageList(torch.zeros(N, 3, 8, 8), [(8, 8)] * N)
    s = DetectorRecord(images=img, features={"p2": torch.randn(N, 3, 4, 4, generator=g, requires_grad=True)}, rpn=rpn(True), roi=roi(True))
    t = DetectorRecord(images=img, features={"p2": torch.randn(N, 4, 4, 4, generator=g)}, rpn=rpn(False), roi=roi(False))
    return s, t


def test_rcnn_terms_by_loop():
    s, t = _rcnn_records()
    d = _rcnn_distiller(margin=0.05)
    out = d(s, t)
    assert set(out) == {"rpn_soft", "rpn_bounded", "roi_soft", "roi_bounded", "hint"}
    # RPN soft: 2-class [1-σ, σ] with w_bg 1.5 on index 0, over sampled anchors, / (16 * 2)
    sl, tl = torch.cat(s.rpn.objectness_logits, 1), torch.cat(t.rpn.objectness_logits, 1)
    sd, td = torch.cat(s.rpn.anchor_deltas, 1), torch.cat(t.rpn.anchor_deltas, 1)
    anchors = torch.cat([a.tensor for a in s.rpn.anchors])
    soft = bnd = 0.0
    for n in range(2):
        for r in range(10):
            lab = int(s.rpn.gt_labels[n][r])
            if lab < 0:
                continue
            ps1, pt1 = torch.sigmoid(sl[n, r]).item(), torch.sigmoid(tl[n, r]).item()
            soft += -(1.5 * (1 - pt1 + 1e-10) * math.log(1 - ps1 + 1e-10) + (pt1 + 1e-10) * math.log(ps1 + 1e-10))
            if lab == 1:
                y = s.rpn.box_coder.get_deltas(anchors[r:r + 1], s.rpn.gt_boxes[n][r:r + 1])[0]
                es, et = ((sd[n, r] - y) ** 2).sum().item(), ((td[n, r] - y) ** 2).sum().item()
                bnd += es if es + 0.05 > et else 0.0
    assert out["rpn_soft"].item() == pytest.approx(0.5 * soft / 32, rel=1e-5)
    assert out["rpn_bounded"].item() == pytest.approx(0.5 * bnd / 32, rel=1e-5)
    # ROI: background LAST (index K = 3), mean over the 7 sampled proposals; GT-class deltas
    K = 3
    classes = torch.cat([p.gt_classes for p in s.roi.proposals])
    boxes = torch.cat([p.proposal_boxes.tensor for p in s.roi.proposals])
    gts = torch.cat([p.gt_boxes.tensor for p in s.roi.proposals])
    soft = bnd = 0.0
    for r in range(7):
        ps, pt = F.softmax(s.roi.scores[r], 0), F.softmax(t.roi.scores[r], 0)
        soft += -sum((1.5 if c == K else 1.0) * (pt[c].item() + 1e-10) * math.log(ps[c].item() + 1e-10) for c in range(K + 1))
        c = int(classes[r])
        if c < K:
            y = s.roi.box_coder.get_deltas(boxes[r:r + 1], gts[r:r + 1])[0]
            es = ((s.roi.deltas[r, 4 * c:4 * c + 4] - y) ** 2).sum().item()
            et = ((t.roi.deltas[r, 4 * c:4 * c + 4] - y) ** 2).sum().item()
            bnd += es if es + 0.05 > et else 0.0
    assert out["roi_soft"].item() == pytest.approx(0.5 * soft / 7, rel=1e-5)
    assert out["roi_bounded"].item() == pytest.approx(0.5 * bnd / 7, rel=1e-5)
    a = d.adapters["p2"](s.features["p2"])
    assert out["hint"].item() == pytest.approx(0.5 * ((a - t.features["p2"]) ** 2).mean().item(), rel=1e-6)
    sum(out.values()).backward()
    assert all(x.grad is not None for x in s.rpn.objectness_logits + s.rpn.anchor_deltas)
    assert s.roi.scores.grad is not None and s.roi.deltas.grad is not None and d.adapters["p2"].weight.grad is not None


def test_rcnn_no_foreground_is_finite():
    s, t = _rcnn_records(no_fg=True)
    out = _rcnn_distiller()(s, t)
    assert out["rpn_bounded"].item() == 0.0 and out["roi_bounded"].item() == 0.0
    assert all(math.isfinite(v.item()) for v in out.values())
    sum(out.values()).backward()


def test_rcnn_detector_loss_scales():
    d = _rcnn_distiller()
    assert d.detector_loss_scales() == {"loss_rpn_cls": 0.5, "loss_cls": 0.5}
    d = _rcnn_distiller(lam=2.0, mu=0.25)
    assert d.detector_loss_scales() == {"loss_rpn_cls": 0.25, "loss_cls": 0.25, "loss_rpn_loc": 2.0, "loss_box_reg": 2.0}
