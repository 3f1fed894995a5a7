"""What the tests of the neck-feature methods (PKD, CWD, MGD, FGD, FitNet) share: fake bound
models with given level shapes, the shapes configs built with random teachers and trained two
steps, and the check that the exported student carries none of a distiller's modules."""
from types import SimpleNamespace

import torch
from conftest import save_random_weights

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.utils.events import EventStorage

from d2kd.export import student_model_config, student_state_dict

#: The tiny training loader every shapes-config test here uses.
TINY_TRAIN = ["dataloader.train.total_batch_size=2", "dataloader.train.dataset.names=shapes_tiny_train",
              "dataloader.train.num_workers=0"]


def shapes(levels, channels, strides):
    return {f: ShapeSpec(channels=c, stride=s) for f, c, s in zip(levels, channels, strides)}


#: A shapes Faster R-CNN student (P2-P6, 32 channels) and RetinaNet teacher (P3-P7, 128 channels).
RCNN_STUDENT = shapes(["p2", "p3", "p4", "p5", "p6"], [32] * 5, [4, 8, 16, 32, 64])
RETINA_TEACHER = shapes(["p3", "p4", "p5", "p6", "p7"], [128] * 5, [8, 16, 32, 64, 128])


def fake_models(s_shapes, t_shapes):
    """A student of no known family (its record layout is its backbone's output shapes) and a
    teacher with ``output_shape``; shapes as ``{level: ShapeSpec}`` or ``{level: (channels, stride)}``."""

    def spec(d):
        return {f: v if isinstance(v, ShapeSpec) else ShapeSpec(channels=v[0], stride=v[1]) for f, v in d.items()}

    s, t = spec(s_shapes), spec(t_shapes)
    student = SimpleNamespace(backbone=SimpleNamespace(output_shape=lambda: s))
    teacher = SimpleNamespace(output_shape=lambda: t)
    return student, teacher


def random_teachers(tmp_path_factory, names=("faster_rcnn_teacher", "retinanet_teacher")):
    """``{name: path}``: random weights of ``configs/shapes/<name>.py``'s model."""
    tmp = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name in names:
        paths[name] = str(tmp / f"{name}.pth")
        save_random_weights(f"configs/shapes/{name}.py", paths[name])
    return paths


def build_shapes(config, teacher_weights, teacher=None):
    """``configs/shapes/<config>.py`` on the tiny split, its teacher (``teacher``: another shapes
    teacher config's name, for a cross-family pair) given random weights; the model in train mode."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(f"configs/shapes/{config}.py"), TINY_TRAIN)
    if teacher is not None:
        cfg.model.teacher.config_file = f"configs/shapes/{teacher}.py"
    name = cfg.model.teacher.config_file.rsplit("/", 1)[-1][: -len(".py")]
    cfg.model.teacher.weights = teacher_weights[name]
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model).train()


def train_two_steps(cfg, model, kd_keys=None, after_backward=None, *, optimizer=None, lr=1e-3, start_iter=0):
    """Two optimizer steps of a built shapes model on its config's training loader (``optimizer``:
    default SGD at ``lr`` over the trainable parameters; ``start_iter``: the EventStorage iteration,
    e.g. past a method's warm-up): every loss is finite and, unless ``kd_keys`` is None, each
    step's ``loss_kd_*`` keys are exactly ``kd_keys``; ``after_backward(model, losses)`` runs after
    each backward. Returns the last step's losses."""
    loader = iter(instantiate(cfg.dataloader.train))
    opt = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    with EventStorage(start_iter):
        for _ in range(2):
            losses = model(next(loader))
            if kd_keys is not None:
                assert {k for k in losses if k.startswith("loss_kd_")} == set(kd_keys), sorted(losses)
            assert all(torch.isfinite(v) for v in losses.values()), losses
            opt.zero_grad()
            sum(losses.values()).backward()
            if after_backward is not None:
                after_backward(model, losses)
            opt.step()
    return losses


def assert_export_strips_the_distillers(cfg, model, module_name):
    """The exported student state has no ``distillers.`` key (``module_name``: one of the
    distiller's submodules, present before export) and loads strictly into the stock class."""
    assert any(k.startswith(f"distillers.0.{module_name}.") for k in model.state_dict())
    state = student_state_dict(model.state_dict())
    assert not any(k.startswith("distillers.") or module_name in k for k in state)
    result = instantiate(student_model_config(cfg.model)).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
