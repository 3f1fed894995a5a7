"""SSD detector (VGG16-SSD300 and MobileNetV2-SSDLite): priors, matching, mining, loss, inference,
training step, checkpoint conversion, yacs/LazyConfig parity. CPU, small inputs."""
import math

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import get_cfg, instantiate  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

import d2kd  # noqa: F401,E402  (registers)
from d2kd.modeling.backbone.mobilenetv2_ssdlite import (  # noqa: E402
    MobileNetV2SSDLite,
    convert_pytorch_ssd_mobilenetv2,
)
from d2kd.modeling.backbone.ssd_vgg import VGG16SSD, convert_ssd_pytorch_vgg  # noqa: E402
from d2kd.modeling.meta_arch.ssd import (  # noqa: E402
    PRIOR_PRESETS,
    SSD,
    SSDPriorGenerator,
    add_ssd_config,
    decode_boxes,
    encode_boxes,
    match_priors,
    mine_hard_negatives,
    multibox_loss,
)

torch.set_num_threads(1)


def _sizes(feats):
    return [tuple(f.shape[-2:]) for f in feats.values()]


def _tiny_priors(preset="aligned"):
    # sizes of the 300-px preset, centres from the feature maps (any input size)
    return SSDPriorGenerator(**{**PRIOR_PRESETS[preset], "steps": None})


def _tiny_mbv2_ssd(num_classes=3, **kw):
    return SSD(backbone=MobileNetV2SSDLite(width_mult=0.35, **kw), prior_generator=_tiny_priors(),
               num_classes=num_classes, head_type="ssdlite")


def _tiny_vgg_ssd(num_classes=3, **kw):
    return SSD(backbone=VGG16SSD(layout="aligned", width_mult=0.125, **kw),
               prior_generator=_tiny_priors(), num_classes=num_classes, head_type="conv")


def _batch(n=2, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 40.0, 120.0, 110.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        img = torch.randint(0, 256, (3, size, size), generator=g).float()
        out.append({"image": img, "instances": inst, "height": 2 * size, "width": size})
    return out


# ------------------------------------------------------------------------------------------ priors
def test_prior_counts_at_300px_from_real_feature_maps():
    x = torch.zeros(1, 3, 300, 300)
    with torch.no_grad():
        classic = VGG16SSD(layout="classic", width_mult=0.125).eval()(x)
        aligned_vgg = VGG16SSD(layout="aligned", width_mult=0.125).eval()(x)
        mbv2 = MobileNetV2SSDLite(width_mult=0.35).eval()(x)
    assert _sizes(classic) == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert _sizes(aligned_vgg) == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert _sizes(mbv2) == _sizes(aligned_vgg)
    g_classic = SSDPriorGenerator(**PRIOR_PRESETS["classic"])
    g_aligned = SSDPriorGenerator(**PRIOR_PRESETS["aligned"])
    assert g_classic.num_priors_per_location == [4, 6, 6, 6, 4, 4]
    assert g_aligned.num_priors_per_location == [6] * 6
    assert g_classic(_sizes(classic)).shape == (8732, 4)
    assert g_aligned(_sizes(aligned_vgg)).shape == (3000, 4)
    assert g_aligned(_sizes(mbv2)).shape == (3000, 4)


def test_vgg_norm_option_adds_a_norm_after_every_conv_and_keeps_the_outputs():
    plain = VGG16SSD(layout="aligned", width_mult=0.125)
    bn = VGG16SSD(layout="aligned", width_mult=0.125, norm="BN")
    convs = [m for m in bn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len([m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]) == 13 + 2 + 10
    assert all(isinstance(c.norm, torch.nn.BatchNorm2d) and c.bias is None for c in convs)
    keys = set(bn.state_dict())
    assert "conv1_1.norm.running_mean" in keys and "conv1_1.bias" not in keys
    assert "conv1_1.bias" in plain.state_dict()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a, b = plain.eval()(x), bn.eval()(x)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert bn.output_shape() == plain.output_shape()


def test_prior_coordinates_by_hand():
    p = SSDPriorGenerator(**PRIOR_PRESETS["classic"])(
        [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)])
    f0 = 300 / 8  # ssd.pytorch: f_k = image_size / step (37.5, not 38)
    expect = {
        0: (0.5 / f0, 0.5 / f0, 0.1, 0.1),
        1: (0.5 / f0, 0.5 / f0, math.sqrt(0.1 * 0.2), math.sqrt(0.1 * 0.2)),
        2: (0.5 / f0, 0.5 / f0, 0.1 * math.sqrt(2), 0.1 / math.sqrt(2)),
        3: (0.5 / f0, 0.5 / f0, 0.1 / math.sqrt(2), 0.1 * math.sqrt(2)),
        4: (1.5 / f0, 0.5 / f0, 0.1, 0.1),  # next column (x) first
        4 * 38: (0.5 / f0, 1.5 / f0, 0.1, 0.1),  # next row
        # level 1, first location, 5th prior (ar 3): s = 60/300
        5776 + 4: (0.5 / 18.75, 0.5 / 18.75, 0.2 * math.sqrt(3), 0.2 / math.sqrt(3)),
        # last 4 priors: 1x1 map, s = 264/300; 0.88*sqrt(2) > 1 is clipped
        8728: (0.5, 0.5, 0.88, 0.88),
        8729: (0.5, 0.5, math.sqrt(0.88 * 1.05), math.sqrt(0.88 * 1.05)),
        8730: (0.5, 0.5, 1.0, 0.88 / math.sqrt(2)),
        8731: (0.5, 0.5, 0.88 / math.sqrt(2), 1.0),
    }
    for i, v in expect.items():
        assert torch.allclose(p[i], torch.tensor(v, dtype=torch.float32), atol=1e-6), (i, p[i], v)

    q = SSDPriorGenerator(**PRIOR_PRESETS["aligned"])(
        [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])
    # level 4 (2x2, step 150, min 240): row 1, col 0, prior 4 (ar 3), clipped width
    i = 6 * (361 + 100 + 25 + 9) + (1 * 2 + 0) * 6 + 4
    assert torch.allclose(q[i], torch.tensor([0.25, 0.75, 1.0, 0.8 / math.sqrt(3)]), atol=1e-6)
    # level 0 (19x19, step 16 -> f = 18.75): last location centre 18.5 / 18.75
    assert torch.allclose(q[6 * 361 - 6, :2], torch.tensor([18.5 / 18.75, 18.5 / 18.75]))


def test_prior_steps_refuse_wrong_input_size():
    g = SSDPriorGenerator(**PRIOR_PRESETS["aligned"])
    with pytest.raises(ValueError, match="does not fit"):
        g([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)])  # a 128-px input
    assert _tiny_priors()([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]).shape == (
        6 * (64 + 16 + 4 + 3), 4)


# ------------------------------------------------------------------------------ box coding / match
def test_encode_by_hand_and_decode_roundtrip():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.4, 0.45, 0.7, 0.65]])  # centre (0.55, 0.55), size (0.3, 0.2)
    d = encode_boxes(gt, prior, (0.1, 0.2))
    expect = torch.tensor([[0.05 / 0.02, 0.05 / 0.02, math.log(1.5) / 0.2, 0.0]])
    assert torch.allclose(d, expect, atol=1e-5)
    assert torch.allclose(decode_boxes(d, prior, (0.1, 0.2)), gt, atol=1e-6)


def test_match_gives_each_gt_its_best_prior():
    priors = torch.tensor([
        [0.25, 0.25, 0.2, 0.2],   # p0 [.15,.15,.35,.35]
        [0.50, 0.50, 0.2, 0.2],   # p1 [.4,.4,.6,.6]
        [0.80, 0.80, 0.1, 0.1],   # p2 [.75,.75,.85,.85]
        [0.80, 0.80, 0.12, 0.12],  # p3 [.74,.74,.86,.86]
        [0.10, 0.90, 0.1, 0.1],   # p4 far from everything
    ])
    gt = torch.tensor([
        [0.30, 0.30, 0.40, 0.40],  # A: best prior p0 with IoU 0.0526 (< 0.5)
        [0.20, 0.20, 0.60, 0.60],  # B: IoU p0 0.127 (beats A there), p1 0.25 = its best
        [0.76, 0.76, 0.86, 0.86],  # C: IoU p3 0.694 (best), p2 0.681 (> 0.5 by threshold)
    ])
    labels, targets = match_priors(gt, torch.tensor([1, 2, 3]), priors, 0.5, (0.1, 0.2))
    # p0 is A's best prior although B overlaps it more; p1 is B's best though IoU < 0.5
    assert labels.tolist() == [1, 2, 3, 3, 0]
    expect_p1 = torch.tensor([-0.1 / 0.02, -0.1 / 0.02, math.log(2) / 0.2, math.log(2) / 0.2])
    assert torch.allclose(targets[1], expect_p1, atol=1e-5)
    # without the forcing A would be background (and p0 would go to B): check the threshold alone
    lab_b, _ = match_priors(gt[1:2], torch.tensor([2]), priors[[0, 2]], 0.5)
    assert lab_b.tolist() == [2, 0]  # B's best among {p0, p2} is p0 -> forced
    empty_l, empty_t = match_priors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), priors)
    assert empty_l.tolist() == [0] * 5 and empty_t.abs().sum() == 0


def test_model_match_uses_detectron2_classes_plus_one():
    model = _tiny_mbv2_ssd()
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    inst = Instances((100, 200))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 100.0, 50.0]]))  # pixels; tensor is 100 x 200
    inst.gt_classes = torch.tensor([2])
    labels, targets = model.match([inst], priors, (100, 200))
    assert labels.tolist() == [[3, 0]]  # class 2 -> label 3 (0 is background)
    assert torch.allclose(targets[0, 0], torch.zeros(4), atol=1e-6)  # box == prior 0 exactly


# ----------------------------------------------------------------------------------------- mining
def test_hard_negative_mining_count_and_choice():
    torch.manual_seed(0)
    N, P, C = 3, 40, 5
    logits = torch.randn(N, P, C) * 3
    labels = torch.zeros(N, P, dtype=torch.long)
    labels[0, [1, 5, 7]] = torch.tensor([1, 2, 4])   # 3 positives -> 9 negatives
    # image 1: no positive -> no negative; image 2: 12 positives -> 36 > 28 available
    labels[2, :12] = 2
    neg = mine_hard_negatives(logits, labels, 3)
    assert neg.sum(1).tolist() == [9, 0, 28]
    assert not (neg & (labels > 0)).any()
    # the 9 chosen in image 0 are the 9 highest background losses (independent computation)
    bg = [(math.log(sum(math.exp(v) for v in row)) - row[0]) for row in logits[0].tolist()]
    negs = [p for p in range(P) if labels[0, p] == 0]
    top9 = sorted(negs, key=lambda p: -bg[p])[:9]
    assert sorted(top9) == torch.nonzero(neg[0]).flatten().tolist()
    # fractional ratio floors
    assert mine_hard_negatives(logits, labels, 1.5).sum(1).tolist() == [4, 0, 18]


# ------------------------------------------------------------------------------------------- loss
def test_multibox_loss_matches_hand_computation():
    # 1 image, 6 priors, K = 2 (3 columns, background first), 1 positive -> 3 mined negatives
    lg = [
        [0.2, 1.5, -0.3],   # p0 positive, label 1
        [2.0, 0.1, 0.0],    # p1 negative, bg loss small
        [-1.0, 2.0, 0.5],   # p2 negative, bg loss large
        [0.0, 0.0, 0.0],    # p3 negative
        [1.0, 1.0, 3.0],    # p4 negative, largest
        [3.0, -2.0, -2.0],  # p5 negative, smallest
    ]
    logits = torch.tensor([lg])
    labels = torch.tensor([[1, 0, 0, 0, 0, 0]])
    deltas = torch.tensor([[[0.5, -2.0, 0.1, 0.9]] + [[9.0, 9.0, 9.0, 9.0]] * 5])
    targets = torch.tensor([[[0.0, 0.0, 0.0, 0.0]] + [[0.0, 0.0, 0.0, 0.0]] * 5])

    def ce(row, y):
        return math.log(sum(math.exp(v) for v in row)) - row[y]

    bg = {p: ce(lg[p], 0) for p in range(1, 6)}
    mined = sorted(bg, key=lambda p: -bg[p])[:3]
    assert sorted(mined) == [2, 3, 4]
    cls_hand = ce(lg[0], 1) + sum(ce(lg[p], 0) for p in mined)

    def sl1(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    box_hand = sl1(0.5) + sl1(-2.0) + sl1(0.1) + sl1(0.9)  # negatives' deltas never count
    neg = mine_hard_negatives(logits, labels, 3)
    out = multibox_loss(logits, deltas, labels, targets, neg)
    assert out["loss_cls"].item() == pytest.approx(cls_hand / 1, rel=1e-5)
    assert out["loss_box_reg"].item() == pytest.approx(box_hand / 1, rel=1e-5)
    # same through the model method (mines internally); N_pos = 2 halves both terms
    model = _tiny_mbv2_ssd(num_classes=2)
    labels2 = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0]])
    logits2 = torch.cat([logits, logits])
    lg1 = lg
    bg2 = {p: ce(lg1[p], 0) for p in [0, 2, 3, 4, 5]}
    mined2 = sorted(bg2, key=lambda p: -bg2[p])[:3]
    cls2 = cls_hand + ce(lg1[1], 2) + sum(ce(lg1[p], 0) for p in mined2)
    targets2 = torch.zeros(2, 6, 4)
    deltas2 = torch.cat([deltas, deltas])
    box2 = box_hand + 4 * (9.0 - 0.5)
    out2 = model.losses(logits2, deltas2, labels2, targets2)
    assert out2["loss_cls"].item() == pytest.approx(cls2 / 2, rel=1e-5)
    assert out2["loss_box_reg"].item() == pytest.approx(box2 / 2, rel=1e-5)


# -------------------------------------------------------------------------------------- inference
def test_inference_postprocess_format_and_class_convention():
    model = _tiny_mbv2_ssd(num_classes=3).eval()
    priors = torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.27, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]])
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 3] = 10.0   # prior 0: column 3 -> Detectron2 class 2
    logits[0, 1, 3] = 9.0    # prior 1: same class, overlaps prior 0 (IoU 0.82) -> suppressed
    logits[0, 2, 0] = 10.0   # prior 2: background
    logits[0, 2, 1] = 6.0    # ...but column 1 keeps p = 0.018 > 0.01 -> class 0 survives
    deltas = torch.zeros(1, 3, 4)
    (r,) = model.inference(logits, deltas, priors, [(100, 200)], (100, 200))
    assert r.pred_classes.tolist() == [2, 0]
    assert torch.allclose(r.pred_boxes.tensor[0], torch.tensor([30.0, 15.0, 70.0, 35.0]), atol=1e-4)
    assert r.scores[0] > 0.99 and 0.01 < r.scores[1] < 0.05

    # end to end on images: RetinaNet's contract
    batch = _batch(2, 128)
    with torch.no_grad():
        out = model(batch)
    assert len(out) == 2
    for o in out:
        inst = o["instances"]
        assert inst.image_size == (256, 128)  # rescaled to height/width of the input dict
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= 200
        assert inst.pred_classes.min() >= 0 and inst.pred_classes.max() < 3
        assert (inst.scores > 0.01).all() and (inst.scores <= 1).all()
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 256).all()


def test_default_predictor_with_square_resize():
    from detectron2.data import transforms as T
    from detectron2.engine import DefaultPredictor

    cfg = _yacs_cfg("mbv2")
    pred = DefaultPredictor(cfg)
    pred.aug = T.Resize((128, 128))
    img = np.random.RandomState(0).randint(0, 255, (90, 160, 3)).astype(np.uint8)
    out = pred(img)
    assert out["instances"].image_size == (90, 160)
    assert len(out["instances"]) > 0


# ------------------------------------------------------------------------------------ train step
@pytest.mark.parametrize("arch", ["mbv2", "vgg_aligned", "vgg_classic_300"])
def test_one_training_step(arch):
    if arch == "mbv2":
        model, size = _tiny_mbv2_ssd(out_features=["expand7", "expand14", "last", "extra0",
                                                   "extra1", "extra2", "extra3"]), 128
        hint = "expand7"
    elif arch == "vgg_aligned":
        model, size = _tiny_vgg_ssd(out_features=["conv4_3", "fc7", "conv6_2", "conv7_2",
                                                  "conv8_2", "conv9_2", "conv10_2"]), 128
        hint = "conv4_3"
    else:  # classic layout needs >= 268 px (valid 3x3 extras)
        model = SSD(backbone=VGG16SSD(layout="classic", width_mult=0.0625),
                    prior_generator=SSDPriorGenerator(**PRIOR_PRESETS["classic"]), num_classes=3)
        size, hint = 300, None
    model.train()
    batch = _batch(2, size)
    losses, rec = model.forward_training(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.head.cls_score.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.head.bbox_pred.parameters())
    # the record a distiller gets
    P = rec["priors"].shape[0]
    assert rec["logits"].shape == (2, P, 4) and rec["deltas"].shape == (2, P, 4)
    assert rec["labels"].shape == (2, P) and rec["targets"].shape == (2, P, 4)
    assert rec["neg_mask"].sum() == min(3 * rec["num_pos"], (rec["labels"] == 0).sum())
    assert rec["pos_mask"].sum() == rec["num_pos"] >= 4  # every GT gets at least its best prior
    if hint:
        assert hint in rec["features"] and hint not in model.head_in_features
        assert rec["features"][hint].shape[-1] == size // 8
    # an SGD step changes the loss
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt.step()
    with torch.no_grad():
        after = sum(model(batch).values())
    assert after.item() != pytest.approx(total.item(), rel=1e-7)


# ---------------------------------------------------------------------------- checkpoint conversion
def _ssd_pytorch_vgg_reference(layout, num_classes=21):
    """Key -> shape of an amdegroot/ssd.pytorch SSD300 state dict (``layout='classic'``) or of the
    SSD-KD repo's re-headed nets/vgg.py (``'aligned'``), written from those repos' builders
    (vgg(), add_extras(), multibox()); the real checkpoints cannot be downloaded here."""
    shapes, i, c = {}, 0, 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]:
        if v in ("M", "C"):
            i += 1
            continue
        shapes[f"vgg.{i}.weight"], shapes[f"vgg.{i}.bias"] = (v, c, 3, 3), (v,)
        c, i = v, i + 2  # conv + ReLU
    shapes["vgg.31.weight"], shapes["vgg.31.bias"] = (1024, 512, 3, 3), (1024,)  # conv6
    shapes["vgg.33.weight"], shapes["vgg.33.bias"] = (1024, 1024, 1, 1), (1024,)  # conv7
    if layout == "classic":
        ext = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]
        mbox, src = [4, 6, 6, 6, 4, 4], [512, 1024]
        shapes["L2Norm.weight"] = (512,)
    else:
        ext = [256, "S", 512, 128, "S", 256, 128, "S", 256, 128, "S", 256, 128, "S", 256]
        mbox, src = [6] * 6, [1024]
        shapes["adaptation.weight"], shapes["adaptation.bias"] = (192, 512, 1, 1), (192,)
    layers, c, flag = [], 1024, False
    for k, v in enumerate(ext):
        if c != "S":
            out = ext[k + 1] if v == "S" else v
            layers.append((out, c, (1, 3)[flag]))
            flag = not flag
        c = v
    for j, (o, ci, ks) in enumerate(layers):
        shapes[f"extras.{j}.weight"], shapes[f"extras.{j}.bias"] = (o, ci, ks, ks), (o,)
    src += [o for o, _, _ in layers[1::2]]
    for j, (ci, a) in enumerate(zip(src, mbox)):
        shapes[f"loc.{j}.weight"], shapes[f"loc.{j}.bias"] = (a * 4, ci, 3, 3), (a * 4,)
        shapes[f"conf.{j}.weight"] = (a * num_classes, ci, 3, 3)
        shapes[f"conf.{j}.bias"] = (a * num_classes,)
    return shapes


def _pytorch_ssd_mb2_reference(num_classes=21):
    """Key -> shape of a qfgaohao/pytorch-ssd mb2-ssd-lite state dict, written from its
    MobileNetV2 / InvertedResidual / SeperableConv2d / create_mobilenetv2_ssd_lite builders."""
    shapes = {}

    def bn(p, ch):
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{p}.{n}"] = (ch,)
        shapes[f"{p}.num_batches_tracked"] = ()

    def block(p, inp, oup, t):
        h = int(round(inp * t))
        if t == 1:
            shapes[f"{p}.conv.0.weight"] = (h, 1, 3, 3)
            bn(f"{p}.conv.1", h)
            shapes[f"{p}.conv.3.weight"] = (oup, h, 1, 1)
            bn(f"{p}.conv.4", oup)
        else:
            shapes[f"{p}.conv.0.weight"] = (h, inp, 1, 1)
            bn(f"{p}.conv.1", h)
            shapes[f"{p}.conv.3.weight"] = (h, 1, 3, 3)
            bn(f"{p}.conv.4", h)
            shapes[f"{p}.conv.6.weight"] = (oup, h, 1, 1)
            bn(f"{p}.conv.7", oup)

    shapes["base_net.0.0.weight"] = (32, 3, 3, 3)
    bn("base_net.0.1", 32)
    i, inp = 1, 32
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                       [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]:
        for _ in range(n):
            block(f"base_net.{i}", inp, c, t)
            inp, i = c, i + 1
    shapes["base_net.18.0.weight"] = (1280, 320, 1, 1)
    bn("base_net.18.1", 1280)
    for j, (inp, oup, t) in enumerate([(1280, 512, 0.2), (512, 256, 0.25), (256, 256, 0.5),
                                       (256, 64, 0.25)]):
        block(f"extras.{j}", inp, oup, t)
    for name, per in (("classification_headers", 6 * num_classes), ("regression_headers", 24)):
        for j, c in enumerate([576, 1280, 512, 256, 256, 64]):
            if j < 5:
                shapes[f"{name}.{j}.0.weight"], shapes[f"{name}.{j}.0.bias"] = (c, 1, 3, 3), (c,)
                bn(f"{name}.{j}.1", c)
                shapes[f"{name}.{j}.3.weight"], shapes[f"{name}.{j}.3.bias"] = (per, c, 1, 1), (per,)
            else:
                shapes[f"{name}.{j}.weight"], shapes[f"{name}.{j}.bias"] = (per, c, 1, 1), (per,)
    return shapes


def _random_sd(shapes, prefix=""):
    g = torch.Generator().manual_seed(0)
    return {prefix + k: (torch.randint(0, 100, s, generator=g) if s == () else
                         torch.randn(s, generator=g)) for k, s in shapes.items()}


def test_convert_ssd_pytorch_vgg_classic():
    sd = _random_sd(_ssd_pytorch_vgg_reference("classic"), prefix="module.")
    conv = convert_ssd_pytorch_vgg(sd, layout="classic")
    model = SSD(backbone=VGG16SSD(layout="classic"),
                prior_generator=SSDPriorGenerator(**PRIOR_PRESETS["classic"]), num_classes=20)
    model.load_state_dict(conv, strict=True)  # every key and shape matches
    s = model.state_dict()
    for src, dst in [("vgg.0.weight", "backbone.conv1_1.weight"),
                     ("vgg.21.weight", "backbone.conv4_3.weight"),
                     ("vgg.31.bias", "backbone.fc6.bias"), ("vgg.33.weight", "backbone.fc7.weight"),
                     ("L2Norm.weight", "backbone.conv4_3_norm.weight"),
                     ("extras.0.weight", "backbone.conv6_1.weight"),
                     ("extras.7.weight", "backbone.conv9_2.weight"),
                     ("loc.0.weight", "head.bbox_pred.0.weight"),
                     ("conf.5.bias", "head.cls_score.5.bias")]:
        assert torch.equal(s[dst], sd["module." + src]), (src, dst)
    # ImageNet base (vgg16_reducedfc.pth: no "vgg." prefix)
    base = {k[len("module.vgg."):]: v for k, v in sd.items() if k.startswith("module.vgg.")}
    conv_base = convert_ssd_pytorch_vgg(base)
    assert set(conv_base) == {k for k in conv if k.startswith("backbone.")} - {
        k for k in conv if "conv4_3_norm" in k or any(f"conv{i}_" in k for i in (6, 7, 8, 9))}


def test_convert_ssd_kd_vgg_aligned_and_classic_to_aligned():
    sd = _random_sd(_ssd_pytorch_vgg_reference("aligned"))
    conv = convert_ssd_pytorch_vgg(sd, layout="aligned")
    assert not any("adaptation" in k for k in conv)
    model = SSD(backbone=VGG16SSD(layout="aligned"),
                prior_generator=SSDPriorGenerator(**PRIOR_PRESETS["aligned"]), num_classes=20)
    model.load_state_dict(conv, strict=True)
    assert torch.equal(model.backbone.conv10_2.weight, sd["extras.9.weight"])
    assert torch.equal(model.head.cls_score[0].weight, sd["conf.0.weight"])
    # the SSD-KD teacher init: 8732-prior checkpoint into the aligned layout, heads dropped
    classic = convert_ssd_pytorch_vgg(_random_sd(_ssd_pytorch_vgg_reference("classic")),
                                      layout="aligned", include_heads=False)
    missing, unexpected = model.load_state_dict(classic, strict=False)
    assert unexpected == []
    assert sorted({k.rsplit(".", 1)[0] for k in missing if k.startswith("backbone.")}) == [
        "backbone.conv10_1", "backbone.conv10_2"]
    assert all(k.startswith(("backbone.conv10", "head.")) for k in missing)


def test_convert_pytorch_ssd_mobilenetv2():
    sd = _random_sd(_pytorch_ssd_mb2_reference())
    sd["adaptation.weight"] = torch.zeros(512, 192, 1, 1)  # SSD-KD's unused adapter: dropped
    conv = convert_pytorch_ssd_mobilenetv2(sd)
    model = SSD(backbone=MobileNetV2SSDLite(),
                prior_generator=SSDPriorGenerator(**PRIOR_PRESETS["aligned"]),
                num_classes=20, head_type="ssdlite")
    model.load_state_dict(conv, strict=True)
    s = model.state_dict()
    for src, dst in [("base_net.14.conv.0.weight", "backbone.features.14.conv.0.weight"),
                     ("base_net.18.1.running_var", "backbone.features.18.1.running_var"),
                     ("extras.3.conv.6.weight", "backbone.extras.3.conv.6.weight"),
                     ("classification_headers.0.0.weight", "head.cls_score.0.depthwise.weight"),
                     ("classification_headers.2.1.running_mean", "head.cls_score.2.norm.running_mean"),
                     ("regression_headers.4.3.bias", "head.bbox_pred.4.pointwise.bias"),
                     ("regression_headers.5.weight", "head.bbox_pred.5.weight")]:
        assert torch.equal(s[dst], sd[src]), (src, dst)
    no_heads = convert_pytorch_ssd_mobilenetv2(sd, include_heads=False)
    assert not any(k.startswith("head.") for k in no_heads)


# ----------------------------------------------------------------------------- yacs vs LazyConfig
def _yacs_cfg(arch):
    cfg = get_cfg()
    add_ssd_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SSD"
    cfg.MODEL.PIXEL_MEAN = [127.0, 127.0, 127.0]
    cfg.MODEL.PIXEL_STD = [128.0, 128.0, 128.0]
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.SSD.NUM_CLASSES = 3
    if arch == "mbv2":
        cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_ssdlite_backbone"
        cfg.MODEL.MOBILENETV2_SSDLITE.WIDTH_MULT = 0.35
        cfg.MODEL.SSD.HEAD_TYPE = "ssdlite"
        cfg.MODEL.SSD.PRIORS.PRESET = "aligned"
        cfg.MODEL.SSD.PRIORS.USE_STEPS = False
    else:
        cfg.MODEL.BACKBONE.NAME = "build_vgg16_ssd_backbone"
        cfg.MODEL.VGG_SSD.LAYOUT = "classic"
        cfg.MODEL.VGG_SSD.WIDTH_MULT = 0.125
        cfg.MODEL.SSD.PRIORS.PRESET = "classic"
    return cfg


def _lazy_cfg(arch):
    if arch == "mbv2":
        backbone = L(MobileNetV2SSDLite)(width_mult=0.35)
        priors = L(SSDPriorGenerator)(**{**PRIOR_PRESETS["aligned"], "steps": None})
        head_type = "ssdlite"
    else:
        backbone = L(VGG16SSD)(layout="classic", width_mult=0.125)
        priors = L(SSDPriorGenerator)(**PRIOR_PRESETS["classic"])
        head_type = "conv"
    return L(SSD)(backbone=backbone, prior_generator=priors, num_classes=3, head_type=head_type,
                  pixel_mean=[127.0] * 3, pixel_std=[128.0] * 3, input_format="RGB")


@pytest.mark.parametrize("arch", ["mbv2", "vgg"])
def test_yacs_and_lazyconfig_build_the_same_model(arch):
    a = build_model(_yacs_cfg(arch))
    b = instantiate(_lazy_cfg(arch))
    assert isinstance(a, SSD) and isinstance(b, SSD)
    a.eval(), b.eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa)
    assert a.head_in_features == b.head_in_features
    pa = a.prior_generator(_sizes(a.backbone(torch.zeros(1, 3, 300, 300))))
    pb = b.prior_generator(_sizes(b.backbone(torch.zeros(1, 3, 300, 300))))
    assert torch.equal(pa, pb) and pa.shape[0] == (3000 if arch == "mbv2" else 8732)
    # same weights -> same outputs
    b.load_state_dict(sa)
    x = _batch(1, 300 if arch == "vgg" else 128)
    with torch.no_grad():
        ra, rb = a(x)[0]["instances"], b(x)[0]["instances"]
    assert torch.equal(ra.scores, rb.scores)


# ---------------------------------------------------------------------------------- augmentation
def test_ssd_photometric_transform_by_hand():
    from d2kd.data.ssd_augmentation import SSDPhotometricTransform

    img = np.random.RandomState(0).randint(0, 256, (8, 10, 3)).astype(np.uint8)
    f = img.astype(np.float32)
    out = SSDPhotometricTransform(brightness=20.0, contrast=1.4, contrast_first=True,
                                  channel_perm=(2, 0, 1)).apply_image(img)
    assert out.dtype == np.float32
    assert np.allclose(out, ((f + 20.0) * 1.4)[:, :, [2, 0, 1]], atol=1e-4)
    assert out.max() > 255  # not clipped, like ssd.pytorch
    # saturation 1 and hue 0 round-trip through HSV: identity up to float error
    same = SSDPhotometricTransform(saturation=1.0, hue=0.0).apply_image(img)
    assert np.allclose(same, f, atol=1e-3)
    # saturation 0 -> grey (all channels equal to V = max channel)
    grey = SSDPhotometricTransform(saturation=0.0).apply_image(img)
    assert np.allclose(grey, f.max(axis=2, keepdims=True).repeat(3, 2), atol=1e-3)
    # a hue shift of 120 degrees on a pure red BGR pixel gives pure green; in RGB format the same
    red_bgr = np.array([[[0, 0, 255]]], dtype=np.uint8)
    g = SSDPhotometricTransform(hue=120.0, image_format="BGR").apply_image(red_bgr)
    assert np.allclose(g, [[[0, 255, 0]]], atol=1e-2)
    red_rgb = np.array([[[255, 0, 0]]], dtype=np.uint8)
    g = SSDPhotometricTransform(hue=120.0, image_format="RGB").apply_image(red_rgb)
    assert np.allclose(g, [[[0, 255, 0]]], atol=1e-2)


def test_ssd_expand_and_center_crop_drop_boxes_through_detectron2_annotations():
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T
    from detectron2.structures import BoxMode

    from d2kd.data.ssd_augmentation import ExpandTransform, SSDCropTransform

    img = np.full((20, 30, 3), 7, dtype=np.uint8)
    e = ExpandTransform(left=5, top=3, new_w=40, new_h=30, fill=(1, 2, 3))
    out = e.apply_image(img)
    assert out.shape == (30, 40, 3) and (out[0, 0] == [1, 2, 3]).all() and (out[3, 5] == 7).all()
    assert np.allclose(e.apply_box(np.array([[0.0, 0.0, 10.0, 10.0]])), [[5, 3, 15, 13]])

    # crop x in [10, 40), y in [0, 30); box A centre (12, 5) inside, box B centre (5, 5) outside
    # (but B overlaps the crop), box C partly outside -> clipped
    crop = SSDCropTransform(10, 0, 30, 30, 60, 40)
    tfms = T.TransformList([crop, T.ResizeTransform(30, 30, 60, 60)])
    annos = [
        {"bbox": [8.0, 0.0, 16.0, 10.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
        {"bbox": [0.0, 0.0, 11.0, 10.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
        {"bbox": [28.0, 20.0, 48.0, 38.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},
    ]
    annos = [utils.transform_instance_annotations(a, tfms, (60, 60)) for a in annos]
    inst = utils.filter_empty_instances(utils.annotations_to_instances(annos, (60, 60)))
    assert inst.gt_classes.tolist() == [0, 2]
    assert np.allclose(inst.gt_boxes.tensor.numpy(), [[0, 0, 12, 20], [36, 40, 60, 60]])


def test_ssd_min_iou_random_crop_constraints():
    from d2kd.data.ssd_augmentation import SSDCropTransform, SSDMinIoURandomCrop, _iou_with_rect

    np.random.seed(0)
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    boxes = np.array([[20.0, 20.0, 60.0, 80.0], [120.0, 10.0, 190.0, 50.0]])
    aug = SSDMinIoURandomCrop(constraint="all")
    crops = 0
    for _ in range(200):
        t = aug.get_transform(img, boxes)
        if not isinstance(t, SSDCropTransform):
            continue
        crops += 1
        rect = np.array([t.x0, t.y0, t.x0 + t.w, t.y0 + t.h])
        assert 0 <= rect[0] and rect[2] <= 200 and 0 <= rect[1] and rect[3] <= 100
        assert t.w >= int(0.3 * 200) - 1 and t.h >= int(0.3 * 100) - 1
        assert 0.5 - 0.02 <= t.h / t.w <= 2.0 + 0.05  # integer rounding of the rect
        c = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert ((c[:, 0] > rect[0]) & (c[:, 0] < rect[2]) & (c[:, 1] > rect[1])
                & (c[:, 1] < rect[3])).any()
        assert _iou_with_rect(boxes, rect).min() >= 0  # free mode allows any overlap
    assert 100 < crops < 200  # mode "whole image" has probability 1/6
    assert type(aug.get_transform(img, np.zeros((0, 4)))).__name__ == "NoOpTransform"
    # the IoU constraint, mode fixed to "min IoU 0.3": enforced by "all", never by ssd.pytorch's
    # test (overlap.min() < min_iou and inf < overlap.max() is always false)
    near = np.array([[20.0, 20.0, 100.0, 80.0], [60.0, 30.0, 120.0, 90.0]])
    for constraint in ("all", "any", "ssd_pytorch"):
        a = SSDMinIoURandomCrop(constraint=constraint, max_modes=5)
        a.modes = [(0.3, None)]
        ts = [a.get_transform(img, near) for _ in range(100)]
        ts = [t for t in ts if isinstance(t, SSDCropTransform)]
        assert len(ts) > 80
        ious = np.array([_iou_with_rect(near, np.array([t.x0, t.y0, t.x0 + t.w, t.y0 + t.h]))
                         for t in ts])
        if constraint == "all":
            assert (ious.min(axis=1) >= 0.3).all()
        elif constraint == "any":
            assert (ious.max(axis=1) >= 0.3).all() and (ious.min(axis=1) < 0.3).any()
        else:
            assert (ious.max(axis=1) < 0.3).any()


def test_ssd_dataset_mapper_end_to_end(tmp_path):
    import cv2
    from detectron2.structures import BoxMode

    from d2kd.data.ssd_augmentation import SSDDatasetMapper, ssd_train_augmentations

    path = str(tmp_path / "img.png")
    cv2.imwrite(path, np.random.RandomState(0).randint(0, 256, (60, 80, 3)).astype(np.uint8))
    d = {"file_name": path, "height": 60, "width": 80, "image_id": 0, "annotations": [
        {"bbox": [10, 10, 40, 50], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
        {"bbox": [50, 5, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]}
    mapper = SSDDatasetMapper(is_train=True, augmentations=ssd_train_augmentations(64),
                              image_format="BGR")
    np.random.seed(1)
    seen = 0
    for _ in range(20):
        out = mapper(d)
        assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
        b = out["instances"].gt_boxes.tensor
        assert len(b) >= 1 and (b >= 0).all() and (b <= 64).all()
        seen += len(b)
    assert seen > 20  # both boxes usually survive
    cfg = _yacs_cfg("mbv2")
    cfg.INPUT.MIN_SIZE_TEST = 64
    test_out = SSDDatasetMapper(cfg, is_train=False)(d)
    assert test_out["image"].shape == (3, 64, 64) and "instances" not in test_out


# ------------------------------------------------------------------------------------- model cost
def test_model_cost_tool():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "tools", "model_cost.py")
    spec = importlib.util.spec_from_file_location("model_cost", path)
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)
    model = _tiny_mbv2_ssd()
    r = mc.model_cost(model, image_size=128, n_runs=1, warmup=0)
    assert set(r) == {"params_m", "gflops", "latency_ms", "latency_net_ms"}
    assert r["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert r["latency_ms"] > 0 and r["latency_net_ms"] > 0
    # convolution flops scale with the pixel count: 256 px costs ~4x 128 px
    g256 = mc.count_gflops(model, 256)
    assert 3.5 < g256 / r["gflops"] < 4.5
    table = mc.format_table({"tiny": r}, 128, 1)
    assert "| tiny |" in table and "GFLOPs" in table
