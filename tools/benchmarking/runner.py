"""Run the benchmark's jobs as subprocesses, a few at a time, with dependencies and an ETA.

Every job is a command line (``train_net.py`` runs, ``python -m benchmarking.measure ...``)
whose stdout/stderr go to ``<job dir>/benchmark_job.log``; a failing job fails alone (its
dependents are skipped) and the rest of the benchmark goes on. A job whose command is a callable
is built when it starts (the equal-wall-clock baseline's length comes from a measurement).
A training job started again resumes its own unfinished run or starts from a clean folder
(:mod:`benchmarking.resume`). When the benchmark is stopped (SIGTERM, Ctrl-C), the jobs it
is running are stopped with it, so that none goes on writing into a folder the next call uses.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

from .resume import prepare

Command = Union[List[str], Callable[[], List[str]]]


@dataclass
class Job:
    name: str
    kind: str  # teacher | init | teacher_eval | pseudo_labels | baseline | distilled | wallclock | overhead | memory | cost
    cmd: Command
    out_dir: str
    deps: List[str] = field(default_factory=list)
    weight: float = 1.0  # estimated cost (seconds at the current estimate), for the ETA
    meta: Dict = field(default_factory=dict)
    done_file: Optional[str] = None  # if it exists before the job starts, the job is reused
    inputs: List[str] = field(default_factory=list)  # files it reads: a newer one means "run again"
    status: str = "pending"  # pending | running | done | reused | failed | skipped
    seconds: float = 0.0
    error: str = ""
    argv: List[str] = field(default_factory=list)
    on_done: Optional[Callable[["Job"], None]] = None
    #: a ``train_net.py`` run: True resumes its own unfinished run, False starts afresh (its
    #: folder cleared of an earlier run's state either way, see ``resume.prepare``); None: not one
    resume: Optional[bool] = None

    @property
    def log_file(self) -> str:
        return os.path.join(self.out_dir, "benchmark_job.log")


def input_stamps(paths: Sequence[str]) -> Dict[str, Optional[float]]:
    """``{path: mtime}`` of a job's input files (None: absent), stored with a finished job: a run
    is reused only if its command line *and* these are unchanged (a retrained teacher at the same
    path invalidates every distilled run that used the old one)."""
    return {p: (os.path.getmtime(p) if os.path.exists(p) else None) for p in paths}


def reusable(job: Job, argv: Sequence[str]) -> bool:
    """Whether ``job`` finished before with the command line ``argv`` and the same inputs."""
    if not job.done_file or not os.path.exists(job.done_file):
        return False
    try:
        with open(job.done_file) as f:
            prev = json.load(f)
    except (OSError, ValueError):
        return False
    return prev.get("argv") == list(argv) and prev.get("inputs", {}) == input_stamps(job.inputs)


def fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _current_iter(job: Job) -> Optional[int]:
    path = os.path.join(job.out_dir, "metrics.json")
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [ln for ln in f.read().decode(errors="ignore").splitlines() if ln.strip()]
        return int(json.loads(lines[-1]).get("iteration", 0)) + 1 if lines else None
    except (OSError, ValueError, IndexError):
        return None


class Scheduler:
    """Runs jobs respecting ``deps`` with at most ``n_parallel`` at once; prints progress + ETA."""

    def __init__(self, jobs: Sequence[Job], *, n_parallel: int = 1, env: Optional[Dict] = None,
                 cwd: Optional[str] = None, heartbeat_s: float = 60.0, log=print):
        self.jobs = {j.name: j for j in jobs}
        if len(self.jobs) != len(jobs):
            raise ValueError("job names must be unique")
        for j in jobs:
            for d in j.deps:
                if d not in self.jobs:
                    raise ValueError(f"job {j.name} depends on unknown job {d}")
        self.n_parallel = max(1, int(n_parallel))
        self.env = env
        self.cwd = cwd
        self.heartbeat_s = heartbeat_s
        self.log = log
        self.t0 = None

    # ---- progress ---------------------------------------------------------------------------
    def _finished(self):
        return [j for j in self.jobs.values() if j.status in ("done", "reused", "failed", "skipped")]

    def eta(self) -> Optional[float]:
        """Remaining seconds: elapsed x (weight left / weight done), running jobs counted pro rata."""
        elapsed = time.time() - self.t0
        done_w = sum(j.weight for j in self.jobs.values() if j.status in ("done", "failed"))
        left_w = sum(j.weight for j in self.jobs.values() if j.status in ("pending", "running"))
        for j in self.jobs.values():
            if j.status == "running" and j.meta.get("iters"):
                it = _current_iter(j)
                # a resumed job's weight is what was left of it; count from where it resumed
                it0 = j.meta.get("resumed_at") or 0
                if it and it > it0 and j.meta["iters"] > it0:
                    frac = min((it - it0) / (j.meta["iters"] - it0), 1.0) * 0.9
                    done_w += frac * j.weight
                    left_w -= frac * j.weight
        if done_w <= 0:
            return None
        return elapsed * left_w / done_w

    def progress_line(self, what: str) -> str:
        n = len(self.jobs)
        fin = len(self._finished())
        eta = self.eta()
        eta_s = fmt_s(eta) if eta is not None else "?"
        return f"[benchmark] {fin}/{n} jobs | elapsed {fmt_s(time.time() - self.t0)} | ETA {eta_s} | {what}"

    # ---- running ----------------------------------------------------------------------------
    def _ready(self, job: Job) -> Optional[bool]:
        """True: can start; False: wait; None: a dependency failed."""
        for d in job.deps:
            st = self.jobs[d].status
            if st in ("failed", "skipped"):
                return None
            if st not in ("done", "reused"):
                return False
        return True

    def _start(self, job: Job):
        os.makedirs(job.out_dir, exist_ok=True)
        try:
            job.argv = list(job.cmd() if callable(job.cmd) else job.cmd)
        except Exception as e:  # the command could not be built (e.g. a measurement is missing)
            job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            self.log(self.progress_line(f"FAILED to start {job.name}: {job.error}"))
            return None
        if reusable(job, job.argv):
            with open(job.done_file) as f:
                job.seconds = float(json.load(f).get("seconds") or 0.0)
            job.status = "reused"
            self.log(self.progress_line(f"reused {job.name} (finished before with the same command)"))
            return None
        if job.done_file and os.path.exists(job.done_file):
            os.remove(job.done_file)
        argv, start = job.argv, None
        if job.resume is not None:
            try:
                argv, start, note = prepare(job.out_dir, job.argv, input_stamps(job.inputs), may_resume=job.resume)
            except OSError as e:  # the folder could not be cleared (permissions, disk)
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
                self.log(self.progress_line(f"FAILED to start {job.name}: {job.error}"))
                return None
            if start is not None and job.meta.get("iters"):
                job.meta["resumed_at"] = start
                job.weight *= max(0.0, 1.0 - start / job.meta["iters"])
            if note:
                self.log(f"[benchmark] {job.name} {note}")
        logf = open(job.log_file, "a" if start is not None else "w")  # a resumed run's log goes on
        logf.write("$ " + " ".join(argv) + "\n")
        logf.flush()
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env)
        job.status = "running"
        job.meta["_start"] = time.time()
        self.log(f"[benchmark] start {job.name}" + (f" ({job.meta['iters']} iters)" if job.meta.get("iters") else ""))
        return proc, logf

    def run(self) -> Dict[str, Job]:
        running: Dict[str, tuple] = {}
        try:
            return self._run(running)
        finally:
            _stop(running, self.log)

    def _run(self, running: Dict[str, tuple]) -> Dict[str, Job]:
        self.t0 = time.time()
        last_beat = time.time()
        while True:
            # launch
            for job in self.jobs.values():
                if len(running) >= self.n_parallel:
                    break
                if job.status != "pending":
                    continue
                ready = self._ready(job)
                if ready is None:
                    job.status = "skipped"
                    job.error = "a job it depends on failed"
                    self.log(self.progress_line(f"skipped {job.name} (dependency failed)"))
                    continue
                if ready:
                    started = self._start(job)
                    if started is not None:
                        running[job.name] = started
                    elif job.status == "reused" and job.on_done:
                        job.on_done(job)
            # all done?
            if not running and all(j.status != "pending" for j in self.jobs.values()):
                break
            if not running and not any(self._ready(j) for j in self.jobs.values() if j.status == "pending"):
                # only blocked jobs left (cannot happen with a DAG; guard anyway)
                for j in self.jobs.values():
                    if j.status == "pending":
                        j.status, j.error = "skipped", "blocked"
                continue
            time.sleep(0.5)
            for name, (proc, logf) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                logf.close()
                job = self.jobs[name]
                job.seconds = time.time() - job.meta.pop("_start")
                del running[name]
                if rc == 0:
                    job.status = "done"
                    if job.on_done:
                        try:
                            job.on_done(job)
                        except Exception as e:
                            job.status, job.error = "failed", f"{type(e).__name__}: {e}"
                else:
                    job.status = "failed"
                    job.error = f"exit code {rc}; see {job.log_file}: " + _tail(job.log_file)
                what = f"{job.status} {name} in {fmt_s(job.seconds)}" + (f" ({job.error})" if job.error else "")
                self.log(self.progress_line(what))
            if time.time() - last_beat >= self.heartbeat_s and running:
                last_beat = time.time()
                parts = []
                for name in running:
                    j = self.jobs[name]
                    it = _current_iter(j)
                    parts.append(f"{name}" + (f" iter {it}/{j.meta['iters']}" if it and j.meta.get("iters") else "")
                                 + (f" (resumed at {j.meta['resumed_at']})" if j.meta.get("resumed_at") else ""))
                self.log(self.progress_line("running: " + ", ".join(parts)))
        return self.jobs


def _stop(running: Dict[str, tuple], log, grace_s: float = 10.0) -> None:
    """Stop the jobs still running when the scheduler leaves (SIGTERM, Ctrl-C, an error):
    SIGTERM, then SIGKILL after ``grace_s``. Their checkpoints stay for the next call."""
    if not running:
        return
    log(f"[benchmark] stopping {len(running)} running job(s): {', '.join(running)}; "
        "a later call with the same command resumes them from their last checkpoint")
    for proc, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for proc, logf in running.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
    running.clear()


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="ignore") as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
        return " | ".join(lines[-n:])[-400:]
    except OSError:
        return ""


def python_cmd(*args: str) -> List[str]:
    return [sys.executable, *args]
