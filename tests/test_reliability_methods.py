"""Every method under faults: NaN/Inf in the teacher's features, in the teacher's logits (the soft
targets) and in the student's logits; the non-finite guard's message and its bounded skip; and a
batch with zero GT boxes (finite KD loss, zero where the method has nothing to imitate)."""
import math

import pytest
from conftest import D2_MISSING, TINY, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402
from torch import nn  # noqa: E402

#: (config, distiller name, reads the teacher's logits and propagates their infinities; ADL
#: clamps the teacher's probability to [1e-6, 1-1e-6] (docs/methods.md §5.5): +inf logits are finite)
METHODS = [
    ("retinanet_fitnet", "fitnet", False),
    ("faster_rcnn_softlabel", "softlabel", True),
    ("retinanet_fgfi", "fgfi", False),
    ("faster_rcnn_fgfi", "fgfi", False),
    ("retinanet_lshfm_lshl2", "lshfm", False),
    ("faster_rcnn_lshfm_lshl2", "lshfm", False),
    ("retinanet_adl", "adl", False),
    ("retinanet_gkd", "gkd", True),
    ("faster_rcnn_gkd", "gkd", True),
    ("faster_rcnn_chen2017", "chen2017", True),
    ("ssd_chen2017", "chen2017", True),
    ("retinanet_pkd", "pkd", False),
    ("faster_rcnn_cwd", "cwd", False),
    ("retinanet_mgd", "mgd", False),
    ("faster_rcnn_fgd", "fgd", False),
    ("fcos_fgfi", "fgfi", False),
]
IDS = [m[0] for m in METHODS]
ITER = 3

_CACHE = {}


def _build(config, tmp_dir):
    if config in _CACHE:
        return _CACHE[config]
    from detectron2.config import LazyConfig, instantiate

    import d2kd  # noqa: F401

    cfg = LazyConfig.apply_overrides(LazyConfig.load(f"configs/shapes/{config}.py"), TINY)
    teacher_cfg = cfg.model.teacher.config_file
    weights = tmp_dir / (teacher_cfg.replace("/", "_") + ".pth")
    if not weights.exists():
        save_random_weights(teacher_cfg, str(weights))
    cfg.model.teacher.weights = str(weights)
    if "gkd" in config:
        # The model would run GKD's PGM at its first step, through the poisoned teacher too;
        # these tests are about the losses (the PGM: test_gkd_prototypes.py).
        cfg.model.distillers[0].pgm_enabled = False
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    _CACHE[config] = (model, batch)
    return model, batch


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


def _cls_layers(detector):
    if getattr(detector, "roi_heads", None) is not None:
        return [detector.roi_heads.box_predictor.cls_score]
    layers = detector.head.cls_score
    return list(layers) if isinstance(layers, nn.ModuleList) else [layers]


def _poison(value):
    def hook(module, inputs, output):
        if isinstance(output, dict):
            return {k: v + value for k, v in output.items()}
        return output + value

    return hook


def _losses(model, batch, iteration=ITER, guard=None):
    from detectron2.utils.events import EventStorage

    from d2kd.engine.nonfinite import NonFiniteGuard

    own = NonFiniteGuard(model) if guard is None else None
    try:
        with EventStorage(iteration):
            torch.manual_seed(0)
            return model(batch)
    finally:
        if own is not None:
            own.remove()


def _with_hooks(modules, hook):
    return [m.register_forward_hook(hook) for m in modules]


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_nan_in_teacher_features_names_method_term_and_iteration(config, name, reads_logits, weights_dir):
    from d2kd.engine.nonfinite import NonFiniteLossError

    model, batch = _build(config, weights_dir)
    handles = _with_hooks([model.teacher.model.backbone], _poison(float("nan")))
    try:
        with pytest.raises(NonFiniteLossError) as e:
            _losses(model, batch)
    finally:
        [h.remove() for h in handles]
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"non-finite loss at iteration {ITER}: loss_kd_")
    i = [d.name for d in model.distillers].index(name)
    cls = type(model.distillers[i]).__name__
    assert f"loss_kd_{name}_" in msg and f"(KD method '{name}' [{cls}, distillers.{i}], term/level '" in msg
    assert "= nan" in msg and "detector loss" not in msg  # the student's own losses are fine
    assert "train.skip_nonfinite_kd_steps=N" in msg and "no checkpoint had been written yet" in msg


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_inf_in_teacher_logits(config, name, reads_logits, weights_dir):
    """Soft targets from +inf teacher logits: methods reading them fail by name; the others do
    not read them and stay finite."""
    from d2kd.engine.nonfinite import NonFiniteLossError

    model, batch = _build(config, weights_dir)
    handles = _with_hooks(_cls_layers(model.teacher.model), _poison(float("inf")))
    try:
        if reads_logits:
            with pytest.raises(NonFiniteLossError, match=rf"loss_kd_{name}_\w+ = (nan|inf|-inf) \(KD method '{name}'"):
                _losses(model, batch)
        else:
            losses = _losses(model, batch)
            assert all(torch.isfinite(v) for v in losses.values())
    finally:
        [h.remove() for h in handles]


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_nan_in_student_logits_is_a_detector_loss_and_never_skipped(config, name, reads_logits, weights_dir):
    from d2kd.engine.nonfinite import NonFiniteGuard, NonFiniteLossError

    model, batch = _build(config, weights_dir)
    handles = _with_hooks(_cls_layers(model), _poison(float("nan")))
    guard = NonFiniteGuard(model, skip_kd_steps=5)
    try:
        with pytest.raises(NonFiniteLossError) as e:
            _losses(model, batch, guard=guard)
    finally:
        [h.remove() for h in handles]
        guard.remove()
    msg = str(e.value)
    first = msg.split(": ", 1)[1]
    assert first.startswith("loss_") and not first.startswith("loss_kd_")  # detector term first
    assert "(the student's detector loss)" in msg and "lower the learning rate" in msg


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_skip_nonfinite_kd_terms_is_bounded(config, name, reads_logits, weights_dir, caplog):
    from d2kd.engine.nonfinite import NonFiniteGuard, NonFiniteLossError

    model, batch = _build(config, weights_dir)
    guard = NonFiniteGuard(model, skip_kd_steps=1)
    handles = _with_hooks([model.teacher.model.backbone], _poison(float("nan")))
    import logging

    log = logging.getLogger("d2kd.engine.nonfinite")
    log.addHandler(caplog.handler)  # train_net's setup_logger may have turned off propagation
    try:
        with caplog.at_level("WARNING", logger="d2kd.engine.nonfinite"):
            losses = _losses(model, batch, guard=guard)
            assert all(torch.isfinite(v) for v in losses.values())
            warned = caplog.text.split("replaced by zero")[0]
            replaced = [k for k in losses if k.startswith("loss_kd_") and f"{k} = nan" in warned]
            assert any(k.startswith(f"loss_kd_{name}_") for k in replaced)
            assert all(float(losses[k]) == 0.0 for k in replaced)
            model.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            for n, p in model.named_parameters():
                assert p.grad is None or torch.isfinite(p.grad).all(), n
            adapters = [p for p in model.distillers.parameters() if p.requires_grad]
            assert all(p.grad is not None for p in adapters)  # still in the graph (DDP-safe)
            if len(replaced) == len([k for k in losses if k.startswith("loss_kd_")]):
                assert all(float(p.grad.abs().sum()) == 0.0 for p in adapters)
            assert all(p.grad is None for p in model.teacher.model.parameters())
            assert f"iteration {ITER}: non-finite loss_kd_" in caplog.text
            assert "replaced by zero (skipped KD step 1 of at most 1" in caplog.text
            with pytest.raises(NonFiniteLossError, match="already skipped 1 steps with non-finite KD terms"):
                _losses(model, batch, iteration=ITER + 1, guard=guard)
    finally:
        log.removeHandler(caplog.handler)
        [h.remove() for h in handles]
        guard.remove()


def _without_gt(batch, keep_first=False):
    from detectron2.structures import Boxes, Instances

    out = []
    for i, x in enumerate(batch):
        x = dict(x)
        if keep_first and i == 0:
            out.append(x)
            continue
        inst = Instances(x["instances"].image_size)
        inst.gt_boxes = Boxes(torch.zeros(0, 4))
        inst.gt_classes = torch.zeros(0, dtype=torch.int64)
        x["instances"] = inst
        out.append(x)
    return out


#: methods whose KD is GT-guided: no GT, nothing to imitate -> exactly zero
ZERO_WITHOUT_GT = {"fgfi": "imitation"}


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_batch_with_zero_gt_boxes(config, name, reads_logits, weights_dir):
    model, batch = _build(config, weights_dir)
    losses = _losses(model, _without_gt(batch))  # the guard raises on any non-finite term
    kd = {k: v for k, v in losses.items() if k.startswith(f"loss_kd_{name}_")}
    assert kd
    if name in ZERO_WITHOUT_GT:
        assert float(kd[f"loss_kd_{name}_{ZERO_WITHOUT_GT[name]}"]) == 0.0
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n
    assert all(math.isfinite(float(v)) for v in losses.values())


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_batch_where_only_the_first_image_has_gt(config, name, reads_logits, weights_dir):
    # Detectron2 gives the proposals of an image without GT no gt_boxes: per-row targets of a
    # batch mixing both kinds must still be built (Chen2017's ROI stage crashed on it once)
    model, batch = _build(config, weights_dir)
    assert len(batch) > 1 and len(batch[0]["instances"]) > 0
    losses = _losses(model, _without_gt(batch, keep_first=True))
    assert any(k.startswith(f"loss_kd_{name}_") for k in losses)
    assert all(math.isfinite(float(v)) for v in losses.values())
    sum(losses.values()).backward()


def test_lshfm_lsh_term_reports_nan_teacher_features(weights_dir):
    from d2kd.engine.nonfinite import NonFiniteLossError

    model, batch = _build("retinanet_lshfm_lshl2", weights_dir)
    handles = _with_hooks([model.teacher.model.backbone], _poison(float("nan")))
    try:
        with pytest.raises(NonFiniteLossError, match="loss_kd_lshfm_lsh = nan"):
            _losses(model, batch)
    finally:
        [h.remove() for h in handles]


@pytest.mark.parametrize("config, name, reads_logits", METHODS, ids=IDS)
def test_teacher_in_bfloat16(config, name, reads_logits, weights_dir):
    """A teacher under autocast (``autocast_dtype="bfloat16"``: what "auto" picks on a CPU with
    AVX512-BF16) records bf16 tensors; every method still computes fp32, finite KD terms within
    a few percent of the fp32 teacher's, and a backward pass. GKD runs with prototypes set, so its
    robustness weights pool the teacher's maps (torchvision's CPU RoIAlign has no bf16 kernel)."""
    model, batch = _build(config, weights_dir)
    d = model.distillers[0]
    if name == "gkd":
        g = torch.Generator().manual_seed(0)
        for level in range(d.proto_student.shape[0]):
            for cls in range(d.proto_student.shape[1]):
                d.set_prototypes(level, cls, torch.randn(d.proto_student.shape[2:], generator=g),
                                 torch.randn(d.proto_teacher.shape[2:], generator=g))
        d.proto_period.fill_(0)  # as the PGM leaves it after its first pass
        assert d.has_prototypes()
    saved = model.teacher.autocast_dtype
    try:
        ref = {k: v.detach() for k, v in _losses(model, batch).items() if k.startswith("loss_kd_")}
        model.teacher.autocast_dtype = "bfloat16"
        losses = _losses(model, batch)
    finally:
        model.teacher.autocast_dtype = saved
        if name == "gkd":
            d.proto_valid.zero_()
            d.proto_period.fill_(-1)
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert kd.keys() == ref.keys() and kd
    for k, v in kd.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), (k, v)
        assert float(v) == pytest.approx(float(ref[k]), rel=0.05, abs=1e-3), k
    sum(kd.values()).backward()
