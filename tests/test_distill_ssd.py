"""DistillationSSD: teacher SSD record, prior-layout checks, μ-scaling of the hard loss through
``detector_loss_scales``, gradients, eval = plain student, export into the stock SSD."""
import copy

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: F401,E402
from d2kd.distill import Chen2017, KDSchedule  # noqa: E402
from d2kd.export import export_student, student_state_dict  # noqa: E402
from d2kd.modeling.backbone.mobilenetv2_ssdlite import MobileNetV2SSDLite  # noqa: E402
from d2kd.modeling.backbone.ssd_vgg import VGG16SSD  # noqa: E402
from d2kd.modeling.meta_arch import DistillationSSD  # noqa: E402
from d2kd.modeling.meta_arch.ssd import PRIOR_PRESETS, SSD, SSDPriorGenerator  # noqa: E402
from d2kd.teacher import Teacher  # noqa: E402

torch.set_num_threads(1)


def _priors(preset="aligned"):
    return SSDPriorGenerator(**{**PRIOR_PRESETS[preset], "steps": None})


def _teacher(preset="aligned"):
    torch.manual_seed(1)
    m = SSD(backbone=VGG16SSD(layout="aligned", width_mult=0.125,
                              out_features=["fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2", "conv4_3"]),
            prior_generator=_priors(preset), num_classes=3, head_type="conv",
            head_in_features=["fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"])
    return Teacher(m)


def _student_kwargs():
    torch.manual_seed(0)
    return dict(backbone=MobileNetV2SSDLite(width_mult=0.35, out_features=[
        "expand14", "last", "extra0", "extra1", "extra2", "extra3", "expand7"]),
        prior_generator=_priors(), num_classes=3, head_type="ssdlite",
        head_in_features=["expand14", "last", "extra0", "extra1", "extra2", "extra3"])


def _model(distillers, teacher=None):
    return DistillationSSD(teacher=teacher or _teacher(), distillers=distillers, **_student_kwargs())


def _batch(n=2, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 40.0, 120.0, 110.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        out.append({"image": torch.randint(0, 256, (3, size, size), generator=g).float(), "instances": inst,
                    "height": size, "width": size})
    return out


def _stock(model):
    """The student alone, as a stock SSD with the distillation model's weights."""
    stock = SSD(**_student_kwargs())
    res = stock.load_state_dict(student_state_dict(model.state_dict()), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    return stock


def test_training_step_scales_hard_loss_and_adds_kd_terms():
    model = _model([Chen2017()]).train()
    stock = _stock(model).train()
    batch = _batch()
    with EventStorage(0):
        losses = model(batch)
        ref = stock(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_kd_chen2017_soft", "loss_kd_chen2017_bounded",
                           "loss_kd_chen2017_hint"}
    assert losses["loss_cls"].item() == pytest.approx(0.5 * ref["loss_cls"].item(), rel=1e-5)  # u = 0.5
    assert losses["loss_box_reg"].item() == pytest.approx(ref["loss_box_reg"].item(), rel=1e-5)  # λ = 1
    assert all(torch.isfinite(v) for v in losses.values())
    # λ ≠ 1 scales the SmoothL1 term too; a schedule still "off" leaves the hard losses alone
    model = _model([Chen2017(lam=2.0, mu=0.25)]).train()
    with EventStorage(0):
        losses = model(batch)
    assert losses["loss_cls"].item() == pytest.approx(0.25 * ref["loss_cls"].item(), rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(2.0 * ref["loss_box_reg"].item(), rel=1e-5)
    model = _model([Chen2017(schedule=KDSchedule(warmup_iters=5))]).train()
    with EventStorage(0):
        losses = model(batch)
    assert losses["loss_cls"].item() == pytest.approx(ref["loss_cls"].item(), rel=1e-5)
    assert all(losses[k].item() == 0.0 for k in losses if k.startswith("loss_kd_"))
    with EventStorage(5):
        losses = model(batch)
    assert losses["loss_cls"].item() == pytest.approx(0.5 * ref["loss_cls"].item(), rel=1e-5)


def test_teacher_record_matches_teacher_forward_and_gradients_reach_only_student():
    model = _model([Chen2017(variant="paper")]).train()
    captured = {}
    orig = model.teacher.record

    def spy(*a, **kw):
        captured["rec"] = orig(*a, **kw)
        return captured["rec"]

    model.teacher.record = spy
    batch = _batch()
    with EventStorage(0):
        losses = model(batch)
    rec = captured["rec"].ssd
    t = model.teacher.model
    with torch.no_grad():
        logits, deltas = t.predict(t.extract_features(t.preprocess_image(batch)))
    assert torch.allclose(rec.logits, logits) and torch.allclose(rec.deltas, deltas)
    assert not rec.logits.requires_grad
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert model.distillers[0].adapters["hint"].weight.grad is not None
    assert model.backbone.features[7].conv[0].weight.grad is not None  # expand7 gets the hint gradient


def test_prior_layout_mismatch_is_an_error_naming_both():
    with pytest.raises(ValueError, match="prior layout") as e:
        _model([Chen2017()], teacher=_teacher(preset="classic"))
    assert "min_sizes" in str(e.value)
    # source sizes that differ on a batch (VGG pools floor, MobileNetV2 convs ceil at odd sizes)
    model = _model([Chen2017()]).train()
    with EventStorage(0), pytest.raises(ValueError, match="differ from the teacher"):
        model(_batch(size=100))


def test_paper_variant_needs_hint_layers():
    t = _teacher()
    kw = _student_kwargs()
    kw["backbone"] = MobileNetV2SSDLite(width_mult=0.35)  # sources only: no expand7
    with pytest.raises(ValueError, match="expand7"):
        DistillationSSD(teacher=t, distillers=[Chen2017(variant="paper")], **kw)


def test_eval_is_the_plain_student_and_never_runs_the_teacher():
    model = _model([Chen2017(variant="paper")]).eval()

    def boom(*a, **kw):
        raise AssertionError("teacher ran in eval")

    model.teacher.record = boom
    model.teacher.model.forward = boom
    stock = _stock(model).eval()
    batch = [{"image": x["image"], "height": 256, "width": 128} for x in _batch()]
    with torch.no_grad():
        a, b = model(batch), stock(batch)
    for x, y in zip(a, b):
        assert len(x["instances"]) > 0
        assert torch.equal(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)
        assert torch.equal(x["instances"].scores, y["instances"].scores)


def test_train_mode_keeps_teacher_frozen_in_eval():
    model = _model([Chen2017()])
    model.train()
    assert model.training and not model.teacher.model.training
    assert not any(k.startswith("teacher") for k in model.state_dict())


def test_export_of_the_shapes_student_loads_into_stock_ssd(tmp_path):
    cfg = LazyConfig.load("configs/shapes/ssd_chen2017_paper.py")
    teacher_cfg = LazyConfig.load(cfg.model.teacher.config_file)
    torch.manual_seed(0)
    torch.save({"model": instantiate(teacher_cfg.model).state_dict()}, tmp_path / "t.pth")
    cfg.model.teacher.weights = str(tmp_path / "t.pth")
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert len(model.distillers[0].adapters) == 1
    with EventStorage(0):  # one step so BN statistics and the adapter are not at init
        model.train()
        losses = model(_batch(seed=3))
        sum(losses.values()).backward()
    torch.save({"model": model.state_dict()}, tmp_path / "run.pth")
    paths = export_student(cfg, str(tmp_path / "run.pth"), str(tmp_path / "export"))
    exported = LazyConfig.load(paths["config"])
    stock = instantiate(exported.model)
    assert type(stock) is SSD
    sd = torch.load(paths["weights"], weights_only=True)["model"]
    res = stock.load_state_dict(sd, strict=False)
    assert not res.missing_keys and not res.unexpected_keys
    model.eval()
    stock.eval()
    batch = [{"image": x["image"]} for x in _batch(seed=4)]
    with torch.no_grad():
        a, b = model(copy.deepcopy(batch)), stock(batch)
    for x, y in zip(a, b):
        assert torch.allclose(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)
        assert torch.allclose(x["instances"].scores, y["instances"].scores)


def test_detector_loss_scale_of_an_unknown_loss_is_an_error():
    class Bad(Chen2017):
        def detector_loss_scales(self):
            return {"loss_nope": 0.5}

    model = _model([Bad()]).train()
    with EventStorage(0), pytest.raises(KeyError, match="loss_nope"):
        model(_batch())
