import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import math  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
from d2kd.distill import LSHFM  # noqa: E402
from d2kd.distill import lshfm as lshfm_module  # noqa: E402
from d2kd.records import ClassifierLayout, DenseHeadRecord, DetectorRecord, RecordLayout, ROIRecord  # noqa: E402
from feature_kd_helpers import train_two_steps  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
# Fake models for bind(): what LSHFM reads of a model is its record layout (record_layout(student),
# teacher.layout()); the fakes carry one and the fixture below hands it to the method.
def _fake(parts, classifier):
    return RecordLayout(parts=parts, feature_shapes={}, classifier=classifier)


@pytest.fixture(autouse=True)
def _layouts_of_fakes(monkeypatch):
    real = lshfm_module.record_layout
    monkeypatch.setattr(lshfm_module, "record_layout", lambda m: m.fake_layout if hasattr(m, "fake_layout") else real(m))


def fake_roi_models(d_s, d_t, cls_std=0.05, num_classes=3):
    gen = torch.Generator().manual_seed(123)
    cls = nn.Linear(d_t, num_classes + 1)
    with torch.no_grad():
        cls.weight.copy_(torch.randn(num_classes + 1, d_t, generator=gen) * cls_std)

    def layout(d, weight=None):
        return _fake(["features", "rpn", "roi"], ClassifierLayout(
            part="roi", probability="softmax", num_classes=num_classes, pairing="shared_boxes",
            input_form="rows", input_channels=d, weight=weight))

    student = SimpleNamespace(fake_layout=layout(d_s))
    t_layout = layout(d_t, cls.weight)
    teacher = SimpleNamespace(model=SimpleNamespace(), layout=lambda: t_layout)
    return student, teacher, cls.weight


def fake_head_models(c_s, c_t, num_anchors=2, num_classes=3):
    s_score = nn.Conv2d(c_s, num_anchors * num_classes, 3, padding=1)
    t_score = nn.Conv2d(c_t, num_anchors * num_classes, 3, padding=1)

    def layout(score):
        return _fake(["features", "head"], ClassifierLayout(
            part="head", probability="sigmoid", num_classes=num_classes, pairing="anchors",
            input_form="maps", input_channels=score.in_channels, input_kernel=3, weight=score.weight))

    student = SimpleNamespace(fake_layout=layout(s_score))
    t_layout = layout(t_score)
    teacher = SimpleNamespace(model=SimpleNamespace(), layout=lambda: t_layout)
    return student, teacher, t_score.weight


def roi_records(f_s, f_t):
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    s = DetectorRecord(images=images, features={}, roi=ROIRecord(proposals=[], box_features=f_s, scores=None, deltas=None))
    t = DetectorRecord(images=images, features={}, roi=ROIRecord(proposals=[], box_features=f_t, scores=None, deltas=None))
    return s, t


def direct_bce_with_logits(z, y):
    """max(z, 0) − z·y + log(1 + exp(−|z|)), element by element."""
    total = 0.0
    for zi, yi in zip(z.flatten().tolist(), y.flatten().tolist()):
        total += max(zi, 0.0) - zi * yi + math.log1p(math.exp(-abs(zi)))
    return total / z.numel()


# ----------------------------------------------------------------------------- hash layer
def test_hash_layer_is_a_seeded_buffer_with_teacher_classifier_std():
    student, teacher, cls_w = fake_roi_models(16, 16, cls_std=0.05)
    d = LSHFM(mode="lshl2")
    d.bind(student, teacher)
    assert d.hash_weight.shape == (64, 16) and d.hash_bits == 64  # N_h = 4·D
    assert torch.all(d.hash_bias == 0)
    assert d.std == pytest.approx(float(cls_w.std()))
    gen = torch.Generator().manual_seed(0)
    assert torch.allclose(d.hash_weight, torch.randn(64, 16, generator=gen) * float(cls_w.std()))
    names = [n for n, _ in d.named_parameters()]
    assert "hash_weight" not in names and "hash_bias" not in names
    assert {"hash_weight", "hash_bias"} <= set(d.state_dict())
    # deterministic from the seed, independent of the global RNG
    torch.manual_seed(999)
    d2 = LSHFM(mode="lsh")
    d2.bind(student, teacher)
    assert torch.equal(d.hash_weight, d2.hash_weight)
    d3 = LSHFM(mode="lsh", seed=1)
    d3.bind(student, teacher)
    assert not torch.equal(d.hash_weight, d3.hash_weight)


def test_l2_mode_has_no_hash_and_defaults():
    student, teacher, _ = fake_roi_models(16, 16)
    d = LSHFM(mode="l2")
    d.bind(student, teacher)
    assert not hasattr(d, "hash_weight")
    assert LSHFM().weight == 7.0 and LSHFM().mode == "lshl2"
    with pytest.raises(ValueError, match="mode"):
        LSHFM(mode="kl")


def test_retinanet_default_hash_bits_4096():
    student, teacher, w = fake_head_models(8, 8)
    d = LSHFM(mode="lsh")
    d.bind(student, teacher)
    assert d.feature_dim == 72 and d.hash_weight.shape == (4096, 72)
    assert d.std == pytest.approx(float(w.std()))


def test_adapters_when_dims_differ():
    student, teacher, _ = fake_roi_models(8, 16)
    d = LSHFM(mode="l2")
    d.bind(student, teacher)
    assert isinstance(d.adapter, nn.Linear) and (d.adapter.in_features, d.adapter.out_features) == (8, 16)
    student, teacher, _ = fake_roi_models(16, 16)
    d = LSHFM(mode="l2")
    d.bind(student, teacher)
    assert d.adapter is None
    student, teacher, _ = fake_head_models(4, 8)
    d = LSHFM(mode="lsh")
    d.bind(student, teacher)
    assert isinstance(d.adapter, nn.Conv2d) and d.adapter.kernel_size == (1, 1) and d.feature_dim == 72
    student, teacher, _ = fake_roi_models(8, 16)
    with pytest.raises(ValueError, match="student box-head output dim 8 but teacher 16"):
        LSHFM(adapter="never").bind(student, teacher)


# ----------------------------------------------------------------------------- roi losses
@pytest.mark.parametrize("mode", ["l2", "lsh", "lshl2"])
def test_roi_losses_match_a_direct_computation(mode):
    torch.manual_seed(0)
    student, teacher, _ = fake_roi_models(6, 6)
    d = LSHFM(mode=mode)
    d.bind(student, teacher)
    f_s = torch.relu(torch.randn(5, 6))
    f_t = torch.relu(torch.randn(5, 6))
    out = d(*roi_records(f_s, f_t))
    assert set(out) == {"l2": {"l2"}, "lsh": {"lsh"}, "lshl2": {"l2", "lsh"}}[mode]
    if "l2" in out:
        direct = sum((a - b) ** 2 for a, b in zip(f_s.flatten().tolist(), f_t.flatten().tolist())) / 30
        assert out["l2"].item() == pytest.approx(direct, rel=1e-6)
    if "lsh" in out:
        W = d.hash_weight
        z = torch.stack([torch.stack([(W[k] * f_s[r]).sum() for k in range(W.shape[0])]) for r in range(5)])
        y = torch.stack([torch.stack([((W[k] * f_t[r]).sum() > 0).float() for k in range(W.shape[0])]) for r in range(5)])
        assert out["lsh"].item() == pytest.approx(direct_bce_with_logits(z, y), rel=1e-5)
    # β = 7 applies to every term (β·(L2 + LSH) for lshl2)
    assert d.loss_factor(0) == 7.0


def test_lsh_targets_come_from_the_teacher():
    student, teacher, _ = fake_roi_models(6, 6)
    d = LSHFM(mode="lsh")
    d.bind(student, teacher)
    f_t = torch.randn(4, 6)
    # a student equal to the teacher gets a lower loss than one equal to −teacher
    same = d(*roi_records(f_t.clone(), f_t))["lsh"]
    flipped = d(*roi_records(-f_t, f_t))["lsh"]
    assert same < flipped
    # gradients flow to the student features, not through the targets
    f_s = torch.randn(4, 6, requires_grad=True)
    f_t2 = torch.randn(4, 6, requires_grad=True)
    d(*roi_records(f_s, f_t2))["lsh"].backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t2.grad is None


def test_roi_empty_selection_is_a_finite_zero():
    student, teacher, _ = fake_roi_models(6, 6)
    d = LSHFM(mode="lshl2")
    d.bind(student, teacher)
    f_s = torch.zeros(0, 6, requires_grad=True)
    out = d(*roi_records(f_s, torch.zeros(0, 6)))
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in out.values())
    sum(out.values()).backward()


# ----------------------------------------------------------------------------- retinanet
def head_records(s_feats, t_feats, gt_labels, num_anchors, gt_counts):
    n = s_feats[0].shape[0]
    gts = []
    for c in gt_counts:
        inst = Instances((32, 32))
        inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]] * c).reshape(-1, 4))
        gts.append(inst)
    images = ImageList(torch.zeros(n, 3, 32, 32), [(32, 32)] * n)
    sh = DenseHeadRecord(anchors=[], cls_logits=[], box_deltas=[], cls_features=s_feats,
                         num_anchors=num_anchors, gt_labels=gt_labels)
    th = DenseHeadRecord(anchors=[], cls_logits=[], box_deltas=[], cls_features=t_feats, num_anchors=num_anchors)
    return (DetectorRecord(images=images, features={}, gt_instances=gts, head=sh),
            DetectorRecord(images=images, features={}, head=th))


def _neigh(x, i, y, xx):
    """The 3×3 neighbourhood of (y, xx) in x[i] (zero padded), channel-major (C, ky, kx)."""
    c, h, w = x.shape[1:]
    out = []
    for ch in range(c):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xc = y + dy, xx + dx
                out.append(float(x[i, ch, yy, xc]) if 0 <= yy < h and 0 <= xc < w else 0.0)
    return torch.tensor(out)


@pytest.mark.parametrize("mode", ["l2", "lshl2"])
def test_retinanet_location_selection_and_per_image_average(mode):
    torch.manual_seed(0)
    A, C, K = 2, 2, 3
    student, teacher, _ = fake_head_models(C, C, num_anchors=A, num_classes=K)
    d = LSHFM(mode=mode, hash_bits=8)
    d.bind(student, teacher)
    # two levels: 3x3 and 2x2 -> 13 locations, 26 anchors; 3 images
    s = [torch.randn(3, C, 3, 3), torch.randn(3, C, 2, 2)]
    t = [torch.randn(3, C, 3, 3), torch.randn(3, C, 2, 2)]
    labels = torch.full((3, 13 * A), K)  # background
    lab = labels.view(3, 13, A)
    lab[0, 0, :] = -1      # image 0: location 0 fully ignored -> not used
    lab[0, 4, 0] = -1      # location 4: one anchor ignored -> used
    lab[0, 10, :] = -1     # a location of level 2, fully ignored
    lab[1, :, :] = -1      # image 1: everything ignored -> no contribution, not counted
    lab[2, 5, 1] = 0       # image 2: a foreground anchor; image 2 has no GT boxes below
    srec, trec = head_records(s, t, labels, A, gt_counts=[2, 1, 0])
    out = d(srec, trec)

    locs = [(0, y, x) for y in range(3) for x in range(3)] + [(1, y, x) for y in range(2) for x in range(2)]
    selected = [l for j, l in enumerate(locs) if j not in (0, 10)]  # image 0 only
    fs = torch.stack([_neigh(s[lv], 0, y, x) for lv, y, x in selected])
    ft = torch.stack([_neigh(t[lv], 0, y, x) for lv, y, x in selected])
    n_img = 1  # image 1 all ignored, image 2 has no GT (skipped as in the reference)
    expected_l2 = ((fs - ft) ** 2).mean().item() / (n_img + 1e-7)
    assert out["l2"].item() == pytest.approx(expected_l2, rel=1e-5)
    if mode == "lshl2":
        W = d.hash_weight
        expected = direct_bce_with_logits(fs @ W.T, (ft @ W.T > 0).float()) / (n_img + 1e-7)
        assert out["lsh"].item() == pytest.approx(expected, rel=1e-5)
    sel = d.selected_locations(srec)
    assert sel.sum(1).tolist() == [11, 0, 0]
    # with images without GT kept (not the reference), image 2 counts: mean of the two images
    d.skip_images_without_gt = False
    fs2 = torch.stack([_neigh(s[lv], 2, y, x) for lv, y, x in locs])
    ft2 = torch.stack([_neigh(t[lv], 2, y, x) for lv, y, x in locs])
    expected2 = (((fs - ft) ** 2).mean() + ((fs2 - ft2) ** 2).mean()).item() / (2 + 1e-7)
    assert d(srec, trec)["l2"].item() == pytest.approx(expected2, rel=1e-5)


def test_retinanet_all_ignored_is_a_finite_zero():
    A, C = 2, 2
    student, teacher, _ = fake_head_models(C, C, num_anchors=A)
    d = LSHFM(mode="lshl2", hash_bits=8)
    d.bind(student, teacher)
    s = [torch.randn(2, C, 2, 2, requires_grad=True)]
    srec, trec = head_records(s, [torch.randn(2, C, 2, 2)], torch.full((2, 4 * A), -1), A, gt_counts=[1, 1])
    out = d(srec, trec)
    assert set(out) == {"l2", "lsh"}
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in out.values())
    sum(out.values()).backward()
    assert s[0].grad is not None


# ----------------------------------------------------------------------------- full models
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    out = {}
    tmp = tmp_path_factory.mktemp("teachers")
    for det in ("retinanet", "faster_rcnn"):
        torch.manual_seed(0)
        m = instantiate(LazyConfig.load(f"configs/shapes/{det}_teacher.py").model)
        path = tmp / f"{det}.pth"
        torch.save({"model": m.state_dict()}, path)
        out[det] = str(path)
    return out


def build(config, teachers, seed=0, overrides=()):
    cfg = LazyConfig.load(f"configs/shapes/{config}.py")
    cfg = LazyConfig.apply_overrides(
        cfg, ["dataloader.train.total_batch_size=2", "dataloader.train.dataset.names=shapes_tiny_train", *overrides]
    )
    cfg.model.teacher.weights = teachers["retinanet" if config.startswith("retinanet") else "faster_rcnn"]
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    model.train()
    return cfg, model


CONFIGS = [f"{det}_lshfm_{m}" for det in ("faster_rcnn", "retinanet") for m in ("l2", "lsh", "lshl2")]


@pytest.mark.parametrize("config", CONFIGS)
def test_shapes_config_runs_two_iterations_with_fixed_targets(config, teachers):
    t0 = time.time()
    cfg, model = build(config, teachers)
    (d,) = model.distillers
    assert isinstance(d, LSHFM) and d.mode == config.rsplit("_", 1)[1]
    if config.startswith("retinanet"):
        # the LSHFM RetinaNet student's towers end at the teacher's width: no adapter
        assert d.adapter is None and model.head.cls_score.in_channels == model.teacher.model.head.cls_score.in_channels
        assert cfg.train.init_checkpoint == "output/shapes/retinanet_student_tower128/model_final.pth"
    else:
        assert d.adapter is not None  # the Faster R-CNN student's box head is narrower than its teacher's
    hash_before = d.hash_weight.clone() if d.uses_hash else None
    if d.uses_hash:
        assert all(p is not d.hash_weight for p in model.parameters() if p.requires_grad)
        assert d.std == pytest.approx(float(
            (model.teacher.model.roi_heads.box_predictor.cls_score.weight if d.student_needs() == {"roi"}
             else model.teacher.model.head.cls_score.weight).std()))
    terms = {"l2": ["l2"], "lsh": ["lsh"], "lshl2": ["l2", "lsh"]}[d.mode]
    train_two_steps(cfg, model, {f"loss_kd_lshfm_{t}" for t in terms}, lr=1e-2)
    if d.uses_hash:
        assert torch.equal(d.hash_weight, hash_before)
    assert time.time() - t0 < 30


@pytest.mark.parametrize("config", ["faster_rcnn_lshfm_lshl2", "retinanet_lshfm_lshl2"])
def test_gradients_and_state_dict_round_trip(config, teachers):
    # adapter="always" on RetinaNet (whose shapes student needs none) to check its gradient too
    cfg, model = build(config, teachers, overrides=["model.distillers.0.adapter=always"])
    d = model.distillers[0]
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(0):
        losses = model(batch)
    kd = losses["loss_kd_lshfm_l2"] + losses["loss_kd_lshfm_lsh"]
    assert kd.item() > 0
    kd.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapter.parameters())
    feat_params = model.roi_heads.box_head.parameters() if d.student_needs() == {"roi"} else model.head.cls_subnet.parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in feat_params)
    # the hash weights live in the checkpoint; a model built with another seed gets them back
    state = model.state_dict()
    assert "distillers.0.hash_weight" in state
    other_cfg = LazyConfig.load(f"configs/shapes/{config}.py")
    other_cfg.model.teacher.weights = cfg.model.teacher.weights
    other_cfg.model.distillers[0].seed = 7
    other_cfg.model.distillers[0].adapter = "always"
    other = instantiate(other_cfg.model)
    assert not torch.equal(other.distillers[0].hash_weight, d.hash_weight)
    other.load_state_dict(state)
    assert torch.equal(other.distillers[0].hash_weight, d.hash_weight)
    other.train()
    with EventStorage(0):
        model.zero_grad()
        torch.manual_seed(3)
        a = model(batch)["loss_kd_lshfm_lsh"].item()
        torch.manual_seed(3)
        b = other(batch)["loss_kd_lshfm_lsh"].item()
    assert a == pytest.approx(b, rel=1e-5)
