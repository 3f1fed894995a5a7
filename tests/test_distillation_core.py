"""The distillation spine: teacher isolation, equivalence with the plain student, export, resume."""
import os

import pytest
import torch
from conftest import D2_MISSING, REPO, TINY, read_metrics, run_cli, run_train_net_here, save_random_weights
from conftest import YACS_SMALL, YACS_ZOO_RETINANET, yacs_small_retinanet

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import d2kd  # noqa: E402,F401
from d2kd.distill import FeatureImitation, KDSchedule  # noqa: E402
from d2kd.distill.base import check_levels  # noqa: E402
from d2kd.distill.soft_label import sigmoid_kd_loss, softmax_kd_loss  # noqa: E402
from d2kd.engine import Trainer  # noqa: E402
from d2kd.export import export_student, student_model_config  # noqa: E402
from d2kd.teacher import build_teacher  # noqa: E402

EXPERIMENTS = {
    "retinanet": ("configs/shapes/retinanet_teacher.py", "configs/shapes/retinanet_fitnet.py"),
    "faster_rcnn": ("configs/shapes/faster_rcnn_teacher.py", "configs/shapes/faster_rcnn_softlabel.py"),
    "fcos": ("configs/shapes/fcos_teacher.py", "configs/shapes/fcos_fitnet.py"),
}


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name, (teacher_cfg, _) in EXPERIMENTS.items():
        paths[name] = str(d / f"{name}_teacher.pth")
        save_random_weights(teacher_cfg, paths[name])
    return paths


def load_cfg(name, teacher_weights, overrides=()):
    cfg = LazyConfig.load(EXPERIMENTS[name][1])
    cfg = LazyConfig.apply_overrides(cfg, TINY + list(overrides))
    cfg.model.teacher.weights = teacher_weights[name]
    return cfg


def one_batch(cfg):
    return next(iter(instantiate(cfg.dataloader.train)))


def teacher_tensors(model):
    t = model.teacher.model
    return {id(p) for p in t.parameters()} | {id(b) for b in t.buffers()}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_teacher_is_outside_parameters_state_dict_and_optimizer(name, teacher_weights):
    cfg = load_cfg(name, teacher_weights)
    model = Trainer.build_model(cfg)
    teacher_ids = teacher_tensors(model)
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith("teacher") for k in model.state_dict())
    assert not teacher_ids & {id(v) for v in model.state_dict(keep_vars=True).values()}
    optimizer = Trainer.build_optimizer(cfg, model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not teacher_ids & in_optimizer
    # The adapters are trained with the student.
    adapter_ids = {id(p) for p in model.distillers.parameters()}
    assert adapter_ids and adapter_ids <= in_optimizer


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_teacher_gets_no_gradient_and_keeps_its_bn_statistics(name, teacher_weights):
    cfg = load_cfg(name, teacher_weights)
    model = Trainer.build_model(cfg)
    model.train()
    teacher = model.teacher.model
    assert not teacher.training  # train() on the student leaves the teacher in eval
    bn_before = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    assert bn_before, "the shapes teacher has BN layers: this test needs some"
    optimizer = Trainer.build_optimizer(cfg, model)
    batch = one_batch(cfg)
    with EventStorage(0):
        for _ in range(2):
            losses = model(batch)
            assert any(k.startswith("loss_kd_") for k in losses)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    for k, v in bn_before.items():
        assert torch.equal(v, after[k]), k
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.distillers.parameters())


def plain_student_like(cfg, distill_model):
    student = instantiate(student_model_config(cfg.model))
    incompatible = student.load_state_dict(
        {k: v for k, v in distill_model.state_dict().items() if not k.startswith("distillers.")}
    )
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    return student


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_zero_kd_weight_gives_the_plain_students_losses_and_gradients(name, teacher_weights):
    cfg = load_cfg(name, teacher_weights)
    for d in cfg.model.distillers:
        d.weight = 0.0
    torch.manual_seed(1)
    model = instantiate(cfg.model)
    student = plain_student_like(cfg, model)
    model.train(), student.train()
    batch = one_batch(cfg)
    with EventStorage(0):
        torch.manual_seed(2)  # proposal/anchor sampling draws random numbers: same draws
        kd_losses = model(batch)
        torch.manual_seed(2)
        plain_losses = student(batch)
    kd_terms = {k: v for k, v in kd_losses.items() if k.startswith("loss_kd_")}
    assert kd_terms and all(v.item() == 0.0 for v in kd_terms.values())
    assert set(kd_losses) - set(kd_terms) == set(plain_losses)
    for k, v in plain_losses.items():
        torch.testing.assert_close(kd_losses[k], v, rtol=0, atol=0)
    sum(kd_losses.values()).backward()
    sum(plain_losses.values()).backward()
    grads = dict(student.named_parameters())
    for k, p in model.named_parameters():
        if k.startswith("distillers."):
            continue
        ref = grads[k].grad
        if ref is None:
            assert p.grad is None or p.grad.abs().sum() == 0, k
        else:
            torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_inference_is_the_plain_student_and_export_loads_into_stock_detectron2(name, teacher_weights, tmp_path):
    from detectron2.modeling import GeneralizedRCNN
    from detectron2.modeling.meta_arch import RetinaNet
    from detectron2.modeling.meta_arch.fcos import FCOS

    cfg = load_cfg(name, teacher_weights, ["model.roi_heads.box_predictor.test_score_thresh=0.0"] if name == "faster_rcnn"
                   else ["model.test_score_thresh=0.0"])
    torch.manual_seed(3)
    model = instantiate(cfg.model).eval()
    if name == "fcos":
        # A random FCOS head regresses left/top/right/bottom distances of either sign; boxes with a negative
        # side are empty and detector_postprocess drops them, so whether any survive depended on the CPU's
        # rounding (none did on CI's). Positive distances make every box a real one.
        with torch.no_grad():
            model.head.bbox_pred.weight.mul_(0.01)
            model.head.bbox_pred.bias.fill_(1.0)
    calls = []
    model.teacher.model.register_forward_hook(lambda *a: calls.append(1))
    model.teacher.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in one_batch(cfg)]
    with torch.no_grad():
        out = model(inputs)
    assert not calls, "the teacher ran at inference"

    weights = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 9}, weights)
    paths = export_student(cfg, str(weights), str(tmp_path / "export"))
    exported_cfg = LazyConfig.load(paths["config"])
    stock = instantiate(exported_cfg.model).eval()
    assert type(stock) is {"retinanet": RetinaNet, "faster_rcnn": GeneralizedRCNN, "fcos": FCOS}[name]
    state = torch.load(paths["weights"], weights_only=True)["model"]
    incompatible = stock.load_state_dict(state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not any(k.startswith("distillers.") for k in state)
    with torch.no_grad():
        stock_out = stock(inputs)
    assert len(out[0]["instances"]) > 0

    # The folder's README.md loads it as it says, from inside the folder, with stock Detectron2 calls.
    notes = open(paths["notes"]).read()
    assert "tools/deploy/export_model.py" in notes  # says why Detectron2's yacs-only exporter is not the route
    recipe = notes.split("```python\n")[1].split("```")[0]
    here = os.getcwd()
    os.chdir(os.path.dirname(paths["notes"]))
    try:
        namespace = {}
        exec(recipe, namespace)
    finally:
        os.chdir(here)
    loaded = namespace["model"].state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    for a, b in zip(out, stock_out):
        torch.testing.assert_close(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
        torch.testing.assert_close(a["instances"].scores, b["instances"].scores)

    # And DefaultPredictor serves it, with the same detections.
    from detectron2.engine import DefaultPredictor

    from d2kd.export import load_predictor_config

    predictor_cfg = load_predictor_config(paths["predictor"])
    predictor_cfg.MODEL.DEVICE = "cpu"
    predictor = DefaultPredictor(predictor_cfg)
    image = inputs[0]["image"].permute(1, 2, 0).numpy()  # BGR HWC uint8, as the mapper read it
    served = predictor(image)["instances"]
    torch.testing.assert_close(served.scores, out[0]["instances"].scores, rtol=1e-4, atol=1e-5)


def test_kd_schedule_warmup_ramp_and_stop():
    s = KDSchedule(warmup_iters=2, ramp_iters=4, stop_after=10)
    assert [s(i) for i in range(11)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="stop_after"):
        KDSchedule(warmup_iters=5, stop_after=5)


def test_warmup_multiplies_kd_terms_by_zero_but_keeps_them(teacher_weights):
    cfg = load_cfg("retinanet", teacher_weights)
    cfg.model.distillers[0].schedule = KDSchedule(warmup_iters=5)
    model = instantiate(cfg.model).train()
    batch = one_batch(cfg)
    with EventStorage(4):
        early = model(batch)
    with EventStorage(5):
        late = model(batch)
    assert early["loss_kd_fitnet_p3"].item() == 0.0 and early["loss_kd_fitnet_p3"].requires_grad
    assert late["loss_kd_fitnet_p3"].item() > 0.0


def test_feature_imitation_value_by_hand():
    from detectron2.layers import ShapeSpec

    from d2kd.records import DetectorRecord

    d = FeatureImitation(in_features=["p3"])

    class _Side:
        def __init__(self, ch):
            self.backbone = self

        def output_shape(self):
            return self.shapes

    student, teacher = _Side(2), _Side(3)
    student.shapes = {"p3": ShapeSpec(channels=2, stride=8)}
    teacher.shapes = {"p3": ShapeSpec(channels=3, stride=8)}
    d.bind(student, teacher)
    conv = d.adapters["p3"]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 2.0  # out0 = 2·s0, out1 = 0, out2 = s1 + 1
        conv.weight[2, 1] = 1.0
        conv.bias[2] = 1.0
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    t = torch.zeros(1, 3, 1, 2)
    losses = d(DetectorRecord(images=None, features={"p3": s}), DetectorRecord(images=None, features={"p3": t}))
    # adapted = [[2, 4], [0, 0], [4, 5]] → squares 4+16+0+0+16+25 = 61 over 6 elements.
    assert losses["p3"].item() == pytest.approx(61 / 6)


def test_softmax_kd_by_hand():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])  # p_t = [1/4, 3/4]
    # KL(p_t || [1/2, 1/2]) = 1/4 ln(1/2) + 3/4 ln(3/2)
    expected = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5))
    assert softmax_kd_loss(s, t, 1.0).item() == pytest.approx(expected.item(), rel=1e-6)
    # T=2 scales logits by 1/2 and the loss by 4.
    t2 = t * 2
    assert softmax_kd_loss(s, t2, 2.0).item() == pytest.approx(4 * expected.item(), rel=1e-6)
    assert softmax_kd_loss(torch.zeros(0, 3), torch.zeros(0, 3), 1.0).item() == 0.0


def test_sigmoid_kd_against_the_bernoulli_kl():
    torch.manual_seed(0)
    s, t = torch.randn(50) * 4, torch.randn(50) * 4
    p, q = torch.sigmoid(s.double()), torch.sigmoid(t.double())
    kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    torch.testing.assert_close(sigmoid_kd_loss(s, t, 1.0).double(), kl, rtol=1e-4, atol=1e-5)
    assert sigmoid_kd_loss(t, t, 1.0).abs().max().item() < 1e-5


def test_check_levels_names_both_shapes():
    from detectron2.layers import ShapeSpec

    s = {"p3": ShapeSpec(channels=32, stride=8)}
    t = {"p3": ShapeSpec(channels=128, stride=16)}
    with pytest.raises(ValueError, match=r"stride 8 in the student but 16 in the teacher \(student \{p3: stride 8, 32 ch\}, "
                                         r"teacher \{p3: stride 16, 128 ch\}\)"):
        check_levels("X", ["p3"], s, t)
    with pytest.raises(ValueError, match="'p9' is missing from the student and teacher"):
        check_levels("X", ["p9"], s, t)


def test_distiller_naming_a_missing_level_fails_at_build(teacher_weights):
    cfg = load_cfg("retinanet", teacher_weights)
    cfg.model.distillers[0].in_features = ["p2"]
    with pytest.raises(ValueError, match="'p2' is missing from the student and teacher"):
        instantiate(cfg.model)


def test_teacher_class_count_mismatch_fails_at_build(teacher_weights, tmp_path):
    weights = str(tmp_path / "t3.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", weights, ["model.num_classes=3"])
    cfg = load_cfg("retinanet", teacher_weights)
    cfg.model.teacher.weights = weights
    cfg.model.teacher.opts = ["model.num_classes=3"]
    with pytest.raises(ValueError, match="teacher has 3 classes but the student has 8"):
        instantiate(cfg.model)


def test_teacher_checkpoint_that_does_not_fit_its_config(teacher_weights):
    with pytest.raises(RuntimeError, match="do not fit its config"):
        build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights=teacher_weights["faster_rcnn"])


def test_teacher_missing_or_corrupt_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"teacher \(configs/shapes/retinanet_teacher.py\) weights file not found: /no/such.pth"):
        build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights="/no/such.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not be read"):
        build_teacher(config_file="configs/shapes/retinanet_teacher.py", weights=str(bad))
    with pytest.raises(FileNotFoundError, match="neither a file nor a Detectron2 model-zoo config"):
        build_teacher(config_file="nope/teacher.yaml", weights=str(bad))


def test_yacs_model_zoo_teacher_and_yacs_distillation_model(tmp_path):
    """DistillationRetinaNet from a yacs config, with a model-zoo yacs teacher."""
    from detectron2.config import CfgNode as CN
    from detectron2.modeling import build_model

    zoo, small = YACS_ZOO_RETINANET, YACS_SMALL
    cfg = yacs_small_retinanet()
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "t.pth")
    cfg.MODEL.META_ARCHITECTURE = "DistillationRetinaNet"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = zoo
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "t.pth")
    cfg.MODEL.DISTILL.TEACHER.OPTS = [str(x) for x in small]
    # What a yaml file's MODEL.DISTILL.METHODS mapping merges into.
    cfg.MODEL.DISTILL.METHODS.FeatureImitation = CN({"IN_FEATURES": ["p3", "p4"], "WEIGHT": 2.0})
    cfg.MODEL.DISTILL.METHODS.SoftLabelKD = CN({"TEMPERATURE": 2.0})
    model = build_model(cfg).train()
    assert [d.name for d in model.distillers] == ["fitnet", "softlabel"]
    assert model.distillers[0].weight == 2.0 and model.distillers[1].temperature == 2.0
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    from detectron2.structures import Boxes, Instances

    inst = Instances((64, 96), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0]])), gt_classes=torch.tensor([3]))
    with EventStorage(0):
        losses = model([{"image": image, "instances": inst}])
    assert {"loss_kd_fitnet_p3", "loss_kd_fitnet_p4", "loss_kd_softlabel_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_distillation_run_logs_kd_terms_teacher_ap_resumes_and_exports(teacher_weights, tmp_path, train_net, capfd):
    """train_net.py's command line, run in this process (test_train_net.py runs the script itself)."""
    out = str(tmp_path / "run")
    args = ["--config-file", EXPERIMENTS["retinanet"][1], *TINY, "train.max_iter=6", "train.checkpointer.period=3",
            f"model.teacher.weights={teacher_weights['retinanet']}", f"train.output_dir={out}"]
    code, _, log = run_cli(train_net, capfd, args)
    assert code == 0, log[-3000:]
    rows = read_metrics(out)
    assert any("teacher/bbox/AP" in r for r in rows), "the teacher was not evaluated at the start"
    train_rows = [r for r in rows if "total_loss" in r]
    assert all("loss_kd_fitnet_p3" in r for r in train_rows)
    assert os.path.isfile(os.path.join(out, "student", "predictor.yaml"))
    # Stop after the iteration-3 checkpoint, then resume: the teacher is rebuilt from the config.
    os.remove(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    code, _, log = run_cli(train_net, capfd, ["--resume"] + args)
    assert code == 0, log[-3000:]
    assert "Starting training from iteration 3" in log and "Teacher built from" in log
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert state["iteration"] == 5
    assert not any(k.startswith("teacher") for k in state["model"])


def test_distillation_with_two_cpu_processes_under_bfloat16_on_a_free_port(teacher_weights, tmp_path, capfd,
                                                                          monkeypatch):
    """One two-process run (gloo) checks three things, each a process start saved:
    - distillation over DDP: both ranks step and log the KD term;
    - train.amp (bfloat16 autocast) under DDP: the autocast hooks sit on the DistributedDataParallel
      wrapper, and the final checkpoint's weights are fp32;
    - while Detectron2's default port for this user is taken (as by another multi-process run on
      this machine), train_net.py without --dist-url picks a free one."""
    import socket
    from urllib.parse import urlparse

    from detectron2.engine import default_argument_parser

    out = str(tmp_path)
    default_port = urlparse(default_argument_parser().get_default("dist_url")).port
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past runs' TIME_WAIT
        try:
            busy.bind(("127.0.0.1", default_port))
            busy.listen()
        except OSError:  # another process listens there already: it is taken either way
            pass
        capfd.readouterr()
        code = run_train_net_here(
            ["--config-file", EXPERIMENTS["faster_rcnn"][1], "--num-gpus", "2", *TINY, "train.max_iter=2",
             "train.eval_teacher=False", "train.checkpointer.period=100", "train.amp.enabled=True",
             f"model.teacher.weights={teacher_weights['faster_rcnn']}", f"train.output_dir={out}"],
            monkeypatch,
        )
    printed = capfd.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "World size: 2" in printed.out + printed.err  # the workers' output is captured here
    assert f":{default_port}" not in printed.out + printed.err
    log = open(os.path.join(out, "log.txt")).read()
    assert "World size: 2" in log and "runs under autocast(cpu, torch.bfloat16)" in log
    rows = [r for r in read_metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in rows] == [0, 1] and "loss_kd_softlabel_cls" in rows[-1]
    state = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_missing_teacher_weights_fail_before_training(tmp_path, train_net, capfd, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: pytest.fail("a worker started without teacher weights"))
    code, lines, _ = run_cli(train_net, capfd, ["--config-file", EXPERIMENTS["retinanet"][1],
                                                "model.teacher.weights=/no/teacher.pth", f"train.output_dir={tmp_path}"])
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("train_net.py: error: model.teacher.weights: teacher weights file not found: /no/teacher.pth")


def test_teacher_autocast_dtype(teacher_weights):
    cfg = load_cfg("retinanet", teacher_weights)
    cfg.model.teacher.autocast_dtype = "bfloat16"  # CPU autocast supports bfloat16
    model = instantiate(cfg.model).train()
    batch = one_batch(cfg)
    student_images, teacher_images = model.preprocess_pair(batch)
    from d2kd.records import DetectorRecord

    record = model.teacher.record(teacher_images, model.teacher_needs, DetectorRecord(images=student_images, features={}))
    assert record.features["p3"].dtype == torch.bfloat16 and not record.features["p3"].requires_grad
    with EventStorage(0):
        losses = model(batch)
    assert losses["loss_kd_fitnet_p3"].dtype == torch.float32 and torch.isfinite(losses["loss_kd_fitnet_p3"])
    for off in (None, "None", "float32"):  # "None": how a command-line override arrives
        assert build_teacher(config_file=EXPERIMENTS["retinanet"][0], weights=teacher_weights["retinanet"],
                             autocast_dtype=off).compute_dtype("cpu") is None
    with pytest.raises(ValueError, match=r"autocast_dtype must be one of \(None, 'float16', 'bfloat16', 'auto'\), got 'fp8'"):
        build_teacher(config_file=EXPERIMENTS["retinanet"][0], weights=teacher_weights["retinanet"], autocast_dtype="fp8")


@pytest.mark.parametrize("native", [True, False])
def test_teacher_autocast_auto_follows_native_bfloat16(teacher_weights, monkeypatch, native):
    """"auto" runs the teacher in bfloat16 exactly where the device computes it natively (here the
    CPU probe is patched both ways, so the test does not depend on this machine's CPU)."""
    import d2kd.runtime as runtime

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert runtime.native_bfloat16("cpu") is native
    assert runtime.native_bfloat16("mps") is False
    cfg = load_cfg("retinanet", teacher_weights)
    cfg.model.teacher.autocast_dtype = "auto"
    model = instantiate(cfg.model).train()
    assert model.teacher.compute_dtype("cpu") == (torch.bfloat16 if native else None)
    student_images, teacher_images = model.preprocess_pair(one_batch(cfg))
    from d2kd.records import DetectorRecord

    record = model.teacher.record(teacher_images, model.teacher_needs, DetectorRecord(images=student_images, features={}))
    assert record.features["p3"].dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize(
    "config, expected",
    [("configs/shapes/retinanet_student.py", (128, 1333)), ("configs/shapes/ssd_student.py", (128, 128))],
)
def test_predictor_config_takes_the_test_resize(config, expected, tmp_path):
    """DefaultPredictor resizes like the test mapper: ResizeShortestEdge, or a square Resize."""
    from d2kd.export import load_predictor_config, write_predictor_config

    cfg = LazyConfig.load(config)
    path = str(tmp_path / "predictor.yaml")
    write_predictor_config(cfg, str(tmp_path / "config.yaml"), str(tmp_path / "w.pth"), path)
    y = load_predictor_config(path)
    assert (y.INPUT.MIN_SIZE_TEST, y.INPUT.MAX_SIZE_TEST) == expected
    assert y.INPUT.FORMAT == cfg.model.input_format and y.MODEL.META_ARCHITECTURE == "D2KDLazyModel"


def test_two_methods_composed_in_one_config(teacher_weights):
    """configs/shapes/faster_rcnn_fgfi_gkd.py: FGFI and GKD in one run. Both methods' terms are in
    the losses, the teacher runs once per step for the union of their needs, and every adapter of
    both methods (and no teacher tensor) gets a gradient."""
    cfg = LazyConfig.load("configs/shapes/faster_rcnn_fgfi_gkd.py")
    cfg = LazyConfig.apply_overrides(cfg, TINY)
    cfg.model.teacher.weights = teacher_weights["faster_rcnn"]
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    fgfi, gkd = model.distillers
    assert (fgfi.name, gkd.name) == ("fgfi", "gkd")
    assert set(model.teacher_needs) == set(fgfi.teacher_needs()) | set(gkd.teacher_needs()) == {"features", "roi"}
    calls = []
    record = model.teacher.record
    model.teacher.record = lambda *a, **k: calls.append(1) or record(*a, **k)
    fgfi.schedule.warmup_iters = 0  # imitation on from the first step (the config waits 100)
    with EventStorage(0):
        losses = model(one_batch(cfg))
    assert len(calls) == 1
    kd = sorted(k for k in losses if k.startswith("loss_kd_"))
    assert "loss_kd_fgfi_imitation" in kd and {"loss_kd_gkd_point_fg", "loss_kd_gkd_point_bg", "loss_kd_gkd_soft"} <= set(kd)
    sum(losses.values()).backward()
    for method in (fgfi, gkd):
        # every adapter is in the graph; a level with no mask cell in this batch (FGFI's p6) gets 0
        assert all(p.grad is not None for p in method.parameters()), method.name
        assert sum(float(p.grad.abs().sum()) for p in method.parameters()) > 0, method.name
    teacher = teacher_tensors(model)
    assert all(p.grad is None for p in model.teacher.model.parameters())
    assert not any(id(p) in teacher for p in model.parameters())
