"""The benchmark's converged protocol (registry.CONTINUATIONS): what ``--quick`` and ``--full``
plan — teachers and student starts trained once for the protocol's lengths or taken from the
checkpoints d2kd ships, every student run continuing from the start — and that ``--protocol
scratch`` plans what the benchmark ran before it (every student from scratch)."""
import os

import pytest
import torch
from conftest import D2_MISSING, benchmark_tool, read_metrics, run_benchmark_here

pytest.importorskip("detectron2", reason=D2_MISSING)


def _plan(tmp_path, *argv):
    tool = benchmark_tool()
    return tool.Plan(tool.parse_args([*argv, "--output", str(tmp_path / "bench")]))


def _jobs(plan):
    return {j.name: j for j in plan.jobs}


def _opt(argv, key):
    """The last ``key=value`` of a command line (the one the config gets), or None."""
    vals = [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")]
    return vals[-1] if vals else None


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A model zoo folder holding a RetinaNet teacher and student start (empty files: planning
    only looks for them)."""
    import d2kd.model_zoo as zoo

    folder = tmp_path / "zoo"
    folder.mkdir()
    for name in ("retinanet_teacher_12000", "retinanet_student_12000"):
        (folder / f"{name}.pth").write_bytes(b"")
    monkeypatch.setattr(zoo, "SHAPES_DIR", str(folder))
    return folder


def test_quick_continues_from_the_shipped_checkpoints_and_trains_nothing_long(tmp_path, shipped):
    plan = _plan(tmp_path, "--quick")
    jobs = _jobs(plan)
    assert plan.args.protocol == "converged" and plan.args.seeds == [0, 1]
    assert not [n for n, j in jobs.items() if j.kind in ("teacher", "init")]
    teacher, start = str(shipped / "retinanet_teacher_12000.pth"), str(shipped / "retinanet_student_12000.pth")
    assert "teacher_eval:retinanet_teacher_12000" in jobs  # the shipped teacher is still scored here
    for name in ("baseline:retinanet:default:s0", "baseline:retinanet:default:s1", "kd:retinanet:fgfi:s0",
                 "kd:retinanet:fgfi:s1"):
        argv = jobs[name].cmd
        assert _opt(argv, "train.init_checkpoint") == start and _opt(argv, "train.max_iter") == "1000", name
        assert start in jobs[name].inputs  # a new start makes a finished run stale
    assert _opt(jobs["kd:retinanet:fgfi:s0"].cmd, "model.teacher.weights") == teacher
    assert _opt(jobs["overhead:retinanet:fgfi"].cmd, "train.init_checkpoint") == start
    # the wall-clock baseline too, once its step ratio is measured
    os.makedirs(os.path.dirname(plan.experiments[0].overhead_file))
    with open(plan.experiments[0].overhead_file, "w") as f:
        f.write('{"step_ratio": 1.588}')
    wall = jobs["wall:retinanet:fgfi:s1"].cmd()
    assert _opt(wall, "train.init_checkpoint") == start and _opt(wall, "train.max_iter") == "1588"


def test_full_trains_each_protocol_model_once_for_its_length(tmp_path):
    """Nothing shipped under --teacher-root: the teachers train for the protocol's lengths
    (RetinaNet 12000, Faster R-CNN 8000, FCOS 6000), each detector's start once (12000), and every student
    run waits for its start; rows with a baseline of their own and detectors without a protocol
    run as their configs say."""
    root = tmp_path / "teachers"
    plan = _plan(tmp_path, "--full", "--teacher-root", str(root))
    jobs = _jobs(plan)
    for det, t_iters in (("retinanet", "12000"), ("faster_rcnn", "8000"), ("fcos", "6000")):
        teacher = jobs[f"teacher:{det}_teacher_{t_iters}"].cmd
        assert _opt(teacher, "train.max_iter") == t_iters
        assert _opt(teacher, "train.output_dir") == str(root / f"{det}_teacher_{t_iters}")
        init = jobs[f"init:{det}_student_12000"].cmd
        assert _opt(init, "train.max_iter") == "12000" and _opt(init, "train.seed") == "0"
        assert _opt(init, "--config-file") is None and f"configs/shapes/{det}_student.py" in init
        start = str(root / f"{det}_student_12000" / "model_final.pth")
        for name in (f"baseline:{det}:default:s3", f"kd:{det}:fgfi:s2"):
            assert _opt(jobs[name].cmd, "train.init_checkpoint") == start
            assert _opt(jobs[name].cmd, "train.max_iter") == "1000"
            assert f"init:{det}_student_12000" in jobs[name].deps
    # a Faster R-CNN student beside the protocol's RetinaNet teacher
    assert _opt(jobs["kd:faster_rcnn:pkd_from_retinanet:s0"].cmd, "model.teacher.weights") == \
        str(root / "retinanet_teacher_12000" / "model_final.pth")
    # LSHFM's baseline (a wider tower, fine-tuned from its own checkpoint) and SSD: not continued
    lshfm = jobs["baseline:retinanet:student_tower128_finetune:s0"]
    assert _opt(lshfm.cmd, "train.init_checkpoint") is None  # its config's own start:
    assert lshfm.deps == ["init:retinanet_student_tower128"]
    ssd = jobs["kd:ssd:chen2017:s0"].cmd
    assert _opt(ssd, "train.init_checkpoint") is None
    assert _opt(ssd, "model.teacher.weights") == str(root / "ssd_teacher" / "model_final.pth")
    # one start and one teacher per detector, however many rows use them
    assert len([n for n in jobs if n.startswith("init:retinanet_student_12000")]) == 1


def test_scratch_protocol_plans_every_student_from_scratch(tmp_path):
    plan = _plan(tmp_path, "--detectors", "faster_rcnn", "--methods", "fgfi", "--seeds", "0",
                 "--teacher-root", str(tmp_path / "teachers"))
    jobs = _jobs(plan)
    assert plan.args.protocol == "scratch"
    assert set(n for n, j in jobs.items() if j.kind in ("teacher", "init")) == {"teacher:faster_rcnn_teacher"}
    kd = jobs["kd:faster_rcnn:fgfi:s0"].cmd
    assert _opt(kd, "train.init_checkpoint") is None and _opt(kd, "train.max_iter") == "1000"  # the config's
    assert _opt(jobs["teacher:faster_rcnn_teacher"].cmd, "train.max_iter") is None  # the teacher config's own


def test_a_converged_call_trains_the_start_once_and_continues_every_run_from_it(tmp_path, monkeypatch):
    """End to end on the tiny split with a tiny protocol (teacher 3 iterations, start 2, runs 2):
    the teacher and the start are trained first for their own lengths, the baseline and the
    distilled run load the start, and the report names the protocol."""
    import json

    tool = benchmark_tool()
    monkeypatch.setattr(tool.registry, "CONTINUATIONS",
                        {"retinanet": tool.registry.Continuation(teacher_iters=3, start_iters=2, iters=2)})
    root, out = tmp_path / "trained", tmp_path / "bench"
    printed = run_benchmark_here([
        "--protocol", "converged", "--detectors", "retinanet", "--methods", "fitnet", "--seeds", "0", "--evals", "1",
        "--jobs", "2", "--output", str(out), "--teacher-root", str(root), "--no-wallclock", "--no-memory",
        "--no-cost", "--no-estimate", "--overhead-iters", "1", "--overhead-warmup", "1", "--heartbeat", "1000",
        "--set", "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.test.dataset.names=shapes_tiny_val",
        "dataloader.train.total_batch_size=2", "train.log_period=1", "model.test_score_thresh=0.0"], monkeypatch)
    assert "start init:retinanet_student_2" in printed and "start teacher:retinanet_teacher_3" in printed
    start = root / "retinanet_student_2" / "model_final.pth"
    assert [r["iteration"] for r in read_metrics(str(root / "retinanet_student_2")) if "total_loss" in r] == [0, 1]
    assert max(r["iteration"] for r in read_metrics(str(root / "retinanet_teacher_3")) if "total_loss" in r) == 2
    for run in ("baseline", "fitnet"):
        log = (out / "runs" / "retinanet" / run / "seed0" / "log.txt").read_text()
        assert f"[Checkpointer] Loading from {start}" in log, run
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["protocol"] == "converged"
    assert res["detectors"]["retinanet"]["start"]["iters"] == 2
    assert res["detectors"]["retinanet"]["teacher"]["iters"] == 3
    md = (out / "results.md").read_text()
    assert f"continues for 2 iterations from the plain student trained 2 iterations (`{start}`" in md
