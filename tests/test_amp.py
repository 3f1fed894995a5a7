"""train.amp: which dtype each setting trains in, autocast confined to the forward, a CPU run."""
import pytest
import torch
from conftest import D2_MISSING, TINY

pytest.importorskip("detectron2", reason=D2_MISSING)

import d2kd.engine.amp as amp  # noqa: E402
from d2kd.engine.amp import AutocastTrainer, autocast_forward, resolve_amp_dtype  # noqa: E402


@pytest.mark.parametrize(
    "cfg, device, native, expected",
    [
        ({"enabled": False}, "cpu", True, None),
        ({}, "cpu", True, None),
        ({"enabled": True}, "cpu", False, torch.bfloat16),  # asked for: even where emulated
        ({"enabled": True}, "cuda", False, torch.float16),  # Detectron2's AMPTrainer default
        ({"enabled": True, "precision": "bfloat16"}, "cuda", True, torch.bfloat16),
        ({"enabled": "auto"}, "cpu", True, torch.bfloat16),
        ({"enabled": "auto"}, "cpu", False, None),
        ({"enabled": "auto", "precision": "bfloat16"}, "cuda", True, torch.bfloat16),
        # native_bfloat16: "auto" while enabled stays False (what Detectron2's own script reads)
        ({"enabled": False, "native_bfloat16": True}, "cpu", True, torch.bfloat16),
        ({"enabled": False, "native_bfloat16": True}, "cpu", False, None),
        ({"enabled": False, "native_bfloat16": True}, "cuda", True, torch.bfloat16),
        ({"enabled": True, "native_bfloat16": True}, "cuda", False, torch.float16),  # enabled asks for more
        ({"enabled": False, "native_bfloat16": False}, "cpu", True, None),
    ],
)
def test_resolved_dtype(monkeypatch, cfg, device, native, expected):
    monkeypatch.setattr(amp, "native_bfloat16", lambda device_type: native)
    assert resolve_amp_dtype(cfg, device) is expected


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"enabled": True, "precision": "float16"}, "needs CUDA"),
        ({"enabled": "yes"}, "train.amp.enabled must be"),
        ({"enabled": True, "precision": "half"}, "train.amp.precision must be"),
        ({"enabled": "auto", "precision": "float16"}, "drop the precision"),
        ({"native_bfloat16": "auto"}, "train.amp.native_bfloat16 must be True or False"),
        ({"native_bfloat16": True, "precision": "float16"}, "train.amp.native_bfloat16=True trains in bfloat16"),
    ],
)
def test_bad_settings_fail_with_the_key(monkeypatch, cfg, message):
    monkeypatch.setattr(amp, "native_bfloat16", lambda device_type: True)
    with pytest.raises(ValueError, match=message):
        resolve_amp_dtype(cfg, "cpu")


class _Probe(torch.autograd.Function):
    """Identity that records whether autocast is on in its forward and in its backward."""

    seen = {}

    @staticmethod
    def forward(ctx, x):
        _Probe.seen["forward"] = torch.is_autocast_enabled("cpu")
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _Probe.seen["backward"] = torch.is_autocast_enabled("cpu")
        return g


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x, fail=False):
        if fail:
            raise RuntimeError("boom")
        return self.fc(_Probe.apply(x))


def test_autocast_covers_the_forward_only():
    net = _Net()
    x = torch.randn(2, 4, requires_grad=True)
    _Probe.seen.clear()
    with autocast_forward(net, "cpu", torch.bfloat16):
        out = net(x)
        assert not torch.is_autocast_enabled("cpu")  # between calls: off
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and _Probe.seen == {"forward": True, "backward": False}
    assert net.fc.weight.dtype == torch.float32 and net.fc.weight.grad.dtype == torch.float32
    assert net(x).dtype == torch.float32  # hooks removed after the block


def test_autocast_is_left_when_the_forward_raises():
    net = _Net()
    with pytest.raises(RuntimeError, match="boom"):
        with autocast_forward(net, "cpu", torch.bfloat16):
            net(torch.randn(2, 4), fail=True)
    assert not torch.is_autocast_enabled("cpu")
    assert not net._forward_pre_hooks and not net._forward_hooks


def test_cpu_training_steps_under_bfloat16(tmp_path):
    """A Faster R-CNN student trains two steps with train.amp.enabled=True on CPU: the step
    trainer is AutocastTrainer, its backbone computes in bfloat16, the losses are finite, the weights stay fp32 and change."""
    from detectron2.config import LazyConfig

    import d2kd  # noqa: F401
    from d2kd.engine import Trainer

    cfg = LazyConfig.apply_overrides(
        LazyConfig.load("configs/shapes/faster_rcnn_student.py"),
        TINY + ["train.max_iter=2", "train.amp.enabled=True", f"train.output_dir={tmp_path}"],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AutocastTrainer) and trainer._trainer.precision == torch.bfloat16
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    feature_dtypes = []
    trainer.model.backbone.register_forward_hook(
        lambda mod, args, out: feature_dtypes.append({f.dtype for f in out.values()})
    )
    trainer.train()
    # The two training forwards ran in bfloat16; the final evaluation after them in fp32.
    assert feature_dtypes[:2] == [{torch.bfloat16}] * 2 and feature_dtypes[2:3] == [{torch.float32}]
    rows = trainer.storage.history("total_loss").values()
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in rows)
    after = trainer.model.state_dict()
    assert all(after[k].dtype == torch.float32 for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bad_amp_setting_fails_before_training(tmp_path):
    from detectron2.config import LazyConfig

    from d2kd.engine import Trainer
    from d2kd.engine.validate import ConfigError

    cfg = LazyConfig.apply_overrides(
        LazyConfig.load("configs/shapes/faster_rcnn_student.py"),
        TINY + ["train.amp.enabled=True", "+train.amp.precision=float16", f"train.output_dir={tmp_path}"],
    )
    with pytest.raises(ConfigError, match="needs CUDA"):
        Trainer(cfg)


def test_command_line_accepts_auto_but_not_other_strings():
    from d2kd.engine.validate import ConfigError, load_config

    cfg = load_config("configs/shapes/faster_rcnn_student.py", ["train.amp.enabled=auto"])
    assert cfg.train.amp.enabled == "auto"
    with pytest.raises(ConfigError, match="expected bool"):
        load_config("configs/shapes/faster_rcnn_student.py", ["train.amp.enabled=maybe"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config("configs/shapes/faster_rcnn_student.py", ["train.amp.native_bfloat16=auto"])


def test_teacher_config_trains_in_bfloat16_where_native_but_not_under_detectron2s_amp(monkeypatch, tmp_path):
    """faster_rcnn_teacher.py keeps train.amp.enabled False (Detectron2's tools/lazyconfig_train_net.py
    reads it as a bool and runs its CUDA-only AMPTrainer for "auto"), and d2kd's trainer still
    trains it in bfloat16 where native; native_bfloat16=False on the command line gives fp32."""
    from d2kd.engine import Trainer
    from d2kd.engine.validate import load_config

    teacher = load_config("configs/shapes/faster_rcnn_teacher.py", TINY + [f"train.output_dir={tmp_path}"])
    assert teacher.train.amp.enabled is False and teacher.train.amp.native_bfloat16 is True
    monkeypatch.setattr(amp, "native_bfloat16", lambda device_type: True)
    step = Trainer(teacher)._trainer
    assert isinstance(step, AutocastTrainer) and step.precision == torch.bfloat16
    fp32 = load_config("configs/shapes/faster_rcnn_teacher.py", ["train.amp.native_bfloat16=False"])
    assert resolve_amp_dtype(fp32.train.amp, "cpu") is None
    # every config has the key (configs/common/schedule.py), so --teacher-set can name it
    assert load_config("configs/shapes/retinanet_teacher.py").train.amp.native_bfloat16 is False


# Two processes under bfloat16: test_distillation_core.py::test_distillation_with_two_cpu_processes_under_bfloat16_on_a_free_port.
