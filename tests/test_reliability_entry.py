"""train_net.py's entry checks: every override names an existing key (a section left out must
not send a run into another run's folder), flags go anywhere on the command line, a run needs
at least one iteration, and --eval-only refuses weights that do not fit the model.
``train_net.cli`` runs in this process (with ``--num-gpus 1`` it trains here)."""
import hashlib
import os

import pytest
from conftest import D2_MISSING, TINY, run_cli, run_train_net_here, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402

STUDENT = "configs/shapes/retinanet_student.py"
FITNET = "configs/shapes/retinanet_fitnet.py"


def _snapshot(folder):
    """{file name: (size, mtime_ns, sha1)} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, hashlib.sha1(f.read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A finished run's folder (its config's own ``train.output_dir``), trained in this process."""
    out = str(tmp_path_factory.mktemp("other_run"))
    with pytest.MonkeyPatch.context() as mp:
        code = run_train_net_here(["--config-file", STUDENT, *TINY, "train.max_iter=1", f"train.output_dir={out}"], mp)
    assert code == 0
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    return out


# ---- overrides without their section ------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("output_dir={new}", "override 'output_dir={new}': the config has no top-level key 'output_dir'; did you "
                             "mean 'train.output_dir'"),
        ("max_iter=10", "override 'max_iter=10': the config has no top-level key 'max_iter'; did you mean "
                        "'train.max_iter'? (each key is written with its section: "),
        ("=5", "malformed override '=5': no key before '=' (e.g. train.max_iter=100)"),
    ],
    ids=["output_dir", "max_iter", "bare"],
)
def test_override_without_its_section_is_refused_and_no_other_run_changes(
    train_net, other_run, tmp_path, capfd, override, message
):
    """``output_dir=/tmp/my_new_run`` was accepted and ignored: the run trained into the config's
    own output_dir and overwrote that run's model_final.pth."""
    new = str(tmp_path / "my_new_run")
    before = _snapshot(other_run)
    # The other run's folder stands for the config's own train.output_dir.
    args = ["--config-file", STUDENT, *TINY, "train.max_iter=1", f"train.output_dir={other_run}",
            override.format(new=new)]
    code, lines, out = run_cli(train_net, capfd, args)
    assert code == 2 and len(lines) == 1, out[-3000:]
    assert lines[0].startswith("train_net.py: error: " + message.format(new=new)), lines
    assert _snapshot(other_run) == before
    assert not os.path.exists(new)


def test_unknown_top_level_key_without_a_close_match(train_net, tmp_path, capfd):
    code, lines, out = run_cli(train_net, capfd, ["--config-file", STUDENT, "zzz=1", f"train.output_dir={tmp_path}"])
    assert code == 2 and lines == [
        "train_net.py: error: override 'zzz=1': the config has no top-level key 'zzz': write each key with "
        "its section (dataloader, lr_multiplier, model, optimizer, train)"
    ], out[-3000:]


def test_overrides_that_name_existing_or_new_keys_still_apply():
    """Keys with their section, list items, a call section's new keyword and ``+key=value``."""
    from d2kd.engine.validate import load_config

    cfg = load_config(FITNET, ["train.max_iter=7", "model.distillers.0.weight=2.0", "+train.note=x",
                               "+top_level_note=y", "model.distillers.0.new_kwarg=1"])
    assert cfg.train.max_iter == 7 and cfg.model.distillers[0].weight == 2.0
    assert cfg.train.note == "x" and cfg.top_level_note == "y" and cfg.model.distillers[0].new_kwarg == 1


# ---- flags anywhere -----------------------------------------------------------------------------
def test_flags_after_overrides(train_net, tmp_path, monkeypatch):
    """``X train.max_iter=20 --num-gpus 2`` failed with "malformed override '--num-gpus'"."""
    launched = {}

    def fake_launch(main, num_gpus, *, args, **kwargs):
        launched.update(num_gpus=num_gpus, resume=args[0].resume, opts=list(args[0].opts))

    monkeypatch.setattr(train_net, "launch", fake_launch)
    opts = [*TINY, "train.max_iter=20", f"train.output_dir={tmp_path}"]
    train_net.cli(["--config-file", STUDENT, *opts[:2], "--num-gpus", "2", *opts[2:], "--resume"])
    assert launched == {"num_gpus": 2, "resume": True, "opts": opts}


def test_unknown_flag_after_overrides_is_an_argparse_error(train_net, capfd):
    with pytest.raises(SystemExit) as e:
        train_net.cli(["--config-file", STUDENT, "train.max_iter=2", "--no-such-flag"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capfd.readouterr().err


# ---- max_iter -----------------------------------------------------------------------------------
@pytest.mark.parametrize("max_iter", [0, -5])
def test_max_iter_below_one_is_refused(train_net, tmp_path, capfd, max_iter):
    """0 ended in a ZeroDivisionError, -5 trained nothing with exit status 0."""
    out = tmp_path / "out"
    code, lines, err = run_cli(train_net, capfd, ["--config-file", STUDENT, *TINY, f"train.max_iter={max_iter}",
                                               f"train.output_dir={out}"])
    assert code == 2 and lines == [
        f"train_net.py: error: train.max_iter={max_iter}: training needs at least 1 iteration (e.g. "
        f"train.max_iter=100); to evaluate weights without training, use --eval-only with "
        f"train.init_checkpoint=PATH"
    ], err[-3000:]
    assert not out.exists()


# ---- --eval-only weights ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_weights")
    out = {}
    for name in ("faster_rcnn_teacher", "retinanet_student"):
        out[name] = str(d / f"{name}.pth")
        save_random_weights(f"configs/shapes/{name}.py", out[name])
    sd = torch.load(out["retinanet_student"], weights_only=True)["model"]
    out["backbone_only"] = str(d / "backbone_only.pth")
    torch.save({"model": {k: v for k, v in sd.items() if k.startswith("backbone.")}}, out["backbone_only"])
    return out


def _eval_args(tmp_path, init, *extra):
    return ["--config-file", STUDENT, "--eval-only", *TINY, f"train.init_checkpoint={init}",
            f"train.output_dir={tmp_path / 'eval'}", *extra]


def test_eval_only_refuses_weights_of_another_architecture(train_net, weights, tmp_path, capfd):
    """Faster R-CNN weights into the RetinaNet student evaluated to AP nan with exit status 0."""
    init = weights["faster_rcnn_teacher"]
    code, lines, out = run_cli(train_net, capfd, _eval_args(tmp_path, init))
    assert code == 2 and len(lines) == 1, out[-3000:]
    assert lines[0].startswith(
        f"train_net.py: error: --eval-only: train.init_checkpoint {init} does not fit the model of {STUDENT}: "
        f"only 38 of the model's 192 tensors could be loaded ("
    ), lines
    assert lines[0].endswith("pick weights trained with this config (or set train.allow_partial_init=True to "
                             "evaluate the matching part anyway)")
    assert "copypaste:" not in out  # nothing was evaluated


def test_eval_only_refuses_weights_without_the_heads(train_net, weights, tmp_path, capfd):
    """A backbone-only file is a fine init for training, but would evaluate random heads."""
    code, lines, out = run_cli(train_net, capfd, _eval_args(tmp_path, weights["backbone_only"]))
    assert code == 2 and len(lines) == 1, out[-3000:]
    assert " does not fit the model of configs/shapes/retinanet_student.py: " in lines[0]
    assert "tensors are not in the file (e.g. ['head." in lines[0]
    assert "copypaste:" not in out


def test_eval_only_evaluates_weights_that_fit(train_net, weights, tmp_path, capfd):
    code, lines, out = run_cli(train_net, capfd, _eval_args(tmp_path, weights["retinanet_student"]))
    assert code == 0 and not lines, out[-3000:]
    assert "copypaste: AP,AP50" in out


# ---- --resume into a folder written by another model, method or optimizer -----------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "retinanet_teacher.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", path)
    return path


@pytest.mark.parametrize(
    "config, extra, problem",
    [
        (FITNET, ["train.eval_teacher=False"],
         "6 of the model's 198 tensors are not in the file (e.g. ['distillers.0.adapters.p3.weight', "
         "'distillers.0.adapters.p3.bias'])"),
        ("configs/shapes/faster_rcnn_student.py", [], "tensors of the file are not in the model (e.g. ['head."),
        (STUDENT, ["model.num_classes=3"],
         "2 tensors have another shape (e.g. head.cls_score.weight: file (72, 32, 3, 3) vs model (27, 32, 3, 3); "
         "head.cls_score.bias: file (72,) vs model (27,))"),
        (STUDENT, ["optimizer._target_=torch.optim.SGD"],
         "its optimizer state is of another optimizer: its parameter groups lack ['momentum', 'dampening', "
         "'nesterov'], which SGD needs"),
        (STUDENT, ["optimizer.params.base_lr=0.005", "optimizer.params.bias_lr_factor=2.0"],
         "its optimizer state has 2 parameter groups of [42, 36] parameters, the optimizer 4 of [30, 18, 18, 12]"),
    ],
    ids=["another_method", "another_model", "another_class_count", "another_optimizer", "other_param_groups"],
)
def test_resume_into_a_folder_of_another_run_is_refused(
    train_net, other_run, teacher, tmp_path, capfd, config, extra, problem
):
    """These failed at the optimizer's load ("parameter group" ValueError), at the first step
    (a "broadcast shape" RuntimeError, KeyError: 'momentum') or trained on with half-loaded weights."""
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(other_run, out)
    before = _snapshot(out)
    args = ["--config-file", config, "--resume", *TINY, "train.max_iter=3", f"model.teacher.weights={teacher}",
            f"train.output_dir={out}", *extra]
    if config != FITNET:
        args.remove(f"model.teacher.weights={teacher}")
    code, lines, err = run_cli(train_net, capfd, args)
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith(
        f"train_net.py: error: {config}: --resume: checkpoint {out}/model_final.pth does not fit this config: "
    ), lines
    assert problem in lines[0], lines
    assert lines[0].endswith("; it was written by another model or method (resume with the config that wrote "
                             "it, or set a new train.output_dir to start afresh)")
    assert "Starting training" not in err
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != "log.txt"} == {k: v for k, v in before.items() if k != "log.txt"}


def test_optimizer_state_of_other_shapes_is_refused():
    """Same group sizes, other parameter shapes: loading succeeded and the first step failed with
    "The size of tensor a (4) must match the size of tensor b (3)"."""
    from d2kd.engine.trainer import optimizer_state_fit

    def stepped(out_features):
        model = torch.nn.Linear(3, out_features)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        return model, opt

    old_model, old_opt = stepped(4)
    model, opt = stepped(2)
    assert optimizer_state_fit(opt, old_opt.state_dict(), model) == (
        "its optimizer state 'momentum_buffer' of parameter weight has shape (4, 3), the parameter (2, 3)"
    )
    assert optimizer_state_fit(old_opt, old_opt.state_dict(), old_model) is None
    with pytest.raises(RuntimeError, match="size of tensor"):  # what fitting it would do
        opt.load_state_dict(old_opt.state_dict())
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
