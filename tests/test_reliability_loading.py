"""Reading and writing weight files: no route runs code from a file (serving included), a file
that is not a checkpoint is said to be one, every route has its pickle opt-in, and a full disk
is reported naming the file. Tiny models (the shapes student, 0.2 M parameters)."""
import errno
import fractions
import importlib.util
import os
import pickle
import subprocess
import sys

import pytest
from conftest import D2_MISSING, REPO, TINY, run_cli, save_random_weights
from conftest import YACS_SMALL, YACS_ZOO_RETINANET, yacs_small_retinanet

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402

STUDENT = "configs/shapes/retinanet_student.py"
TEACHER = "configs/shapes/retinanet_teacher.py"
#: What a predictor refusal names as the way to opt in.
PREDICTOR_OPT_IN = ("opt in with MODEL.ALLOW_PICKLE True in the predictor config (tools/demo.py "
                    "--allow-pickle, d2kd.export.build_predictor(..., allow_pickle=True))")


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious weight file does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_pkl(state, path, **extra):
    """A Detectron2 model-zoo style .pkl of ``state`` (numpy arrays), plus ``extra`` objects."""
    data = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test", "matching_heuristics": False}
    data.update(extra)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An exported tiny student (random weights): its predictor.yaml and state dict."""
    from detectron2.config import LazyConfig

    from d2kd.export import export_student

    d = tmp_path_factory.mktemp("served")
    save_random_weights(STUDENT, str(d / "run.pth"))
    paths = export_student(LazyConfig.load(STUDENT), str(d / "run.pth"), str(d / "export"))
    state = torch.load(paths["weights"], weights_only=True)["model"]
    return {"dir": d, "predictor": paths["predictor"], "state": state}


def _predictor_yaml(served, weights, name):
    """served's predictor.yaml with MODEL.WEIGHTS = ``weights``."""
    from d2kd.export import load_predictor_config

    cfg = load_predictor_config(served["predictor"])
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = "cpu"
    path = served["dir"] / name
    path.write_text(cfg.dump())
    return str(path)


# ---- 1. serving never unpickles code ------------------------------------------------------------
def test_malicious_pkl_in_predictor_yaml_runs_no_code_through_any_entry_point(served, tmp_path):
    from detectron2.engine import DefaultPredictor

    import d2kd.export as export
    from d2kd.checkpoint import UnsafePickleError

    marker = tmp_path / "payload_ran"
    evil = _write_pkl(served["state"], tmp_path / "evil.pkl", payload=_Payload(marker))
    predictor_yaml = _predictor_yaml(served, evil, "evil_predictor.yaml")
    refusal = f"{evil} is a pickle that needs 'posix.system' to load, and unpickling it could run arbitrary code"

    # tools/demo.py, as a user runs it
    proc = subprocess.run(
        [sys.executable, "tools/demo.py", "--predictor", predictor_yaml, "--input", str(tmp_path / "x.png"),
         "--output", str(tmp_path / "demo")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",  # this checkout's d2kd
                 PYTHONPATH=os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])),
    )
    assert not marker.exists(), "tools/demo.py ran the pickle's payload"
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"demo.py: error: cannot load the model of {predictor_yaml}: {refusal}"), last
    assert PREDICTOR_OPT_IN in last

    # Stock DefaultPredictor on d2kd's predictor config, and d2kd's own builder
    for build in (lambda: DefaultPredictor(export.load_predictor_config(predictor_yaml)),
                  lambda: export.build_predictor(predictor_yaml)):
        with pytest.raises(UnsafePickleError) as e:
            build()
        assert not marker.exists(), "the pickle's payload ran"
        assert refusal in str(e.value) and PREDICTOR_OPT_IN in str(e.value)


def test_model_zoo_style_pkl_is_served_and_a_trusted_pickle_needs_the_opt_in(served, tmp_path, caplog):
    """Arrays-only .pkl: served by both routes without opt-in. A .pkl that needs a class
    (fractions.Fraction, harmless) is refused without MODEL.ALLOW_PICKLE / allow_pickle."""
    import logging

    from detectron2.engine import DefaultPredictor

    from d2kd.checkpoint import UnsafePickleError
    from d2kd.export import build_predictor, load_predictor_config

    key = "head.cls_score.weight"
    plain = _predictor_yaml(served, _write_pkl(served["state"], tmp_path / "zoo.pkl"), "zoo_predictor.yaml")
    for predictor in (DefaultPredictor(load_predictor_config(plain)), build_predictor(plain)):
        assert torch.equal(predictor.model.state_dict()[key], served["state"][key])

    trusted = _write_pkl(served["state"], tmp_path / "trusted.pkl", note=fractions.Fraction(1, 3))
    trusted_yaml = _predictor_yaml(served, trusted, "trusted_predictor.yaml")
    for build in (lambda: DefaultPredictor(load_predictor_config(trusted_yaml)),
                  lambda: build_predictor(trusted_yaml)):
        with pytest.raises(UnsafePickleError, match="needs 'fractions.Fraction' to load"):
            build()
    logging.getLogger("d2kd").propagate = True
    try:
        with caplog.at_level("WARNING"):
            predictor = build_predictor(trusted_yaml, allow_pickle=True)
            cfg = load_predictor_config(trusted_yaml)
            cfg.MODEL.ALLOW_PICKLE = True
            stock = DefaultPredictor(cfg)
    finally:
        logging.getLogger("d2kd").propagate = False
    for p in (predictor, stock):
        assert torch.equal(p.model.state_dict()[key], served["state"][key])
    assert "only do this for files you trust" in caplog.text


def test_visualize_predictions_honours_the_configs_pickle_opt_in(served, tmp_path):
    spec = importlib.util.spec_from_file_location("visualize_predictions", os.path.join(REPO, "tools", "visualize_predictions.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    weights = str(tmp_path / "student.pth")
    torch.save({"model": served["state"], "note": fractions.Fraction(1, 3)}, weights)
    with pytest.raises(pickle.UnpicklingError, match="opt in with train.allow_pickle_checkpoints=True"):
        tool.load_student(STUDENT, weights)
    model, _ = tool.load_student(STUDENT, weights, ["train.allow_pickle_checkpoints=True"])
    assert torch.equal(model.state_dict()["head.cls_score.weight"], served["state"]["head.cls_score.weight"])


# ---- 9. a file that is not a checkpoint ---------------------------------------------------------
@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_random_bytes_are_not_a_checkpoint_with_or_without_the_opt_in(tmp_path, suffix, allow_pickle):
    from d2kd.teacher import build_teacher

    path = tmp_path / f"teacher{suffix}"
    rng = np.random.default_rng(0)
    path.write_bytes(rng.bytes(1 << 16))
    with pytest.raises(RuntimeError) as e:
        build_teacher(config_file=TEACHER, weights=str(path), allow_pickle=allow_pickle)
    msg = str(e.value)
    assert f"weights file {path} could not be read (NotACheckpointError: {path} is not a checkpoint: " in msg
    assert "is it the right file, and was it copied completely?" in msg
    assert "opt in" not in msg and "MemoryError" not in msg


def test_a_plain_pickle_named_pth_is_told_to_be_named_pkl(served, tmp_path):
    from d2kd.checkpoint import NotACheckpointError, load_torch_weights

    path = _write_pkl(served["state"], tmp_path / "zoo.pth")
    with pytest.raises(NotACheckpointError, match="it looks like a plain pickle: a Detectron2/Caffe2 model-zoo "
                                                  "pickle must be named .pkl"):
        load_torch_weights(path)


# ---- 10. the pickle opt-in of --eval-only and of the yacs teacher -------------------------------
def test_eval_only_honours_allow_pickle_checkpoints(train_net, served, tmp_path, capfd):
    weights = str(tmp_path / "student.pth")
    torch.save({"model": served["state"], "note": fractions.Fraction(1, 3)}, weights)
    args = ["--config-file", STUDENT, "--eval-only", *TINY, f"train.init_checkpoint={weights}",
            f"train.output_dir={tmp_path / 'out'}"]
    code, lines, out = run_cli(train_net, capfd, args)
    assert code == 1 and len(lines) == 1, out[-2000:]
    assert (f"{weights} holds objects other than tensors and plain types (it needs 'fractions.Fraction'); "
            f"loading it could run arbitrary code: if you trust the file, opt in with "
            f"train.allow_pickle_checkpoints=True") in lines[0]
    code, lines, out = run_cli(train_net, capfd, [*args, "train.allow_pickle_checkpoints=True"])
    assert code == 0 and not lines, out[-2000:]
    assert "bbox" in out and "AP" in out  # it evaluated


def test_yacs_teacher_has_its_own_pickle_opt_in(tmp_path):
    """MODEL.DISTILL.TEACHER.ALLOW_PICKLE: refused without it (and the refusal names it)."""
    from detectron2.config import CfgNode as CN
    from detectron2.modeling import build_model

    zoo, small = YACS_ZOO_RETINANET, YACS_SMALL
    cfg = yacs_small_retinanet()
    teacher = tmp_path / "t.pth"
    torch.save({"model": build_model(cfg).state_dict(), "note": fractions.Fraction(1, 3)}, teacher)
    cfg.MODEL.META_ARCHITECTURE = "DistillationRetinaNet"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = zoo
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(teacher)
    cfg.MODEL.DISTILL.TEACHER.OPTS = [str(x) for x in small]
    cfg.MODEL.DISTILL.METHODS.FeatureImitation = CN({"IN_FEATURES": ["p3"]})
    with pytest.raises(RuntimeError) as e:
        build_model(cfg)
    assert f"{teacher} holds objects other than tensors and plain types" in str(e.value)
    assert "opt in with MODEL.DISTILL.TEACHER.ALLOW_PICKLE True" in str(e.value)
    cfg.MODEL.DISTILL.TEACHER.ALLOW_PICKLE = True
    model = build_model(cfg)
    assert model.teacher.weights == str(teacher)


# ---- 11. a full disk ----------------------------------------------------------------------------
class _FullDisk:
    """A file on a disk that fills up after ``room`` bytes: writes beyond raise ENOSPC, as the
    OS does (torch.save's zip writer then reports "unexpected pos")."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _fill_disk(monkeypatch, room):
    """Checkpoint files (``*.pth.tmp.<pid>``) hit a full disk after ``room`` bytes."""
    import d2kd.checkpoint as ck

    def full_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f, room) if ".pth.tmp." in str(path) else f

    monkeypatch.setattr(ck, "open", full_open, raising=False)  # module global shadows the builtin


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch, where):
    from d2kd.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(256, 256)
    ck = AtomicCheckpointer(model, str(tmp_path))
    ck.save("model_0000009")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if where == "write":
        _fill_disk(monkeypatch, room=4096)
    else:  # buffered data reaches the disk only at fsync
        def full_fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full_fsync)
    target = tmp_path / "model_0000019.pth"
    with pytest.raises(OSError) as e:
        ck.save("model_0000019")
    assert e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(f"[Errno {errno.ENOSPC}] no space left writing {target} (No space left on device): "
                                   f"free space on that disk, or point train.output_dir at another, then continue "
                                   f"with --resume"), str(e.value)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, "a partial file was left, or the previous checkpoint changed"


def test_full_disk_during_training_is_one_line_naming_the_file(train_net, tmp_path, capfd, monkeypatch):
    _fill_disk(monkeypatch, room=4096)
    out = tmp_path / "out"
    args = ["--config-file", STUDENT, *TINY, "train.max_iter=2", "train.checkpointer.period=1",
            f"train.output_dir={out}"]
    code, lines, text = run_cli(train_net, capfd, args)
    assert code == 1 and len(lines) == 1, text[-3000:]
    assert lines[0].startswith(f"train_net.py: error: OSError: [Errno {errno.ENOSPC}] no space left writing "
                               f"{out}/model_0000000.pth (No space left on device)"), lines[0]
    assert "enforce fail" not in lines[0]
    assert not [p for p in os.listdir(out) if ".tmp." in p or p.endswith(".pth")]
