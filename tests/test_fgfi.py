import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import os  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
from d2kd.distill import FGFI  # noqa: E402
from d2kd.distill.fgfi import fgfi_masks, fgfi_masks_batch, init_adapter_weight, pairwise_iou_plus_one  # noqa: E402
from d2kd.records import DetectorRecord, RPNRecord  # noqa: E402
from feature_kd_helpers import train_two_steps  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def grid_anchors(h, w, stride, sizes):
    """Detectron2's layout: location-major (row-major over (y, x)), then one anchor per size,
    each a square of that size with its top-left corner at (x·stride, y·stride)."""
    out = []
    for i in range(h):
        for j in range(w):
            for s in sizes:
                out.append([j * stride, i * stride, j * stride + s, i * stride + s])
    return Boxes(torch.tensor(out, dtype=torch.float32))


def reference_masks(anchors, grid_sizes, gt, psi=0.5, plus_one=True):
    """A direct transcription of the reference (anchor_target_layer.py): IoU map per level
    concatenated (one set of anchors), per GT max over all anchors, count of anchors above
    ψ·max summed over GTs, then count > 0. Plain numpy loops."""
    all_anchors = np.concatenate([a.tensor.numpy() for a in anchors])
    gt = gt.numpy()
    one = 1.0 if plus_one else 0.0

    def iou(a, g):
        aw, ah = a[2] - a[0] + one, a[3] - a[1] + one
        gw, gh = g[2] - g[0] + one, g[3] - g[1] + one
        iw = max(min(a[2], g[2]) - max(a[0], g[0]) + one, 0.0)
        ih = max(min(a[3], g[3]) - max(a[1], g[1]) + one, 0.0)
        if plus_one and gw == 1 and gh == 1:
            return 0.0
        inter = iw * ih
        union = aw * ah + gw * gh - inter
        return inter / union if union > 0 else 0.0

    ious = np.array([[iou(a, g) for g in gt] for a in all_anchors]).reshape(len(all_anchors), len(gt))
    counts = np.zeros(len(all_anchors), dtype=np.int64)
    for k in range(len(gt)):
        thr = ious[:, k].max() * psi
        counts += ious[:, k] > thr
    masks, start = [], 0
    for a, (h, w) in zip(anchors, grid_sizes):
        n = len(a)
        masks.append(counts[start : start + n].reshape(h, w, -1).sum(axis=2) > 0)
        start += n
    return masks


def fake_models(levels, s_channels, t_channels, strides, source="rpn"):
    shapes_s = {f: ShapeSpec(channels=s_channels, stride=s) for f, s in zip(levels, strides)}
    shapes_t = {f: ShapeSpec(channels=t_channels, stride=s) for f, s in zip(levels, strides)}
    student = SimpleNamespace(backbone=SimpleNamespace(output_shape=lambda: shapes_s))
    if source == "rpn":
        student.student_parts = ("features", "rpn", "roi")
        student.proposal_generator = SimpleNamespace(in_features=list(levels))
    else:
        student.student_parts = ("features", "head")
        student.head_in_features = list(levels)
    teacher = SimpleNamespace(output_shape=lambda: shapes_t)
    return student, teacher


def record(features, anchors, gt_boxes_per_image):
    n = next(iter(features.values())).shape[0]
    gts = []
    for boxes in gt_boxes_per_image:
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.zeros(len(inst.gt_boxes), dtype=torch.int64)
        gts.append(inst)
    assert len(gts) == n
    images = ImageList(torch.zeros(n, 3, 64, 64), [(64, 64)] * n)
    rpn = RPNRecord(anchors=anchors, objectness_logits=[], anchor_deltas=[])
    return DetectorRecord(images=images, features=features, gt_instances=gts, rpn=rpn)


# ----------------------------------------------------------------------------- masks
def test_exact_match_single_cell_and_strict_threshold():
    # anchors of size 32 at stride 16: neighbours of an exactly matching anchor overlap by half,
    # IoU (16·32)/(2·32² − 16·32) = 1/3 < 0.5 (no +1) -> one cell
    anchors = [grid_anchors(4, 4, 16, [32])]
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    (m,) = fgfi_masks(anchors, [(4, 4)], gt, iou_plus_one=False)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 1] = True
    assert torch.equal(m, expected)


def test_tiny_gt_mask_grows():
    anchors = [grid_anchors(4, 4, 16, [32])]
    big = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    tiny = torch.tensor([[20.0, 20.0, 28.0, 28.0]])  # inside the 4 anchors at (0..1, 0..1)
    (m_big,) = fgfi_masks(anchors, [(4, 4)], big)
    (m_tiny,) = fgfi_masks(anchors, [(4, 4)], tiny)
    assert m_big.sum() == 1
    # every anchor containing the tiny box has the same (maximal) IoU -> 4 cells
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 0:2] = True
    assert torch.equal(m_tiny, expected)
    assert m_tiny.sum() > m_big.sum()


def test_no_gt_gives_empty_masks():
    anchors = [grid_anchors(4, 4, 16, [32]), grid_anchors(2, 2, 32, [64])]
    masks = fgfi_masks(anchors, [(4, 4), (2, 2)], torch.zeros(0, 4))
    assert [tuple(m.shape) for m in masks] == [(4, 4), (2, 2)]
    assert not any(m.any() for m in masks)


def test_several_gts_union():
    anchors = [grid_anchors(4, 4, 16, [32])]
    gts = torch.tensor([[16.0, 16.0, 48.0, 48.0], [0.0, 32.0, 32.0, 64.0]])
    (m,) = fgfi_masks(anchors, [(4, 4)], gts, iou_plus_one=False)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 1] = True
    expected[2, 0] = True
    assert torch.equal(m, expected)
    singles = [fgfi_masks(anchors, [(4, 4)], g[None], iou_plus_one=False)[0] for g in gts]
    assert torch.equal(m, singles[0] | singles[1])


def test_any_of_the_A_anchors_turns_a_location_on():
    # A = 2: a small (8) and a large (32) anchor per location; the GT matches a large one
    anchors = [grid_anchors(3, 3, 16, [8, 32])]
    gt = torch.tensor([[16.0, 0.0, 48.0, 32.0]])
    (m,) = fgfi_masks(anchors, [(3, 3)], gt, iou_plus_one=False)
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[0, 1] = True
    assert torch.equal(m, expected)


def test_plus_one_convention_changes_a_borderline_anchor():
    # GT == anchor 0 (IoU 1 -> threshold 0.5). Anchor 1 = GT widened to 20 px:
    # plain IoU = 100/200 = 0.5 (not > 0.5); "+1": 121/231 = 0.524 (> 0.5).
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0]]))]
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    (plain,) = fgfi_masks(anchors, [(1, 2)], gt, iou_plus_one=False)
    (plus1,) = fgfi_masks(anchors, [(1, 2)], gt, iou_plus_one=True)
    assert plain.tolist() == [[True, False]]
    assert plus1.tolist() == [[True, True]]
    iou = pairwise_iou_plus_one(anchors[0].tensor, gt)
    assert iou[:, 0].tolist() == pytest.approx([1.0, 121.0 / 231.0])


def test_max_over_all_levels_vs_per_level():
    # level a (stride 16, 32-px anchors) has an exact match (IoU 1 -> threshold 0.5 for all
    # levels); level b (stride 32, 64-px anchors) reaches IoU 0.25 at best
    anchors = [grid_anchors(4, 4, 16, [32]), grid_anchors(2, 2, 32, [64])]
    grids = [(4, 4), (2, 2)]
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    all_lv = fgfi_masks(anchors, grids, gt, max_over="all_levels", iou_plus_one=False)
    per_lv = fgfi_masks(anchors, grids, gt, max_over="per_level", iou_plus_one=False)
    assert all_lv[0].sum() == 1 and all_lv[1].sum() == 0
    assert torch.equal(per_lv[0], all_lv[0])
    assert per_lv[1].tolist() == [[True, False], [False, False]]


@pytest.mark.parametrize("plus_one", [True, False])
def test_masks_match_a_loop_transcription_of_the_reference(plus_one):
    gen = torch.Generator().manual_seed(0)
    anchors = [grid_anchors(6, 5, 8, [8, 16, 24]), grid_anchors(3, 3, 16, [16, 32, 48])]
    grids = [(6, 5), (3, 3)]
    for _ in range(5):
        xy = torch.rand(4, 2, generator=gen) * 40
        wh = torch.rand(4, 2, generator=gen) * 30 + 1
        gt = torch.cat([xy, xy + wh], dim=1).round()
        ours = fgfi_masks(anchors, grids, gt, iou_plus_one=plus_one, max_over="all_levels")
        ref = reference_masks(anchors, grids, gt, plus_one=plus_one)
        for a, b in zip(ours, ref):
            assert a.numpy().tolist() == b.tolist()


@pytest.mark.parametrize("plus_one", [True, False])
@pytest.mark.parametrize("max_over", ["all_levels", "per_level"])
def test_batched_masks_equal_the_reference_loop_image_by_image(plus_one, max_over):
    """One padded IoU for the batch (what FGFI.forward uses) = the loop transcription per image,
    with GT counts 0..4 in one batch (padding must never enter a mask or a threshold)."""
    gen = torch.Generator().manual_seed(1)
    anchors = [grid_anchors(6, 5, 8, [8, 16, 24]), grid_anchors(3, 3, 16, [16, 32, 48])]
    grids = [(6, 5), (3, 3)]
    gts = []
    for g in [3, 0, 1, 4]:
        xy = torch.rand(g, 2, generator=gen) * 40
        wh = torch.rand(g, 2, generator=gen) * 30 + 1
        gts.append(torch.cat([xy, xy + wh], dim=1).round())
    batch = fgfi_masks_batch(anchors, grids, gts, iou_plus_one=plus_one, max_over=max_over)
    assert [tuple(m.shape) for m in batch] == [(4, 6, 5), (4, 3, 3)]
    for i, gt in enumerate(gts):
        if max_over == "all_levels":
            ref = reference_masks(anchors, grids, gt, plus_one=plus_one)
        else:  # each level on its own is the all-levels rule over that level alone
            ref = [reference_masks([a], [hw], gt, plus_one=plus_one)[0] for a, hw in zip(anchors, grids)]
        for level, expected in zip(batch, ref):
            assert level[i].numpy().tolist() == expected.tolist()
    assert not batch[0][1].any() and not batch[1][1].any()  # the image without GT
    assert any(level.any() for level in batch)


# ----------------------------------------------------------------------------- adapter
def test_adapter_init_std_is_1e_4_and_folded_at_2_sigma():
    d = FGFI(in_features=["p4"])
    student, teacher = fake_models(["p4"], 64, 64, [16])
    d.bind(student, teacher)
    conv, relu = d.adapters["p4"][0], d.adapters["p4"][1]
    assert isinstance(relu, torch.nn.ReLU)
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    w = conv.weight.detach()
    assert w.abs().max() < 2e-4
    assert 0.7e-4 < w.std() < 1.05e-4  # fmod(N(0,1), 2) has std ~0.87
    assert conv.bias.abs().max() > 1e-3  # PyTorch default bias init kept
    w2 = torch.empty(256, 256)
    init_adapter_weight(w2, 1e-4, "trunc_normal")
    assert w2.abs().max() <= 2e-4


def test_defaults_and_schedule():
    d = FGFI()
    assert d.weight == 0.01 and d.psi == 0.5 and d.iou_plus_one and d.max_over == "all_levels"
    assert d.loss_factor(0) == 0.0 and d.loss_factor(399) == 0.0
    assert d.loss_factor(400) == pytest.approx(0.01)


def test_bind_errors_name_both_shapes():
    student, teacher = fake_models(["p4"], 64, 64, [16])
    teacher.output_shape = lambda: {"p4": ShapeSpec(channels=64, stride=8)}
    with pytest.raises(ValueError, match="stride 16 in the student.*8 in the teacher"):
        FGFI(in_features=["p4"]).bind(student, teacher)
    student, teacher = fake_models(["p4"], 64, 64, [16])
    with pytest.raises(ValueError, match="no anchors"):
        FGFI(in_features=["p5"]).bind(student, teacher)


# ----------------------------------------------------------------------------- loss
def _zero_adapter(d):
    for seq in d.adapters.values():
        torch.nn.init.zeros_(seq[0].weight)
        torch.nn.init.zeros_(seq[0].bias)


def test_loss_normaliser_is_spatial_count_not_times_channels():
    # one level 4x4, stride 16, 32-px anchors; zero adapter -> student side 0; teacher all ones,
    # C = 3. Image 0: GTs on cells (1,1) and (2,0); image 1: GT on (0,0). N_p = 3 cells.
    # L = Σ_cells Σ_c 1 / (2·3) = 9 / 6 = 1.5
    d = FGFI(in_features=["p4"], iou_plus_one=False, adapter_relu=False)
    student, teacher = fake_models(["p4"], 2, 3, [16])
    d.bind(student, teacher)
    _zero_adapter(d)
    anchors = [grid_anchors(4, 4, 16, [32])]
    s = torch.randn(2, 2, 4, 4, requires_grad=True)
    t = torch.ones(2, 3, 4, 4)
    srec = record({"p4": s}, anchors, [[[16, 16, 48, 48], [0, 32, 32, 64]], [[0, 0, 32, 32]]])
    trec = DetectorRecord(images=srec.images, features={"p4": t})
    loss = d(srec, trec)["imitation"]
    assert loss.item() == pytest.approx(1.5)


def test_loss_value_against_a_direct_loop():
    torch.manual_seed(0)
    d = FGFI(in_features=["p3", "p4"], adapter_relu=True)
    student, teacher = fake_models(["p3", "p4"], 2, 3, [8, 16])
    d.bind(student, teacher)
    for seq in d.adapters.values():  # a non-trivial adapter
        torch.nn.init.normal_(seq[0].weight, std=0.3)
    anchors = [grid_anchors(8, 8, 8, [16, 24]), grid_anchors(4, 4, 16, [32, 48])]
    feats_s = {"p3": torch.randn(2, 2, 8, 8), "p4": torch.randn(2, 2, 4, 4)}
    feats_t = {"p3": torch.randn(2, 3, 8, 8), "p4": torch.randn(2, 3, 4, 4)}
    gts = [[[5, 7, 30, 33], [40, 40, 60, 62]], [[10, 10, 14, 15]]]
    srec = record(feats_s, anchors, gts)
    trec = DetectorRecord(images=srec.images, features=feats_t)
    loss = d(srec, trec)["imitation"]
    num, count = 0.0, 0
    for i in range(2):
        masks = reference_masks(anchors, [(8, 8), (4, 4)], torch.tensor(gts[i], dtype=torch.float32))
        for k, level in enumerate(["p3", "p4"]):
            a = d.adapters[level](feats_s[level][i : i + 1])[0]
            for y in range(masks[k].shape[0]):
                for x in range(masks[k].shape[1]):
                    if masks[k][y, x]:
                        count += 1
                        num += float(((a.detach()[:, y, x] - feats_t[level][i, :, y, x]) ** 2).sum())
    assert count > 0
    assert loss.item() == pytest.approx(num / (2 * count), rel=1e-5)


@pytest.mark.parametrize("relu", [True, False])
def test_adapter_at_mask_cells_equals_the_dense_conv_values_and_gradients(relu):
    """FGFI evaluates its 3x3 adapter only at mask cells; values and the gradients reaching the
    student features and the adapter equal those of the dense conv read at the same cells
    (border cells included: the conv's zero padding)."""
    torch.manual_seed(0)
    d = FGFI(in_features=["p3"], adapter_relu=relu)
    student, teacher = fake_models(["p3"], 4, 6, [8])
    d.bind(student, teacher)
    torch.nn.init.normal_(d.adapters["p3"][0].weight, std=0.3)
    torch.nn.init.normal_(d.adapters["p3"][0].bias, std=0.3)
    mask = torch.rand(2, 5, 7) < 0.4
    mask[0, 0, 0] = mask[1, 4, 6] = True  # corners: padding matters there
    target = torch.randn(int(mask.sum()), 6)
    grads = []
    for sparse in (True, False):
        s = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(1)).requires_grad_()
        d.zero_grad()
        out = d.adapt_at("p3", s, mask) if sparse else d.adapters["p3"](s).permute(0, 2, 3, 1)[mask]
        ((out - target) ** 2).sum().backward()
        grads.append((out.detach(), s.grad, d.adapters["p3"][0].weight.grad.clone(), d.adapters["p3"][0].bias.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert grads[0][1].abs().sum() > 0


def test_no_gt_batch_gives_finite_zero_that_keeps_the_graph():
    d = FGFI(in_features=["p4"])
    student, teacher = fake_models(["p4"], 2, 3, [16])
    d.bind(student, teacher)
    s = torch.randn(2, 2, 4, 4, requires_grad=True)
    srec = record({"p4": s}, [grid_anchors(4, 4, 16, [32])], [[], []])
    trec = DetectorRecord(images=srec.images, features={"p4": torch.randn(2, 3, 4, 4)})
    loss = d(srec, trec)["imitation"]
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert d.adapters["p4"][0].weight.grad is not None
    assert torch.all(d.adapters["p4"][0].weight.grad == 0)


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


def build(config, teachers, iteration_overrides=()):
    cfg = LazyConfig.load(f"configs/shapes/{config}.py")
    cfg = LazyConfig.apply_overrides(
        cfg,
        ["dataloader.train.total_batch_size=2", "dataloader.train.dataset.names=shapes_tiny_train", *iteration_overrides],
    )
    cfg.model.teacher.weights = teachers["retinanet" if config.startswith("retinanet") else "faster_rcnn"]
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    return cfg, model


@pytest.mark.parametrize("config", ["retinanet_fgfi", "faster_rcnn_fgfi"])
def test_shapes_config_runs_two_iterations(config, teachers):
    t0 = time.time()
    cfg, model = build(config, teachers)
    (d,) = model.distillers
    assert isinstance(d, FGFI)
    train_two_steps(cfg, model, {"loss_kd_fgfi_imitation"}, start_iter=1000)  # after the warm-up
    assert time.time() - t0 < 30


@pytest.mark.parametrize("config", ["retinanet_fgfi", "faster_rcnn_fgfi"])
def test_gradients_reach_student_and_adapters_only(config, teachers):
    cfg, model = build(config, teachers)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    d = model.distillers[0]
    masks_of_step = []  # the masks the distiller computes in the step, seen by a spy on FGFI.masks

    def spy(student_record, masks=d.masks):
        masks_of_step.append(masks(student_record))
        return masks_of_step[-1]

    d.masks = spy
    with EventStorage(1000):
        losses = model(batch)
    kd = losses["loss_kd_fgfi_imitation"]
    assert kd.item() > 0
    kd.backward()
    teacher_params = list(model.teacher.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher_params)
    assert all(p.grad is not None for p in d.parameters())
    # adapters of the levels where the batch has mask cells get a non-zero gradient
    (masks,) = masks_of_step
    on_levels = [lv for lv, mask in zip(d.in_features, masks) if mask.sum() > 0]
    assert on_levels
    for lv in on_levels:
        assert all(p.grad.abs().sum() > 0 for p in d.adapters[lv].parameters())
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)
    assert d.student_needs() == ({"head"} if config.startswith("retinanet") else {"rpn"})


def test_warmup_multiplies_by_zero(teachers):
    cfg, model = build("faster_rcnn_fgfi", teachers)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    warm = model.distillers[0].schedule.warmup_iters
    with EventStorage(0):
        assert model(batch)["loss_kd_fgfi_imitation"].item() == 0.0
    with EventStorage(warm):
        assert model(batch)["loss_kd_fgfi_imitation"].item() > 0.0


def test_visualize_tool_writes_one_png_per_level(tmp_path):
    import importlib.util

    from PIL import Image

    spec = importlib.util.spec_from_file_location("visualize_fgfi_mask", "tools/visualize_fgfi_mask.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    written = tool.main(["--config-file", "configs/shapes/faster_rcnn_fgfi.py", "--output", str(tmp_path),
                         "--dataset", "shapes_tiny_val", "--num-images", "1"])
    levels = ["p2", "p3", "p4", "p5", "p6"]
    assert sorted(os.path.basename(p) for p in written) == sorted([f"0_{lv}.png" for lv in levels] + ["0_all.png"])
    img = Image.open(tmp_path / "0_p3.png")
    assert img.size == (128, 128 + 14)
    # the drawn masks are FGFI's: same anchors, same rule as the distiller
    cfg = LazyConfig.load("configs/shapes/faster_rcnn_fgfi.py")
    from d2kd.export import student_model_config

    model = instantiate(student_model_config(cfg.model)).eval()
    image = torch.zeros(3, 128, 128)
    gt = torch.tensor([[10.0, 20.0, 50.0, 70.0], [90.0, 90.0, 100.0, 98.0]])
    masks = tool.compute_masks(model, image, gt, in_features=levels)
    feats = {lv: torch.zeros(1, 1, 128 // s, 128 // s) for lv, s in zip(levels, [4, 8, 16, 32, 64])}
    anchors = model.proposal_generator.anchor_generator([feats[lv] for lv in levels])
    direct = fgfi_masks(anchors, [tuple(feats[lv].shape[-2:]) for lv in levels], gt)
    for lv, m in zip(levels, direct):
        assert torch.equal(masks[lv][0], m)
    assert sum(int(m.sum()) for m in direct) > 0
