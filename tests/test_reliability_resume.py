"""Kill -9 a real distillation run at several moments (one of them while a checkpoint is being
written), resume it with --resume each time, and check it finishes with the right iteration
count, a whole state, the schedule following the restored iteration, and that no partial
checkpoint is ever picked up."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import D2_MISSING, REPO, TINY, save_random_weights
from fault_injection import TRAIN_NET_WITH_FAULTS, fault_env

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402

CONFIG = "configs/shapes/retinanet_fitnet.py"
MAX_ITER = 12
WARMUP = 7  # KD multiplied by 0 before iteration 7: the resumed runs must respect it


def _args(out, teacher, resume, script):
    return [
        sys.executable, script, "--config-file", CONFIG,
        *(["--resume"] if resume else []), *TINY,
        f"train.max_iter={MAX_ITER}", "train.checkpointer.period=3", "train.checkpointer.max_to_keep=10",
        "train.eval_teacher=False", f"model.teacher.weights={teacher}", f"train.output_dir={out}",
        "model.distillers.0.schedule={_target_:d2kd.distill.base.KDSchedule,warmup_iters:%d}" % WARMUP,
    ]


def _start(out, teacher, resume, log, delay=0.0):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **fault_env(checkpoint_delay=delay))
    # With a delay: train_net.py with every checkpoint write slowed down (tests/fault_injection.py)
    script = TRAIN_NET_WITH_FAULTS if delay else os.path.join(REPO, "train_net.py")
    args = _args(out, teacher, resume, script)
    f = open(log, "w")
    proc = subprocess.Popen(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    proc._log = f
    return proc


def _wait_for(proc, predicate, timeout=90, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n" + open(proc._log.name).read()[-3000:])
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}:\n" + open(proc._log.name).read()[-3000:])


def _kill(proc):
    os.kill(proc.pid, signal.SIGKILL)  # --num-gpus 1: training runs in this very process
    proc.wait(30)
    proc._log.close()
    assert proc.returncode == -signal.SIGKILL


def _iterations(out):
    path = os.path.join(out, "metrics.json")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a line cut by the kill
    return [r for r in rows if "total_loss" in r]


def _tagged(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return os.path.join(out, f.read().strip())


def _check_whole(path, model_keys):
    """The checkpoint loads under weights_only and holds model (with adapters), trainer,
    optimizer and scheduler state."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt["model"]) == model_keys
    assert any(k.startswith("distillers.0.") for k in ckpt["model"])
    trainer = ckpt["trainer"]
    assert isinstance(trainer["iteration"], int)
    assert trainer["_trainer"]["optimizer"]["state"] and "param_groups" in trainer["_trainer"]["optimizer"]
    assert trainer["hooks"]["LRScheduler"]["last_epoch"] == trainer["iteration"] + 1
    assert trainer["nonfinite"] == {"skipped": 0}
    return trainer["iteration"]


def _started_at(log):
    lines = [l for l in open(log).read().splitlines() if "Starting training from iteration" in l]
    assert len(lines) == 1, lines
    return int(lines[0].rsplit(" ", 1)[1])


def test_kill_9_anywhere_then_resume(tmp_path):
    from detectron2.config import LazyConfig, instantiate

    import d2kd  # noqa: F401

    teacher = str(tmp_path / "teacher.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", teacher)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(CONFIG), [f"model.teacher.weights={teacher}"])
    model_keys = set(instantiate(cfg.model).state_dict())
    out = str(tmp_path / "run")

    # 1. Killed while writing its second checkpoint (model_0000005.pth): the writer sleeps
    #    between the complete temporary file and the rename.
    log1 = str(tmp_path / "log1.txt")
    proc = _start(out, teacher, False, log1, delay=1.0)
    _wait_for(proc, lambda: glob.glob(os.path.join(out, "model_0000005.pth.tmp.*")), what="the 2nd checkpoint write")
    _kill(proc)
    assert "model_0000002.pth is written, renamed into place in 1.0 s" in open(log1).read()  # the delay is on
    partial = glob.glob(os.path.join(out, "*.tmp.*"))
    assert partial and not os.path.exists(os.path.join(out, "model_0000005.pth"))
    assert _tagged(out).endswith("model_0000002.pth")  # never the partial one
    assert _check_whole(_tagged(out), model_keys) == 2

    # 2. Resumed: the partial file is removed, training restarts after iteration 2; killed at an
    #    arbitrary moment between checkpoints (after iteration 7 was logged).
    log2 = str(tmp_path / "log2.txt")
    proc = _start(out, teacher, True, log2)
    _wait_for(proc, lambda: any(r["iteration"] >= 7 for r in _iterations(out)), what="iteration 7")
    _kill(proc)
    assert _started_at(log2) == 3
    assert "a partial checkpoint left by an interrupted run" in open(log2).read()
    assert not glob.glob(os.path.join(out, "*.tmp.*"))
    assert "Teacher built from configs/shapes/retinanet_teacher.py with weights " + teacher in open(log2).read()
    done = _check_whole(_tagged(out), model_keys)
    assert done in (5, 8)  # the newest complete checkpoint at the kill

    # 3. Resumed again: finishes.
    log3 = str(tmp_path / "log3.txt")
    proc = _start(out, teacher, True, log3)
    assert proc.wait(120) == 0, open(log3).read()[-3000:]
    proc._log.close()
    assert _started_at(log3) == done + 1
    assert _tagged(out).endswith("model_final.pth")
    assert _check_whole(_tagged(out), model_keys) == MAX_ITER - 1
    assert not glob.glob(os.path.join(out, "*.tmp.*"))

    rows = _iterations(out)
    # Every iteration was logged; the last segment alone covers done+1 .. MAX_ITER-1.
    assert {r["iteration"] for r in rows} == set(range(MAX_ITER))
    assert [r["iteration"] for r in rows][-(MAX_ITER - done - 1):] == list(range(done + 1, MAX_ITER))
    # The KD schedule follows the restored iteration: zero before WARMUP, on after it (the logged
    # values are medians over the segment's recent iterations: the last one is past WARMUP).
    assert all(r["loss_kd_fitnet_p3"] == 0.0 for r in rows if r["iteration"] < WARMUP)
    assert rows[-1]["loss_kd_fitnet_p3"] > 0.0
