"""FCOS as a detector family (issue #23, item 1): Detectron2's anchor-free FCOS in the dense-head
record (d2kd/records/fcos.py) and DistillationFCOS; every method over the dense views runs on it
with no change to the method. The zero-KD, teacher, inference and export checks of the FCOS
student are in tests/test_distillation_core.py (its "fcos" experiment)."""
import math

import pytest
import torch
from conftest import D2_MISSING, TINY, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.distill import ADL, FGFI, GKD, LSHFM, FeatureImitation, SoftLabelKD  # noqa: E402
from d2kd.records import record_layout  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("fcos")
    paths = {"fcos": str(d / "fcos_teacher.pth"), "retinanet": str(d / "retinanet_teacher.pth")}
    save_random_weights("configs/shapes/fcos_teacher.py", paths["fcos"])
    save_random_weights("configs/shapes/retinanet_teacher.py", paths["retinanet"])
    return paths


def _build(config, weights, distillers=None, teacher="fcos"):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(f"configs/shapes/{config}.py"), TINY)
    cfg.model.teacher.config_file = f"configs/shapes/{teacher}_teacher.py"
    cfg.model.teacher.weights = weights[teacher]
    if distillers is not None:
        cfg.model.distillers = distillers
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model)


def _step(cfg, model):
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(1000):  # past every warm-up (FGFI: 400 by default)
        losses = model(batch)
    sum(losses.values()).backward()
    return losses


def test_the_record_holds_fcos_points_as_stride_sized_anchors(weights):
    cfg, model = _build("fcos_fitnet", weights)
    layout = record_layout(model)
    assert layout.parts == ["features", "head"] and layout.anchors.levels == ("p3", "p4", "p5", "p6", "p7")
    assert (layout.classifier.probability, layout.classifier.pairing, layout.classifier.input_form) == (
        "sigmoid", "anchors", "maps")
    from d2kd.records import fcos_head_outputs

    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    images, _ = model.preprocess_pair(batch)
    head = fcos_head_outputs(model, model.backbone(images.tensor))
    for boxes, stride in zip(head.anchors, [8, 16, 32, 64, 128]):
        wh = boxes.tensor[:, 2:] - boxes.tensor[:, :2]
        assert torch.all(wh == stride)  # one point per location, a box of the stride
    assert head.num_anchors == 1 and len(head.centerness) == 5 and head.centerness[0].shape[-1] == 1
    assert sum(x.shape[1] for x in head.cls_logits) == sum(len(b) for b in head.anchors)


@pytest.mark.parametrize("name, distiller, terms", [
    ("fgfi", L(FGFI)(in_features=["p3", "p4", "p5"], weight=0.1), {"imitation"}),
    ("softlabel", L(SoftLabelKD)(temperature=2.0, weight=1.0), {"cls"}),
    ("adl", L(ADL)(weight=1.0), {"cls"}),
    ("lshfm", L(LSHFM)(mode="lshl2", weight=1.0), {"l2", "lsh"}),
    ("gkd", L(GKD)(in_features=["p3", "p4", "p5"], proposal_replace_gt=False, use_soft_label=False,
                   pgm_enabled=False, attenuation="none", canonical_size=14), {"point_fg", "point_bg"}),
])
def test_every_dense_view_method_runs_on_fcos_unchanged(name, distiller, terms, weights):
    cfg, model = _build("fcos_fitnet", weights, distillers=[distiller])
    losses = _step(cfg, model)
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert {k.split("_", 3)[3] for k in kd} == terms, kd.keys()
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"} <= set(losses)
    assert model.backbone.bottom_up.stem.conv1.weight.grad is not None
    assert all(p.grad is None for p in model.teacher.model.parameters())
    if name == "fgfi":
        assert float(kd["loss_kd_fgfi_imitation"]) > 0  # near-object points found


@pytest.mark.parametrize("config, terms", [
    ("fcos_pkd", {"pkd_p3", "pkd_p4", "pkd_p5", "pkd_p6"}),
    ("fcos_cwd", {"cwd_p3", "cwd_p4", "cwd_p5", "cwd_p6"}),
    ("fcos_adl", {"adl_cls"}),
    ("fcos_fgd", {"fgd_fg", "fgd_bg", "fgd_attention", "fgd_relation"}),
])
def test_each_fcos_shapes_config_builds_and_steps_with_its_terms(config, terms, weights):
    """fcos_fitnet and fcos_fgfi are stepped by the tests above and the two-process one."""
    cfg, model = _build(config, weights)
    assert type(model).__name__ == "DistillationFCOS"
    losses = _step(cfg, model)
    assert {k[len("loss_kd_"):] for k in losses if k.startswith("loss_kd_")} == terms
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert all(p.grad is None for p in model.teacher.model.parameters())


def test_fcos_teacher_serves_a_retinanet_student_with_features_and_is_refused_for_its_head(weights):
    cfg, model = _build("retinanet_fitnet_from_fcos", weights)
    losses = _step(cfg, model)
    assert {"loss_kd_fitnet_p3", "loss_kd_fitnet_p4", "loss_kd_fitnet_p5"} <= set(losses)
    with pytest.raises(ValueError, match=r"SoftLabelKD compares the dense heads anchor by anchor: the student has "
                                         r"\[9, 9, 9, 9, 9\] anchors per location .* the teacher \[1, 1, 1, 1, 1\]"):
        _build("retinanet_fitnet_from_fcos", weights, distillers=[L(SoftLabelKD)()])
    # and the reverse: a RetinaNet teacher for an FCOS student, on the features
    cfg, model = _build("fcos_fitnet", weights, teacher="retinanet",
                        distillers=[L(FeatureImitation)(in_features=["p3", "p4"], weight=1.0)])
    assert {"loss_kd_fitnet_p3", "loss_kd_fitnet_p4"} <= set(_step(cfg, model))


def test_levels_of_equal_stride_pair_under_the_students_names(tmp_path):
    # SSDLite student (expand7, expand14, last, ...) and VGG16-SSD teacher (conv4_3, fc7, conv6_2,
    # ...): no common name; FitNet on the student's expand14 imitates the teacher's fc7 (stride 16)
    from d2kd.distill import FeatureImitation as FitNet

    weights = str(tmp_path / "ssd_teacher.pth")
    save_random_weights("configs/shapes/ssd_teacher.py", weights)
    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/ssd_chen2017.py"), TINY)
    cfg.model.teacher.weights = weights
    cfg.model.distillers = [L(FitNet)(in_features=["expand14"], weight=1.0)]
    model = instantiate(cfg.model)
    assert model.teacher.level_aliases["expand14"] == "fc7"
    t_shapes = model.teacher.output_shape()
    assert t_shapes["expand14"].stride == t_shapes["fc7"].stride == 16 and "conv4_3" in t_shapes  # own names kept
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(0):
        losses = model(batch)
    assert math.isfinite(float(losses["loss_kd_fitnet_expand14"])) and float(losses["loss_kd_fitnet_expand14"]) > 0
    # a level neither side has is refused, naming both sides' levels and strides
    cfg.model.distillers = [L(FitNet)(in_features=["res4"], weight=1.0)]
    with pytest.raises(ValueError, match=r"'res4' is missing from the student and teacher \(student \{.*expand14: "
                                         r"stride 16.*teacher \{.*fc7: stride 16.*levels of equal stride pair"):
        instantiate(cfg.model)


def test_an_fcos_student_distils_over_two_cpu_processes(weights, tmp_path, monkeypatch):
    """DistillationFCOS under DistributedDataParallel (gloo): both ranks step with FGFI on the
    FCOS points, the KD term is logged and the exported student is the plain FCOS."""
    import json
    import os

    from conftest import TINY_2PROC, run_train_net_here

    out = str(tmp_path)
    code = run_train_net_here(["--config-file", "configs/shapes/fcos_fgfi.py", "--num-gpus", "2", *TINY_2PROC,
                               "train.max_iter=2", "train.eval_teacher=False", "train.checkpointer.period=100",
                               "model.distillers.0.schedule.warmup_iters=0",
                               f"model.teacher.weights={weights['fcos']}", f"train.output_dir={out}"], monkeypatch)
    assert code == 0
    log = open(os.path.join(out, "log.txt")).read()
    assert "World size: 2" in log
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [0, 1]
    assert all(math.isfinite(r["loss_kd_fgfi_imitation"]) and r["loss_kd_fgfi_imitation"] > 0
               for r in rows if "total_loss" in r)
    exported = LazyConfig.load(os.path.join(out, "student", "config.yaml"))
    assert exported.model._target_ == "detectron2.modeling.FCOS"


def test_an_fcos_student_steps_under_mixed_precision(weights):
    """Under autocast (train.amp) the head's outputs are bfloat16/float16 and fvcore's giou_loss,
    which FCOS's box loss calls, fails on them (an index_put of float32 into a half tensor; a
    CUDA float16 run found it). DistillationFCOS computes FCOS's losses in float32; the CPU
    bfloat16 autocast of d2kd's AutocastTrainer takes the same route."""
    from d2kd.engine.amp import autocast_forward

    cfg, model = _build("fcos_fgfi", weights)
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(1000), autocast_forward(model, "cpu", torch.bfloat16):
        losses = model(batch)
    assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_kd_fgfi_imitation"} <= set(losses)
    assert all(v.dtype == torch.float32 and math.isfinite(float(v)) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad is not None and model.head.bbox_pred.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.model.parameters())
