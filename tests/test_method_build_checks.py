"""Build-time checks of a method against its teacher, and the warnings before training: every
dense-head method refuses a teacher with another anchor layout (and an FCOS teacher, whose head
d2kd does not record) when the model is built, not with an IndexError at iteration 0; a KD
weight that is negative or not finite is refused; a run in which no method ever turns on, or
every weight is 0, says so; the teacher evaluation says how long it took and how to skip it."""
import logging
import math
import os

import pytest
from conftest import D2_MISSING, REPO, TINY, read_metrics, run_cli, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402

#: a RetinaNet teacher with 3 anchors per location (the student's configs have 9)
THREE_ANCHORS = ["model.anchor_generator.aspect_ratios=[1.0]", "model.head.num_anchors=3"]

FCOS_TEACHER = '''
from detectron2.config import LazyConfig
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead

# The shapes RetinaNet teacher's backbone, with Detectron2's FCOS detector and head.
model = LazyConfig.load("{repo}/configs/shapes/retinanet_teacher.py").model
model._target_ = FCOS
del model.anchor_generator, model.box2box_transform, model.anchor_matcher, model.input_format
model.head._target_ = FCOSHead
del model.head.num_anchors
'''


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teachers")
    out = {}
    out["three_anchors"] = str(tmp / "retinanet_3_anchors.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", out["three_anchors"], THREE_ANCHORS)
    out["retinanet"] = str(tmp / "retinanet.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", out["retinanet"])
    out["fcos_config"] = str(tmp / "fcos_teacher.py")
    with open(out["fcos_config"], "w") as f:
        f.write(FCOS_TEACHER.format(repo=REPO))
    out["fcos"] = str(tmp / "fcos.pth")
    save_random_weights(out["fcos_config"], out["fcos"])
    out["faster_rcnn"] = str(tmp / "faster_rcnn.pth")
    save_random_weights("configs/shapes/faster_rcnn_teacher.py", out["faster_rcnn"])
    return out


def _retinanet_student(method, teacher_config, weights, teacher_opts=()):
    """configs/shapes/retinanet_adl.py with ``method`` (a distiller class name) and the teacher."""
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig

    from d2kd.distill import DISTILLER_REGISTRY

    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/retinanet_adl.py"), TINY)
    cfg.model.teacher.config_file = teacher_config
    cfg.model.teacher.weights = weights
    cfg.model.teacher.opts = list(teacher_opts)
    kwargs = {"GKD": dict(in_features=["p3", "p4", "p5"], canonical_size=14, pgm_enabled=False, attenuation="none")}
    cfg.model.distillers = [L(DISTILLER_REGISTRY.get(method))(**kwargs.get(method, {}))]
    return cfg


def _build(cfg):
    from detectron2.config import instantiate

    torch.manual_seed(0)
    return instantiate(cfg.model)


# ---- item: dense-head methods and the teacher's anchor layout ----------------------------------
@pytest.mark.parametrize("method", ["SoftLabelKD", "GKD", "ADL"])
def test_dense_head_methods_refuse_another_anchor_layout_at_build_time(method, teachers):
    cfg = _retinanet_student(method, "configs/shapes/retinanet_teacher.py", teachers["three_anchors"], THREE_ANCHORS)
    with pytest.raises(ValueError) as e:
        _build(cfg)
    assert str(e.value) == (
        f"{method} compares the dense heads anchor by anchor: the student has [9, 9, 9, 9, 9] anchors "
        f"per location at strides [8, 16, 32, 64, 128], the teacher [3, 3, 3, 3, 3] at strides "
        f"[8, 16, 32, 64, 128]; give the teacher and the student the same anchor_generator (sizes, "
        f"aspect_ratios, strides), or use a method that compares features only (e.g. "
        f"FeatureImitation, FGFI)"
    )


def test_feature_only_gkd_accepts_another_anchor_layout_and_trains_a_step(teachers):
    """GKD without soft labels compares features only: the 3-anchor teacher is fine."""
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    cfg = _retinanet_student("GKD", "configs/shapes/retinanet_teacher.py", teachers["three_anchors"], THREE_ANCHORS)
    cfg.model.distillers[0].use_soft_label = False
    model = _build(cfg).train()
    assert model.distillers[0].teacher_needs() == {"features"}
    with EventStorage(0):
        losses = model(next(iter(instantiate(cfg.dataloader.train))))
    assert {"loss_kd_gkd_point_fg", "loss_kd_gkd_point_bg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_an_fcos_teacher_records_its_head_as_one_point_per_location(teachers):
    from d2kd.teacher import build_teacher

    teacher = build_teacher(config_file=teachers["fcos_config"], weights=teachers["fcos"])
    assert type(teacher.model).__name__ == "FCOS"
    assert teacher.parts() == ["features", "head"] and teacher.dense_head_layout().num_anchors == [1] * 5
    retinanet = build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights=teachers["retinanet"])
    assert retinanet.parts() == ["features", "head"]
    assert retinanet.dense_head_layout().num_anchors == [9] * 5


@pytest.mark.parametrize("method", ["SoftLabelKD", "GKD", "ADL"])
def test_dense_head_methods_refuse_an_fcos_teacher_for_a_retinanet_student_at_build_time(method, teachers):
    # FCOS's head is recorded, but its one point per location is not RetinaNet's 9 anchors:
    # methods comparing the heads row by row are refused by the pairing check, naming both
    cfg = _retinanet_student(method, teachers["fcos_config"], teachers["fcos"])
    with pytest.raises(ValueError) as e:
        _build(cfg)
    msg = str(e.value)
    assert msg.startswith(
        f"{method} compares the dense heads anchor by anchor: the student has [9, 9, 9, 9, 9] anchors per "
        f"location at strides [8, 16, 32, 64, 128], the teacher [1, 1, 1, 1, 1]"
    ), msg


def test_gkd_on_a_retinanet_teacher_for_a_faster_rcnn_student_names_use_soft_label(teachers):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/faster_rcnn_gkd.py"), TINY + [
        "model.teacher.config_file=configs/shapes/retinanet_teacher.py",
        f"model.teacher.weights={teachers['retinanet']}",
        "model.distillers.0.in_features=[p3,p4,p5,p6]",  # the RetinaNet FPN has no p2
    ])
    with pytest.raises(ValueError) as e:
        _build(cfg)
    assert str(e.value) == (
        "GKD needs teacher outputs ['roi'] (a box head's ROI logits and deltas) that the teacher "
        "(RetinaNet) does not have (it has ['features', 'head']); GKD runs without it with "
        "use_soft_label=False (feature imitation only, no soft-label term)"
    )
    cfg.model.distillers[0].use_soft_label = False  # the fix the message names
    assert _build(cfg).distillers[0].teacher_needs() == {"features"}


# ---- item: KD weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_negative_or_non_finite_weight_is_refused_at_build_time(weight, teachers):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/faster_rcnn_fgfi.py"), TINY)
    cfg.model.teacher.weights = teachers["faster_rcnn"]
    cfg.model.distillers[0].weight = weight
    with pytest.raises(ValueError) as e:
        _build(cfg)
    assert str(e.value) == (
        f"FGFI (loss_kd_fgfi_*): weight must be finite and >= 0, got {weight}; a negative multiplier "
        f"rewards the student for moving away from the teacher (set weight=0 to turn the term off)"
    )


def test_every_loss_multiplier_of_a_method_is_checked():
    from d2kd.distill import GKD, Chen2017

    with pytest.raises(ValueError, match=r"^GKD \(loss_kd_gkd_\*\): bg_weight must be finite and >= 0, got -4.0;"):
        GKD(bg_weight=-4.0)
    with pytest.raises(ValueError, match=r"^GKD \(loss_kd_gkd_\*\): soft_weight must be finite and >= 0, got nan;"):
        GKD(soft_weight=math.nan)
    with pytest.raises(ValueError, match=r"^Chen2017 \(loss_kd_chen2017_\*\): nu must be finite and >= 0, got -0.5;"):
        Chen2017(nu=-0.5)
    with pytest.raises(ValueError, match=r"^GKD \(loss_kd_gkd_\*\): weight must be a number, got 'x'$"):
        GKD(weight="x")
    assert GKD(weight=0).weight == 0.0  # 0 turns a method off: allowed


def test_negative_weight_on_the_command_line_exits_2_naming_it(teachers, tmp_path, train_net, capfd, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(REPO)
    code, lines, log = run_cli(train_net, capfd, [
        "--config-file", "configs/shapes/faster_rcnn_fgfi.py", *TINY, "train.max_iter=1",
        f"model.teacher.weights={teachers['faster_rcnn']}", f"train.output_dir={out}", "model.distillers.0.weight=-1.0"])
    assert code == 2, log[-2000:]
    assert lines == [
        "train_net.py: error: cannot build configs/shapes/faster_rcnn_fgfi.py: ValueError: FGFI "
        "(loss_kd_fgfi_*): weight must be finite and >= 0, got -1.0; a negative multiplier rewards the "
        "student for moving away from the teacher (set weight=0 to turn the term off)"
    ]
    assert not (out / "metrics.json").exists()


def test_all_kd_weights_zero_warns_at_build_time(teachers, caplog):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/faster_rcnn_fgfi_gkd.py"), TINY)
    cfg.model.teacher.weights = teachers["faster_rcnn"]
    cfg.model.distillers[0].weight = 0.0
    cfg.model.distillers[1].weight = 0.0
    with caplog.at_level(logging.WARNING, logger="d2kd.modeling.meta_arch.distillation"):
        _build(cfg)
    assert ("every distiller's weight is 0 (FGFI.weight, GKD.weight): this run trains the student "
            "without distillation, but still runs the teacher at every step") in caplog.text
    caplog.clear()
    cfg.model.distillers[1].weight = 1.0
    with caplog.at_level(logging.WARNING, logger="d2kd.modeling.meta_arch.distillation"):
        _build(cfg)
    assert "every distiller's weight is 0" not in caplog.text


# ---- warnings before training -------------------------------------------------------------------
def test_run_shorter_than_the_warm_up_warns_and_teacher_evaluation_says_its_time(teachers, tmp_path, train_net, capfd):
    """faster_rcnn_fgfi.py waits 100 iterations: a 2-iteration run would train with
    loss_kd_fgfi_imitation = 0 throughout. The warning comes before the first step (and before
    the teacher's evaluation, which says how long it took and how to skip it)."""
    out = tmp_path / "run"
    code, _, console = run_cli(train_net, capfd, ["--config-file", "configs/shapes/faster_rcnn_fgfi.py", *TINY,
                                                  "train.max_iter=2", f"model.teacher.weights={teachers['faster_rcnn']}",
                                                  f"train.output_dir={out}"])
    assert code == 0, console[-3000:]
    log = (out / "log.txt").read_text()
    warning = (
        "FGFI (distillers.0, loss_kd_fgfi_*) is off for this whole run: its warm-up lasts 100 "
        "iterations (schedule.warmup_iters=100) but the run ends at train.max_iter=2; its KD terms "
        "will be 0 at every step. Raise train.max_iter above 100 or lower "
        "model.distillers.0.schedule.warmup_iters"
    )
    assert warning in log
    assert "Teacher evaluated before training in 0:0" in log
    assert "(skip this with train.eval_teacher=False): {'teacher/bbox/AP': " in log
    assert log.index(warning) < log.index("Teacher evaluated before training") < log.index("iter: 0")
    rows = [r for r in read_metrics(str(out)) if "loss_kd_fgfi_imitation" in r]
    assert rows and all(r["loss_kd_fgfi_imitation"] == 0.0 for r in rows)  # what the warning said


def test_schedule_check_is_silent_when_a_method_turns_on_and_names_stop_after(caplog):
    from d2kd.distill import FeatureImitation, KDSchedule
    from d2kd.engine.hooks import DistillerScheduleCheck

    class Trainer:
        def __init__(self, model, start, end):
            self.model, self.start_iter, self.max_iter = model, start, end

    class Model:
        distillers = [FeatureImitation(in_features=["p3"], schedule=KDSchedule(warmup_iters=10, stop_after=50))]

    def warnings_for(start, end):
        hook = DistillerScheduleCheck()
        hook.trainer = Trainer(Model(), start, end)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="d2kd.engine.hooks"):
            hook.before_train()
        return caplog.text

    assert warnings_for(0, 11) == ""  # on at iteration 10
    assert "its warm-up lasts 10 iterations (schedule.warmup_iters=10) but the run ends at train.max_iter=10" in warnings_for(0, 10)
    assert ("FeatureImitation (distillers.0, loss_kd_fitnet_*) is off for this whole run: its schedule "
            "stopped at iteration 50 (stop_after) and this run trains iterations 60-99") in warnings_for(60, 100)
