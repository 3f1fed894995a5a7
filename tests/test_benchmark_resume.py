"""A benchmark stopped mid-run and started again: its unfinished training jobs resume from their
own checkpoints without the killed run's metrics rows; a job that cannot resume starts from a
clean folder (tools/benchmarking/resume.py, the Scheduler, tools/benchmark.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import D2_MISSING, REPO, run_benchmark_here, tool_env

from benchmarking.resume import (
    STARTED,
    checkpoint_overrides,
    move_aside,
    prepare,
    remove_periodic_checkpoints,
    resume_point,
    with_resume,
)

ARGV = [sys.executable, "/repo/train_net.py", "--config-file", "configs/x.py", "train.max_iter=1000"]


def _rows(path):
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by the kill
                pass
    return rows


def _killed_run(out, argv=ARGV, inputs=None, ckpt_iter=499, last_row=519):
    """What a run killed at iteration ``last_row`` leaves: rows every 20 iterations, its newest
    checkpoint, and the benchmark's record of the command that started it."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        for it in range(19, last_row + 1, 20):
            f.write(json.dumps({"iteration": it, "total_loss": 1.0}) + "\n")
        f.write('{"iteration": 5')  # the line the kill cut
    name = f"model_{ckpt_iter:07d}.pth"
    open(os.path.join(out, name), "wb").close()
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(name)
    with open(os.path.join(out, STARTED), "w") as f:
        json.dump({"argv": argv, "inputs": inputs or {}}, f)


def test_same_command_resumes_and_drops_the_rows_after_its_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    _killed_run(out)
    assert resume_point(out, ARGV, {}) == 500
    argv, start, note = prepare(out, ARGV, {})
    assert argv == [sys.executable, "/repo/train_net.py", "--resume", *ARGV[2:]] and start == 500
    assert [r["iteration"] for r in _rows(os.path.join(out, "metrics.json"))] == list(range(19, 500, 20))
    assert note.startswith("resumes from model_0000499.pth (iteration 500) of its own unfinished run; the killed "
                           "run's metrics.json rows after it are dropped (the file as it was: ")
    kept = note.rsplit(": ", 1)[1].rstrip(")")
    assert os.path.dirname(os.path.dirname(kept)) == os.path.join(out, "stale")
    assert _rows(kept)[-1]["iteration"] == 519  # kept, not lost
    assert os.path.isfile(os.path.join(out, "model_0000499.pth"))


@pytest.mark.parametrize("change", ["argv", "inputs", "no checkpoint", "no record", "rerun"])
def test_anything_else_starts_from_a_clean_folder(tmp_path, change):
    """Another command, a retrained teacher (inputs), no checkpoint, a folder the benchmark did
    not start, or --rerun: the old metrics.json and checkpoints move to stale/<time>/."""
    out = str(tmp_path / "run")
    _killed_run(out, inputs={"/t/model_final.pth": 1.0})
    argv, inputs, may_resume = ARGV, {"/t/model_final.pth": 1.0}, True
    if change == "argv":
        argv = ARGV[:-1] + ["train.max_iter=2000"]
    elif change == "inputs":
        inputs = {"/t/model_final.pth": 2.0}
    elif change == "no checkpoint":
        os.remove(os.path.join(out, "model_0000499.pth"))
    elif change == "no record":
        os.remove(os.path.join(out, STARTED))
    else:
        may_resume = False
    run_argv, start, note = prepare(out, argv, inputs, may_resume=may_resume)
    assert run_argv == argv and start is None
    assert not os.path.exists(os.path.join(out, "metrics.json")) and not os.path.exists(os.path.join(out, "last_checkpoint"))
    stale = note.split(" moved to ", 1)[1].split(" (", 1)[0]
    assert "metrics.json" in os.listdir(stale) and "last_checkpoint" in os.listdir(stale)
    assert note.startswith("starts afresh: the previous run's ")
    # and the folder now records this command: a kill from here on resumes this run
    with open(os.path.join(out, STARTED)) as f:
        assert json.load(f) == {"argv": argv, "inputs": inputs}


def test_checkpoint_helpers(tmp_path):
    assert checkpoint_overrides(1000) == ["train.checkpointer.period=100", "train.checkpointer.max_to_keep=1"]
    assert checkpoint_overrides(2)[0] == "train.checkpointer.period=1"
    assert with_resume(ARGV)[2] == "--resume"
    with pytest.raises(ValueError, match="not a train_net.py command"):
        with_resume([sys.executable, "-m", "benchmarking.measure"])
    for name in ("model_0000099.pth", "model_final.pth", "last_checkpoint"):
        (tmp_path / name).write_text("")
    assert [os.path.basename(p) for p in remove_periodic_checkpoints(str(tmp_path))] == ["model_0000099.pth"]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert move_aside(str(tmp_path / "nothing_here")) is None


def test_eta_of_a_resumed_job_counts_from_where_it_resumed(tmp_path):
    """Issue #27: "teacher iter 520/1000 ... ETA 4:34" a minute after the rerun started. A job
    resumed at 500 of 1000 weighs what is left of it, and its progress counts from 500."""
    from benchmarking.runner import Job, Scheduler

    out = tmp_path / "teacher"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"iteration": 519, "total_loss": 1.0}) + "\n")
    job = Job("teacher", "teacher", ["x"], str(out), weight=1000.0, meta={"iters": 1000, "resumed_at": 500})
    job.status = "running"
    other = Job("done", "baseline", ["x"], str(tmp_path), weight=100.0)
    other.status = "done"
    sched = Scheduler([job, other])
    sched.t0 = time.time() - 60
    job.weight = 500.0  # what _start leaves of a job resumed at its middle
    frac = 0.9 * (520 - 500) / 500
    assert sched.eta() == pytest.approx(60 * (500 * (1 - frac)) / (100 + 500 * frac), rel=0.02)


def test_killed_benchmark_resumes_its_teacher_without_stale_metrics(tmp_path, monkeypatch):
    """End to end: SIGTERM to the benchmark while its teacher trains (40 iterations, a checkpoint
    every 4), after its baseline (2 jobs in parallel; the one job that needs no teacher) finished,
    then the same command again. The first call stops its running jobs on the way out; the second
    reuses the finished baseline, resumes the teacher from its checkpoint (train_net.py --resume),
    and the teacher's metrics.json holds each iteration once, with no row of the killed run after
    the checkpoint."""
    pytest.importorskip("detectron2", reason=D2_MISSING)
    teachers, out = tmp_path / "teachers", tmp_path / "bench"
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--detectors", "retinanet", "--methods", "fitnet",
           "--seeds", "0", "--iters", "1", "--evals", "1", "--jobs", "2", "--no-wallclock", "--no-cost", "--no-memory",
           "--no-estimate", "--overhead-iters", "1", "--overhead-warmup", "0", "--heartbeat", "1000",
           "--output", str(out), "--teacher-root", str(teachers),
           "--set", "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.test.dataset.names=shapes_tiny_val",
           "dataloader.train.total_batch_size=2", "train.log_period=1", "model.test_score_thresh=0.0",
           "--teacher-set", "train.max_iter=40"]  # the baseline finishes at about the teacher's 12th iteration
    env = tool_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    tdir = teachers / "retinanet_teacher"
    baseline_done = out / "runs" / "retinanet" / "baseline" / "seed0" / "benchmark_done.json"

    def stoppable():
        """The baseline is done, and the teacher wrote a metrics row after its newest checkpoint."""
        if not baseline_done.exists() or not (tdir / "last_checkpoint").exists():
            return False
        name = (tdir / "last_checkpoint").read_text().strip()
        rows = _rows(tdir / "metrics.json") if (tdir / "metrics.json").exists() else []
        if not name.startswith("model_0") or not rows:  # (being written; or model_final.pth: too late)
            return name == "model_final.pth"
        return rows[-1]["iteration"] > int(name[len("model_"):-len(".pth")])

    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not stoppable():
        time.sleep(0.05)
    if first.poll() is not None or (tdir / "model_final.pth").exists() or not baseline_done.exists():
        first.kill()
        pytest.fail("the teacher finished before it could be stopped, or the baseline did not finish within 240 s: "
                    + first.communicate()[0][-2000:])
    first.send_signal(signal.SIGTERM)
    stdout = first.communicate(timeout=60)[0]
    assert first.returncode == 128 + signal.SIGTERM, stdout[-3000:]
    assert "[benchmark] stopping 1 running job(s): teacher:retinanet_teacher" in stdout
    killed_rows = [r["iteration"] for r in _rows(tdir / "metrics.json") if "total_loss" in r]
    time.sleep(1.0)  # the teacher process was stopped too: nothing writes into its folder any more
    assert [r["iteration"] for r in _rows(tdir / "metrics.json") if "total_loss" in r] == killed_rows
    assert not (tdir / "model_final.pth").exists()
    ckpt = (tdir / "last_checkpoint").read_text()
    resumed_at = int(ckpt[len("model_"):-len(".pth")]) + 1

    # the same command again (main(argv) in this process: the resuming is the plan's and the Scheduler's)
    monkeypatch.chdir(REPO)
    second = run_benchmark_here(cmd[2:], monkeypatch)
    assert "reused baseline:retinanet:default:s0" in second  # finished before the kill: kept
    assert f"[benchmark] teacher:retinanet_teacher resumes from {ckpt} (iteration {resumed_at}) of its own unfinished run" \
        in second
    log = (tdir / "benchmark_job.log").read_text()
    assert "--resume" in log and f"Resumed from {tdir / ckpt} at iteration {resumed_at}" in log
    rows = _rows(tdir / "metrics.json")
    train_its = [r["iteration"] for r in rows if "total_loss" in r]
    assert train_its == list(range(40)), train_its  # each once, in order: no killed run's row, no gap
    assert "bbox/AP" in rows[-1]
    # the finished teacher keeps model_final.pth only; the distilled run used it
    assert sorted(p.name for p in tdir.glob("model_*.pth")) == ["model_final.pth"]
    res = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in res["detectors"]["retinanet"]["methods"]["fitnet"]["runs"]] == ["done"]
