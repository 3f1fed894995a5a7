"""The FitNet (FeatureImitation, docs/methods.md §8) shapes configs of each family: the levels
they imitate, one loss term per level through a 1×1 adapter to the teacher's width, two training
steps on the tiny split, and gradients reaching the student and the adapters, never the teacher."""
import pytest
import torch
from conftest import D2_MISSING
from feature_kd_helpers import build_shapes, random_teachers, train_two_steps

pytest.importorskip("detectron2", reason=D2_MISSING)

from d2kd.distill import FeatureImitation  # noqa: E402

#: config -> (its teacher's config name, the levels it imitates)
CONFIGS = {
    "faster_rcnn_fitnet": ("faster_rcnn_teacher", ["p2", "p3", "p4", "p5"]),
    "retinanet_fitnet": ("retinanet_teacher", ["p3", "p4", "p5"]),
}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teachers(tmp_path_factory, sorted({t for t, _ in CONFIGS.values()}))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_shapes_fitnet_config_trains_two_steps_with_one_term_per_level(config, teachers):
    teacher, levels = CONFIGS[config]
    cfg, model = build_shapes(config, teachers)
    assert cfg.model.teacher.config_file == f"configs/shapes/{teacher}.py"
    (d,) = model.distillers
    assert isinstance(d, FeatureImitation) and d.in_features == levels
    t_channels = model.teacher.output_shape()[levels[0]].channels
    s_channels = model.backbone.output_shape()[levels[0]].channels
    assert {lv: tuple(a.weight.shape[:2]) for lv, a in d.adapters.items()} == \
        {lv: (t_channels, s_channels) for lv in levels}
    student = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("distillers.")]

    def kd_gradients_reach_the_student_and_adapters_only(model, losses):
        assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in d.adapters.values())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student)
        assert all(not p.requires_grad and p.grad is None for p in model.teacher.model.parameters())

    train_two_steps(cfg, model, [f"loss_kd_fitnet_{lv}" for lv in levels],
                    after_backward=kd_gradients_reach_the_student_and_adapters_only)
