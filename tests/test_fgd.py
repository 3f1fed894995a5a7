"""FGD (d2kd/distill/fgd.py): the masks from boxes on hand-built maps, the attention with its
temperature by hand, each term against a transcription of the reference's code, zeros where they
should be, images without GT, build errors, gradients, export, the shapes configs and the COCO
configs on a fake COCO tree."""
import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import math  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
from d2kd.distill.fgd import FGD, ContextBlock, fgd_attention, fgd_masks  # noqa: E402
from d2kd.records import DetectorRecord  # noqa: E402
from feature_kd_helpers import (  # noqa: E402
    assert_export_strips_the_distillers, build_shapes, fake_models, random_teachers, train_two_steps)
from test_coco_configs_gkd import TRAIN, _save_random_weights, fake_coco  # noqa: E402,F401

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def records(s_feats, t_feats, gt_boxes, image_sizes, padded):
    n = len(gt_boxes)
    gts = []
    for boxes, size in zip(gt_boxes, image_sizes):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.zeros(len(inst.gt_boxes), dtype=torch.int64)
        gts.append(inst)
    images = ImageList(torch.zeros(n, 3, *padded), list(image_sizes))
    return (DetectorRecord(images=images, features=s_feats, gt_instances=gts),
            DetectorRecord(images=images, features=t_feats))


def reference_masks(gt_bboxes, img_shapes, H, W):
    """A line-by-line transcription of the reference's mask loop (fgd.py FeatureLoss.forward)."""
    N = len(gt_bboxes)
    Mask_fg = torch.zeros(N, H, W)
    Mask_bg = torch.ones(N, H, W)
    for i in range(N):
        new_boxxes = torch.ones_like(gt_bboxes[i])
        new_boxxes[:, 0] = gt_bboxes[i][:, 0] / img_shapes[i][1] * W
        new_boxxes[:, 2] = gt_bboxes[i][:, 2] / img_shapes[i][1] * W
        new_boxxes[:, 1] = gt_bboxes[i][:, 1] / img_shapes[i][0] * H
        new_boxxes[:, 3] = gt_bboxes[i][:, 3] / img_shapes[i][0] * H
        wmin, wmax = torch.floor(new_boxxes[:, 0]).int(), torch.ceil(new_boxxes[:, 2]).int()
        hmin, hmax = torch.floor(new_boxxes[:, 1]).int(), torch.ceil(new_boxxes[:, 3]).int()
        area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1 - wmin.view(1, -1))
        for j in range(len(gt_bboxes[i])):
            Mask_fg[i][hmin[j]:hmax[j] + 1, wmin[j]:wmax[j] + 1] = torch.maximum(
                Mask_fg[i][hmin[j]:hmax[j] + 1, wmin[j]:wmax[j] + 1], area[0][j])
        Mask_bg[i] = torch.where(Mask_fg[i] > 0, 0, 1)
        if torch.sum(Mask_bg[i]):
            Mask_bg[i] /= torch.sum(Mask_bg[i])
    return Mask_fg, Mask_bg


def reference_terms(d, level, preds_S, preds_T, Mask_fg, Mask_bg, temp):
    """The reference's get_attention / get_fea_loss / get_mask_loss / get_rela_loss, transcribed
    (sqrt-weighted maps and MSELoss(sum) / N; the spatial pool by unsqueeze + matmul), with the
    distiller's own context blocks as conv_mask_s/t and channel_add_conv_s/t."""
    def get_attention(preds):
        N, C, H, W = preds.shape
        value = torch.abs(preds)
        fea_map = value.mean(axis=1, keepdim=True)
        S = (H * W * F.softmax((fea_map / temp).view(N, -1), dim=1)).view(N, H, W)
        channel_map = value.mean(axis=2, keepdim=False).mean(axis=2, keepdim=False)
        return S, C * F.softmax(channel_map / temp, dim=1)

    mse = torch.nn.MSELoss(reduction="sum")
    S_t, C_t = get_attention(preds_T)
    S_s, C_s = get_attention(preds_S)
    fea_t = preds_T * torch.sqrt(S_t.unsqueeze(1)) * torch.sqrt(C_t[:, :, None, None])
    fea_s = preds_S * torch.sqrt(S_t.unsqueeze(1)) * torch.sqrt(C_t[:, :, None, None])
    fg = mse(fea_s * torch.sqrt(Mask_fg.unsqueeze(1)), fea_t * torch.sqrt(Mask_fg.unsqueeze(1))) / len(Mask_fg)
    bg = mse(fea_s * torch.sqrt(Mask_bg.unsqueeze(1)), fea_t * torch.sqrt(Mask_bg.unsqueeze(1))) / len(Mask_bg)
    mask = torch.sum(torch.abs(C_s - C_t)) / len(C_s) + torch.sum(torch.abs(S_s - S_t)) / len(S_s)

    def spatial_pool(x, block):
        batch, channel, width, height = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = F.softmax(block.conv_mask(x).view(batch, 1, height * width), dim=2).unsqueeze(-1)
        return torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)

    bs, bt = d.context_student[level], d.context_teacher[level]
    out_s = preds_S + bs.channel_add(spatial_pool(preds_S, bs))
    out_t = preds_T + bt.channel_add(spatial_pool(preds_T, bt))
    rela = mse(out_s, out_t) / len(out_s)
    return {"fg": fg, "bg": bg, "attention": mask, "relation": rela}


# ----------------------------------------------------------------------------- masks
def test_masks_from_boxes_on_a_hand_built_map():
    # image 32x48 on a 4x6 map (1/8): box A [8, 8, 20, 15] -> x 1..2.5, y 1..1.875 ->
    # cells rows [1, 2] x cols [1, 3], S = 1/((2+1-1)(3+1-1)) = 1/6; box B [16, 8, 23, 15] ->
    # rows [1, 2] x cols [2, 3], S = 1/4 (the smaller box wins where they overlap)
    boxes = torch.tensor([[8.0, 8.0, 20.0, 15.0], [16.0, 8.0, 23.0, 15.0]])
    fg, bg = fgd_masks([boxes], [(32.0, 48.0)], 4, 6)
    a, b = 1 / 6, 1 / 4
    expected = torch.tensor([
        [0, 0, 0, 0, 0, 0],
        [0, a, b, b, 0, 0],
        [0, a, b, b, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ])
    torch.testing.assert_close(fg[0], expected)
    torch.testing.assert_close(bg[0], (expected == 0).float() / 18)  # 24 cells − 6 foreground
    assert bg.sum().item() == pytest.approx(1.0)


def test_masks_match_the_reference_loop_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    sizes = [(40.0, 56.0), (48.0, 64.0), (30.0, 30.0)]
    boxes = []
    for (h, w), k in zip(sizes, [3, 0, 5]):
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = torch.rand(k, 2, generator=g) * 20 + 0.5
        x2y2 = torch.minimum(xy + wh, torch.tensor([w, h]))
        boxes.append(torch.cat([xy, x2y2], dim=1))
    ours = fgd_masks(boxes, sizes, 6, 8)
    ref = reference_masks(boxes, sizes, 6, 8)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    assert ours[0][1].sum() == 0 and ours[1][1].sum().item() == pytest.approx(1.0)  # no GT: uniform background


def test_box_frame_image_is_the_references_stretch_and_padded_is_exact():
    # image 32x40 padded to 32x48 (4x6 map, stride 8); a box touching the right image edge
    d_img = FGD(in_features=["p3"])
    d_pad = FGD(in_features=["p3"], box_frame="padded")
    s, t = records({}, {}, [[[24.0, 8.0, 40.0, 16.0]]], [(32, 40)], (32, 48))
    assert d_img.frame_sizes(s) == [(32.0, 40.0)] and d_pad.frame_sizes(s) == [(32.0, 48.0)]
    boxes = [s.gt_instances[0].gt_boxes.tensor]
    fg_img, _ = fgd_masks(boxes, d_img.frame_sizes(s), 4, 6)
    fg_pad, _ = fgd_masks(boxes, d_pad.frame_sizes(s), 4, 6)
    # image frame: x 24/40*6 = 3.6 .. 6 -> cols [3, 6] (clipped at 5), S = 1/((2+1-1)(6+1-3)) = 1/8
    # padded frame: x 3 .. 5 -> cols [3, 5], S = 1/((2)(3)) = 1/6
    assert (fg_img[0] > 0).nonzero()[:, 1].unique().tolist() == [3, 4, 5]
    assert fg_img[0].max().item() == pytest.approx(1 / 8) and fg_pad[0].max().item() == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="box_frame"):
        FGD(box_frame="stride")


# ----------------------------------------------------------------------------- attention
def test_attention_with_temperature_by_hand():
    # channel 0 = [1, −3], channel 1 = [1, 1] on a 1x2 map: mean_c|x| = [1, 2], mean_hw|x| = [2, 1]
    x = torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]])
    spatial, channel = fgd_attention(x, 0.5)
    e = math.exp(2.0)  # softmax([2, 4]) = [1, e²] / (1 + e²)
    torch.testing.assert_close(spatial, torch.tensor([[[2 / (1 + e), 2 * e / (1 + e)]]]))
    torch.testing.assert_close(channel, torch.tensor([[2 * e / (1 + e), 2 / (1 + e)]]))
    spatial_t1, _ = fgd_attention(x, 1.0)  # a higher temperature flattens it
    assert spatial_t1[0, 0, 1] < spatial[0, 0, 1]
    assert spatial.sum().item() == pytest.approx(2.0) and channel.sum().item() == pytest.approx(2.0)


# ----------------------------------------------------------------------------- the terms
def _bound(s_ch=3, t_ch=4, **kwargs):
    d = FGD(in_features=["p3"], **kwargs)
    d.bind(*fake_models({"p3": (s_ch, 8)}, {"p3": (t_ch, 8)}))
    return d


def _perturb_context_blocks(d, std=0.3):
    g = torch.Generator().manual_seed(5)
    for blocks in (d.context_student, d.context_teacher):
        for p in blocks.parameters():
            with torch.no_grad():
                p.add_(torch.randn(p.shape, generator=g) * std)


def test_each_term_equals_the_reference_code():
    torch.manual_seed(0)
    coef = dict(alpha_fgd=0.3, beta_fgd=0.7, gamma_fgd=1.1, lambda_fgd=0.13)
    d = _bound(temperature=0.8, **coef)
    _perturb_context_blocks(d)  # non-trivial GcBlocks (the reference's init makes R(F) = F)
    s, t = torch.randn(2, 3, 4, 6), torch.randn(2, 4, 4, 6)
    gts = [[[8.0, 8.0, 20.0, 15.0], [16.0, 8.0, 23.0, 15.0]], [[0.0, 0.0, 9.0, 30.0]]]
    srec, trec = records({"p3": s}, {"p3": t}, gts, [(32, 48), (30, 44)], (32, 48))
    ours = d(srec, trec)
    aligned = d.align["p3"](s)
    fg, bg = reference_masks([torch.tensor(b) for b in gts], [(32, 48), (30, 44)], 4, 6)
    ref = reference_terms(d, "p3", aligned, t, fg, bg, 0.8)
    for key, c in zip(("fg", "bg", "attention", "relation"), coef.values()):
        assert ours[key].item() == pytest.approx(c * ref[key].item(), rel=1e-5), key
        assert ref[key].item() > 0


def test_terms_sum_over_levels():
    d = FGD(in_features=["p3", "p4"], alpha_fgd=1, beta_fgd=1, gamma_fgd=1, lambda_fgd=1)
    d.bind(*fake_models({"p3": (4, 8), "p4": (4, 16)}, {"p3": (4, 8), "p4": (4, 16)}))
    feats = lambda: {"p3": torch.randn(1, 4, 4, 6), "p4": torch.randn(1, 4, 2, 3)}  # noqa: E731
    s, t = feats(), feats()
    gts, sizes = [[[8.0, 8.0, 30.0, 20.0]]], [(32, 48)]
    both = d(*records(s, t, gts, sizes, (32, 48)))
    single = []
    for lv in ("p3", "p4"):
        one = FGD(in_features=[lv], alpha_fgd=1, beta_fgd=1, gamma_fgd=1, lambda_fgd=1)
        one.bind(*fake_models({"p3": (4, 8), "p4": (4, 16)}, {"p3": (4, 8), "p4": (4, 16)}))
        one.load_state_dict({k: v for k, v in d.state_dict().items() if f".{lv}." in k})
        single.append(one(*records({lv: s[lv]}, {lv: t[lv]}, gts, sizes, (32, 48))))
    for key in both:
        assert both[key].item() == pytest.approx(single[0][key].item() + single[1][key].item(), rel=1e-6)


def test_student_equal_to_teacher_gives_zero_feature_and_attention_terms():
    d = _bound(s_ch=4, t_ch=4)
    assert len(d.align) == 0
    t = torch.randn(2, 4, 4, 6)
    srec, trec = records({"p3": t.clone()}, {"p3": t}, [[[8.0, 8.0, 20.0, 15.0]], []], [(32, 48)] * 2, (32, 48))
    out = d(srec, trec)
    assert out["fg"].item() == 0.0 and out["bg"].item() == 0.0 and out["attention"].item() == 0.0
    # the reference's init: the last conv of channel_add is zero, so R(F) = F on both sides -> 0
    assert out["relation"].item() == 0.0
    with torch.no_grad():  # a trained teacher-side block: the relation term sees it
        d.context_teacher["p3"].channel_add[-1].bias.fill_(0.1)
    # Σ over N·C·H·W cells of 0.1², / N, × λ (5e-6)
    assert d(srec, trec)["relation"].item() == pytest.approx(5e-6 * 2 * 4 * 4 * 6 * 0.01 / 2, rel=1e-5)


def test_images_without_gt_give_finite_losses():
    d = _bound()
    s, t = torch.randn(2, 3, 4, 6, requires_grad=True), torch.randn(2, 4, 4, 6)
    for gts in ([[], []], [[[8.0, 8.0, 20.0, 15.0]], []]):
        out = d(*records({"p3": s}, {"p3": t}, gts, [(32, 48)] * 2, (32, 48)))
        assert all(torch.isfinite(v) for v in out.values())
        assert out["bg"].item() > 0 and out["attention"].item() > 0
        if not any(gts):
            assert out["fg"].item() == 0.0
        sum(out.values()).backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        s.grad = None
    srec, trec = records({"p3": s}, {"p3": t}, [[], []], [(32, 48)] * 2, (32, 48))
    srec.gt_instances = []  # a record without its GT is refused, not read as "no objects"
    with pytest.raises(ValueError, match="GT boxes of every image.*got 0 for 2 images"):
        d(srec, trec)


def test_context_block_is_the_gcnet_block_with_the_reference_init():
    torch.manual_seed(0)
    block = ContextBlock(8)
    assert block.conv_mask.out_channels == 1 and torch.all(block.conv_mask.bias == 0)
    assert block.conv_mask.weight.std().item() == pytest.approx(math.sqrt(2 / 8), rel=0.5)  # kaiming fan_in, ReLU gain
    assert [type(m).__name__ for m in block.channel_add] == ["Conv2d", "LayerNorm", "ReLU", "Conv2d"]
    assert block.channel_add[0].out_channels == 4 and tuple(block.channel_add[1].normalized_shape) == (4, 1, 1)
    x = torch.randn(2, 8, 3, 5)
    assert torch.equal(block(x), x)  # the last conv starts at zero


def test_defaults_arguments_and_build_errors():
    d = FGD()
    assert (d.temperature, d.alpha_fgd, d.beta_fgd, d.gamma_fgd, d.lambda_fgd, d.box_frame, d.weight) == (
        0.5, 1e-3, 5e-4, 5e-4, 5e-6, "image", 1.0)
    with pytest.raises(ValueError, match="temperature"):
        FGD(temperature=0)
    with pytest.raises(ValueError, match="gamma_fgd"):
        FGD(gamma_fgd=-1)
    frcnn = {f"p{k}": (32, 2**k) for k in range(2, 7)}
    retina = {f"p{k}": (128, 2**k) for k in range(3, 8)}
    d = FGD()
    d.bind(*fake_models(frcnn, retina))
    assert d.in_features == ["p3", "p4", "p5", "p6"] and set(d.align) == set(d.in_features)
    with pytest.raises(ValueError, match=r"'p7' is missing from the student.*student \{.*p2.*teacher \{.*p7"):
        FGD(in_features=["p7"]).bind(*fake_models(frcnn, retina))
    with pytest.raises(ValueError, match=r"stride 16 in the student but 8 in the teacher \(student \{p4: stride 16, 32 ch\}, teacher \{p4: stride 8, 128 ch\}\)"):
        FGD(in_features=["p4"]).bind(*fake_models({"p4": (32, 16)}, {"p4": (128, 8)}))
    with pytest.raises(ValueError, match=r"no feature level with the same stride.*stride 16, 32 ch.*stride 8, 128 ch"):
        FGD().bind(*fake_models({"p4": (32, 16)}, {"p4": (128, 8)}))


# ----------------------------------------------------------------------------- full models
@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teachers(tmp_path_factory)


@pytest.mark.parametrize("config,levels", [("retinanet_fgd", ["p3", "p4", "p5"]), ("faster_rcnn_fgd", ["p2", "p3", "p4", "p5"])])
def test_shapes_config_two_iterations_gradients_and_export(config, levels, teachers):
    cfg, model = build_shapes(config, teachers)
    (d,) = model.distillers
    assert isinstance(d, FGD) and d.in_features == levels and set(d.align) == set(levels)  # 32 -> 128 ch
    loader = iter(instantiate(cfg.dataloader.train))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with EventStorage(0):
        for it in range(2):
            losses = model(next(loader))
            kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_fgd_")}
            assert set(kd) == {f"loss_kd_fgd_{t}" for t in ("fg", "bg", "attention", "relation")}
            assert all(torch.isfinite(v) for v in losses.values())
            opt.zero_grad()
            if it == 0:  # the KD terms alone reach the student, the align convs and both GcBlocks; the teacher none
                sum(kd.values()).backward(retain_graph=True)
                assert all(not p.requires_grad and p.grad is None for p in model.teacher.model.parameters())
                assert all(p.grad is not None for p in d.parameters())
                assert all(p.grad.abs().sum() > 0 for p in d.align.parameters())
                for blocks in (d.context_student, d.context_teacher):  # the zero-init last conv learns first
                    assert all(b.channel_add[-1].weight.grad.abs().sum() > 0 for b in blocks.values())
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
                opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    assert_export_strips_the_distillers(cfg, model, "context_teacher")


# ----------------------------------------------------------------------------- COCO
COCO = {
    "configs/coco/retinanet_R101_R50_fgd.py": dict(
        teacher="configs/coco/retinanet_R101_2x.py", levels=["p3", "p4", "p5", "p6", "p7"], lr=0.01,
        coef=(0.5, 1e-3, 5e-4, 5e-4, 5e-6)),
    "configs/coco/faster_rcnn_R101_R50_fgd.py": dict(
        teacher="configs/coco/faster_rcnn_R101_2x.py", levels=["p2", "p3", "p4", "p5"], lr=0.02,
        coef=(0.5, 5e-5, 2.5e-5, 5e-5, 5e-7)),
}


@pytest.mark.parametrize("path", sorted(COCO))
def test_coco_config_builds_and_trains_two_iterations(path, fake_coco, tmp_path):  # noqa: F811
    want = COCO[path]
    cfg = LazyConfig.load(path)
    d = cfg.model.distillers[0]
    assert (d.temperature, d.alpha_fgd, d.beta_fgd, d.gamma_fgd, d.lambda_fgd) == want["coef"]
    assert list(d.in_features) == want["levels"] and d.box_frame == "image"
    assert cfg.train.clip_grad_norm == 35.0 and cfg.train.max_iter == 180000 and cfg.optimizer.lr == want["lr"]
    assert cfg.model.teacher.config_file == want["teacher"] and cfg.model.backbone.bottom_up.stages.depth == 50
    teacher_cfg = LazyConfig.load(want["teacher"])
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
    fgd = model.distillers[0]
    assert len(fgd.align) == 0 and list(fgd.context_student) == want["levels"]  # 256 ch both sides
    cfg.optimizer.params.model = model
    train_two_steps(cfg, model, {f"loss_kd_fgd_{t}" for t in ("fg", "bg", "attention", "relation")},
                    optimizer=instantiate(cfg.optimizer))
    assert all(p.grad is None for p in model.teacher.model.parameters())
