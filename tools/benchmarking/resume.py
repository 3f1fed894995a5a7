"""A training job of the benchmark started again: resume its own unfinished run, or start clean.

Every training job (teacher, baseline, distilled, wall-clock, starting checkpoint) saves a
checkpoint every tenth of its iterations (:func:`checkpoint_overrides`) and, when it starts,
writes ``benchmark_started.json`` into its folder: its command line and the stamps of its input
files. When a later call of the benchmark starts the same job again (the earlier call was
killed, or failed), :func:`prepare` looks at what the folder holds:

* the same command and inputs, and a checkpoint: the job resumes (``train_net.py --resume``);
  ``metrics.json`` loses the rows the killed run wrote after that checkpoint (the resumed run
  writes them again), the file as it was moved to ``stale/<time>/``;
* anything else (another command, a retrained teacher, no checkpoint, a folder some other run
  left): the previous run's ``metrics.json``, ``last_checkpoint`` and ``model_*.pth`` go to
  ``stale/<time>/`` and the job starts from iteration 0. Detectron2 *appends* to
  ``metrics.json``, so left in place the old rows would be read as this run's (progress showed
  "iter 520/1000" a minute after a restart from 0, and the loss plot drew the killed run).

A resumed run does not repeat an uninterrupted one bit for bit: Detectron2's training sampler
starts its shuffled order afresh on resume.
"""
import glob
import json
import math
import os
import re
import shutil
import time
from typing import Dict, List, Optional, Sequence

import torch

from d2kd.checkpoint import last_checkpoint

STARTED = "benchmark_started.json"
STALE = "stale"
#: What a run writes that a run started afresh in the same folder must not read as its own.
RUN_STATE = ("metrics.json", "last_checkpoint", "model_*.pth")
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")


def checkpoint_overrides(iters: int, per_run: int = 10) -> List[str]:
    """Overrides for a benchmark training run of ``iters`` iterations: a checkpoint every
    ``1/per_run`` of it, only the newest one kept (plus ``model_final.pth``)."""
    period = max(1, math.ceil(iters / per_run))
    return [f"train.checkpointer.period={period}", "train.checkpointer.max_to_keep=1"]


def with_resume(argv: Sequence[str]) -> List[str]:
    """``argv`` of a ``train_net.py`` run with ``--resume`` right after the script (flags go
    before the ``key=value`` overrides)."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if os.path.basename(a) == "train_net.py":
            return argv[: i + 1] + ["--resume"] + argv[i + 1:]
    raise ValueError(f"not a train_net.py command: {' '.join(argv)}")


def _read_json(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def checkpoint_iteration(path: str) -> Optional[int]:
    """The iteration a checkpoint was saved at: from its name (``model_0000499.pth``: 499), else
    (``model_final.pth``) from the file's ``iteration`` entry."""
    m = _PERIODIC.match(os.path.basename(path))
    if m:
        return int(m.group(1))
    try:
        it = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("iteration")
    except Exception:  # unreadable: train_net.py --resume falls back to an older file itself
        return None
    return int(it) if it is not None else None


def resume_point(out_dir: str, argv: Sequence[str], inputs: Dict) -> Optional[int]:
    """The iteration the job would resume from (the checkpoint's + 1), or None when it starts
    afresh: the folder's run was started with exactly ``argv`` and ``inputs`` and left a
    checkpoint."""
    started = _read_json(os.path.join(out_dir, STARTED))
    if not started or started.get("argv") != list(argv) or started.get("inputs", {}) != inputs:
        return None
    ckpt = last_checkpoint(out_dir)
    it = checkpoint_iteration(ckpt) if ckpt else None
    return None if it is None else it + 1


def _stale_dir(out_dir: str) -> str:
    base = os.path.join(out_dir, STALE, time.strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def move_aside(out_dir: str, patterns: Sequence[str] = RUN_STATE) -> Optional[str]:
    """Move the files of ``out_dir`` matching ``patterns`` into a new ``stale/<time>/`` folder;
    returns that folder, or None if nothing matched."""
    files = sorted({p for pat in patterns for p in glob.glob(os.path.join(glob.escape(out_dir), pat))})
    files = [p for p in files if os.path.isfile(p)]
    if not files:
        return None
    dest = _stale_dir(out_dir)
    os.makedirs(dest)
    for p in files:
        shutil.move(p, os.path.join(dest, os.path.basename(p)))
    return dest


def trim_metrics(out_dir: str, last_iter: int) -> Optional[str]:
    """Keep the rows of ``out_dir/metrics.json`` up to iteration ``last_iter`` (the checkpoint a
    run resumes from); the whole file goes to ``stale/<time>/``. Returns that folder, or None
    when no row was past ``last_iter``."""
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        lines = [ln for ln in f if ln.strip()]
    keep = []
    for ln in lines:
        try:
            row = json.loads(ln)
        except ValueError:  # a line cut by the kill
            continue
        if int(row.get("iteration", -1)) <= last_iter:
            keep.append(ln if ln.endswith("\n") else ln + "\n")
    if len(keep) == len(lines):
        return None
    dest = _stale_dir(out_dir)
    os.makedirs(dest)
    shutil.copy2(path, os.path.join(dest, "metrics.json"))
    with open(path + ".tmp", "w") as f:
        f.writelines(keep)
    os.replace(path + ".tmp", path)
    return dest


def prepare(out_dir: str, argv: Sequence[str], inputs: Dict, *, may_resume: bool = True):
    """Get ``out_dir`` ready for a job about to run ``argv`` (see the module doc).

    Returns ``(argv to run, resumed-from iteration or None, a sentence for the log or "")``."""
    start = resume_point(out_dir, argv, inputs) if may_resume else None
    note = ""
    if start is not None:
        ckpt = last_checkpoint(out_dir)
        trimmed = trim_metrics(out_dir, start - 1)
        note = (f"resumes from {os.path.basename(ckpt)} (iteration {start}) of its own unfinished run"
                + (f"; the killed run's metrics.json rows after it are dropped (the file as it was: "
                   f"{os.path.join(trimmed, 'metrics.json')})" if trimmed else ""))
        run_argv = with_resume(argv)
    else:
        moved = move_aside(out_dir)
        if moved:
            note = (f"starts afresh: the previous run's {', '.join(sorted(os.listdir(moved)))} moved to {moved} "
                    f"({'--rerun' if not may_resume else 'started with another command or inputs, or no checkpoint to resume from'})")
        run_argv = list(argv)
    with open(os.path.join(out_dir, STARTED + ".tmp"), "w") as f:
        json.dump({"argv": list(argv), "inputs": inputs}, f)
    os.replace(os.path.join(out_dir, STARTED + ".tmp"), os.path.join(out_dir, STARTED))
    return run_argv, start, note


def remove_periodic_checkpoints(out_dir: str) -> List[str]:
    """Delete ``model_<iteration>.pth`` of a run that finished (``model_final.pth`` stays and
    ``last_checkpoint`` names it): they were only kept to resume from."""
    removed = []
    for p in glob.glob(os.path.join(glob.escape(out_dir), "model_*.pth")):
        if _PERIODIC.match(os.path.basename(p)):
            os.remove(p)
            removed.append(p)
    return removed
