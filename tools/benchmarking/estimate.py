"""How long a benchmark call will take: a few measured training steps, scaled to its schedule.

The quick benchmark's time depends on the machine far more than on anything in the repository:
14:16 on a 2-core EPYC that computes bfloat16 natively (the teacher trains in bfloat16), about
45 minutes on a 2-core EPYC with AVX2 only (the teacher trains in fp32 and every step is slower).
So the benchmark measures, before it starts, what its jobs will cost here:

* :func:`probe`: for each config the call trains, a few training steps exactly as
  ``train_net.py`` takes them (its trainer's model, optimizer, data loader and step loop, the
  ``train.amp`` autocast included: bfloat16 only where the CPU computes it natively, see
  :func:`d2kd.runtime.native_bfloat16`), timed after one warm-up step, and one image's inference
  for the evaluations. A distillation config runs against its teacher's weights, or, before the
  teacher exists, the probed teacher's (untrained, the same cost). A few seconds in all: the
  distillation configs beyond ``budget_s`` are not probed but priced at the measured ones' ratio
  to their students.
  Meanwhile a child process imports what a job imports: with the model and data loader set-up
  the probe timed, that is a job's start-up here.
* :func:`job_seconds`: each job's seconds from those steps: process start-up, iterations ×
  seconds per step × :data:`STEP_FACTOR`, evaluations (images × seconds per image + a fixed
  part); a job the call will reuse costs nothing, a resumed one only what is left.
* :func:`makespan`: the call's wall-clock, the jobs laid out exactly as
  :class:`~benchmarking.runner.Scheduler` launches them (in plan order, as soon as a slot is free
  and their dependencies are done).

With the job times the 2026-12-01 quick run measured, :func:`makespan` gives its 14:16 to the
second (``tests/test_benchmark_estimate.py``). The factors below were measured on a 2-core AVX2
EPYC against 60-iteration ``train_net.py`` runs started right after the probe: logged s/iter over
probed step 1.09 (Faster R-CNN teacher, fp32), 1.14 (FGFI), 1.01 (student); evaluation 1.28-1.35
x the probed per-image time (the 2026-12-01 quick run's teacher evaluation: ~1.0); start-up
(process start to first step) 7 s against 5.3 s of imports and set-up probed.
"""
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

from d2kd.engine.amp import resolve_amp_dtype
from d2kd.engine.trainer import Trainer
from d2kd.runtime import native_bfloat16

from .registry import REPO

#: Seconds a job spends before its first step (Python, torch and Detectron2 imports, model
#: build, data loader start) where it was not measured: the 2026-12-01 quick run's memory and
#: cost jobs took 5.5-6.5 s whole.
STARTUP_S = 5.0
#: What a job imports (``train_net.py``'s imports), timed in a child process during the probe.
IMPORTS = "import torch, detectron2.engine, d2kd, d2kd.engine"
#: Logged seconds per iteration / probed seconds per step (hooks, checkpoints, a model that has
#: begun to learn).
STEP_FACTOR = 1.08
#: An evaluation's seconds per image / the probed inference (test loader, evaluator, post-processing).
INFER_FACTOR = 1.2
#: A job's start-up besides the imports and set-up the probe times (train_net.py's environment
#: report, logging, config dump).
STARTUP_EXTRA_S = 1.5
#: Seconds of an evaluation besides the model's forward passes (COCO evaluation, test loader).
EVAL_FIXED_S = 2.0
#: A distillation step costs this many of its plain student's when no config of the call was probed
#: (tools/benchmark.py's ETA guess before anything is measured).
KD_RATIO_GUESS = 2.5


@dataclass
class StepTime:
    """What one config costs here."""

    train_s: float  # seconds per training iteration (forward, backward, optimizer step, next batch)
    infer_s: float  # seconds per image at inference (eval mode, batch of one)
    dtype: str  # the training forward's dtype ("float32", or "bfloat16" under train.amp)
    val_images: Optional[int] = None  # images in the config's evaluation set
    probed: bool = True  # False: priced from the other configs (see ``probe(budget_s=...)``)
    setup_s: float = 0.0  # model, optimizer, data loader built (the first config: the dataset read too), 1st step's extra


@dataclass
class Probe:
    steps: Dict[str, StepTime]  # config -> what it costs
    seconds: float  # how long the probe took
    startup_s: float  # a job's start-up: imports (timed in a child process) + the slowest set-up


# ---- arithmetic ---------------------------------------------------------------------------------
def eval_seconds(t: StepTime, val_images: int) -> float:
    return val_images * t.infer_s * INFER_FACTOR + EVAL_FIXED_S


def train_seconds(t: StepTime, iters: int) -> float:
    return iters * t.train_s * STEP_FACTOR


def job_seconds(kind: str, meta: Dict, steps: Dict[str, StepTime], *, startup_s: float = STARTUP_S,
                default_val_images: int = 300) -> float:
    """Seconds one job takes, from ``steps`` (config -> :class:`StepTime`) and what the plan
    records in its ``meta``: ``config``, ``iters``, ``evals``; a resumed job's ``resumed_at``;
    the wall-clock baseline's ``kd_config`` (it trains as long as the distilled run: iterations
    × the step ratio, at the student's step time); the overhead and memory measurements' ``steps``
    and ``baseline``; the cost measurement's ``configs``. Every job pays ``startup_s`` first."""
    def val(t):
        return t.val_images if t.val_images else default_val_images

    if kind == "cost":
        return startup_s + sum(2 * meta.get("runs", 10) * steps[c].infer_s for c in meta.get("configs", []) if c in steps)
    t = steps[meta["config"]]
    if kind in ("teacher", "init", "baseline", "distilled", "wallclock"):
        iters = meta.get("base_iters") or meta["iters"]
        if meta.get("resumed_at") and meta.get("iters"):
            iters *= max(0.0, 1.0 - meta["resumed_at"] / meta["iters"])
        step_t = steps[meta["kd_config"]] if kind == "wallclock" else t
        return startup_s + train_seconds(step_t, iters) + meta.get("evals", 1) * eval_seconds(t, val(t))
    if kind == "teacher_eval":
        return startup_s + eval_seconds(t, val(t))
    if kind == "pseudo_labels":  # the unlabeled split, ~10 evaluation sets (as the ETA weights it)
        return startup_s + 10 * val(t) * t.infer_s * INFER_FACTOR
    if kind == "overhead":  # KD and plain steps interleaved, no optimizer step
        return startup_s + meta["steps"] * (t.train_s + steps[meta["baseline"]].train_s)
    if kind == "memory":
        return startup_s + meta["steps"] * t.train_s
    raise ValueError(f"no estimate for a job of kind {kind!r}")


def makespan(jobs: Sequence[Tuple[str, float, Sequence[str]]], n_parallel: int) -> float:
    """Wall-clock of ``jobs`` (``(name, seconds, deps)`` in plan order) run as the Scheduler
    runs them: at every moment, the pending jobs whose dependencies are done start in plan order
    while fewer than ``n_parallel`` run; a job of 0 seconds (reused) takes no slot."""
    n_parallel = max(1, int(n_parallel))
    pending = list(jobs)
    running: Dict[str, float] = {}  # name -> end time
    done = set()
    now = 0.0
    while pending or running:
        launched = True
        while launched:  # a reused job is done at once and may free its dependents at once
            launched = False
            for job in list(pending):
                name, seconds, deps = job
                if len(running) >= n_parallel and seconds > 0:
                    break
                if all(d in done for d in deps):
                    pending.remove(job)
                    if seconds > 0:
                        running[name] = now + seconds
                    else:
                        done.add(name)
                        launched = True
        if not running:
            break  # only jobs that wait on something not in the plan: the Scheduler skips them
        now = min(running.values())
        for name, end in list(running.items()):
            if end <= now:
                done.add(name)
                del running[name]
    return now


# ---- measuring ----------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _val_images(cfg) -> Optional[int]:
    try:
        names = cfg.dataloader.test.dataset.names
        names = [names] if isinstance(names, str) else list(names)
        n = 0
        for name in names:
            # the shapes sets say their size; any other is listed (shapes renders only on read)
            size = MetadataCatalog.get(name).get("shapes_num_images", None)
            n += size if size is not None else len(DatasetCatalog.get(name))
        return n
    except Exception:
        return None


def time_config(cfg, n_steps: int = 1) -> StepTime:
    """Train ``cfg`` for 1 + ``n_steps`` steps with ``train_net.py``'s own trainer pieces and time
    the last ``n_steps``; then one image's inference in eval mode."""
    t0 = time.perf_counter()
    device = str(cfg.train.device)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = Trainer.build_train_loader(cfg)
    step = Trainer.build_step_trainer(cfg, model, loader, optimizer)
    dtype = resolve_amp_dtype(cfg.train.get("amp", {}), device.split(":")[0])
    setup_s = time.perf_counter() - t0
    times = []
    with EventStorage(0) as storage:
        step.storage = storage
        for i in range(1 + n_steps):
            step.iter = storage.iter = i
            t0 = time.perf_counter()
            step.run_step()
            _sync(device)
            times.append(time.perf_counter() - t0)
    image = next(iter(loader))[0]
    model.eval()
    with torch.no_grad():
        for _ in range(2):  # the first call pays one-off costs
            t0 = time.perf_counter()
            model([{"image": image["image"]}])
            _sync(device)
        infer = time.perf_counter() - t0
    train_s = sum(times[1:]) / n_steps
    setup_s += max(0.0, times[0] - train_s)  # a run's first step pays one-off costs too
    return StepTime(train_s=train_s, infer_s=infer,
                    dtype=str(dtype).replace("torch.", "") if dtype else "float32", val_images=_val_images(cfg),
                    setup_s=setup_s)


def probe(
    teachers: Dict[str, Tuple[List[str], Optional[str], bool]],
    students: Dict[str, List[str]],
    distilled: Dict[str, Tuple[List[str], str, str]],
    *,
    n_steps: int = 1,
    threads: int = 1,
    budget_s: float = 8.0,
    load: Optional[Callable] = None,
) -> Probe:
    """Time the configs of a benchmark call (see the module doc).

    Args:
        teachers: teacher config -> (overrides, weights file the distillation configs read, whether
            the call trains or evaluates it: else it is not timed, only its weights are used).
        students: plain student config -> overrides.
        distilled: distillation config -> (overrides, its teacher config, its baseline config).
            Probed in order until ``budget_s`` has passed (the first one always); the rest are
            priced at the probed ones' mean ratio to their baselines.
        load: ``load(config, overrides) -> cfg`` (default: LazyConfig.load + apply_overrides).
    """
    def default_load(config, overrides):
        return LazyConfig.apply_overrides(LazyConfig.load(config), list(overrides))

    load = load or default_load
    t0 = time.perf_counter()
    imports = _start_import_timer(threads)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: Dict[str, StepTime] = {}
    weights: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="d2kd_probe_") as tmp:
        try:
            for config, (overrides, tweights, timed) in teachers.items():
                cfg = load(config, overrides)
                if timed:
                    out[config] = time_config(cfg, n_steps)
                if tweights and os.path.isfile(tweights):
                    weights[config] = tweights
                else:  # not trained yet: the distillation configs probe against an untrained one
                    weights[config] = os.path.join(tmp, f"teacher{len(weights)}.pth")
                    _save_untrained(cfg, weights[config])
            for config, overrides in students.items():
                out[config] = time_config(load(config, overrides), n_steps)
            n_kd = 0
            for config, (overrides, tconf, baseline) in distilled.items():
                if (n_kd and time.perf_counter() - t0 > budget_s) or tconf not in weights:
                    continue  # at least one is probed: the ratio the others are priced at
                cfg = load(config, [*overrides, f"model.teacher.weights={weights[tconf]}"])
                out[config] = time_config(cfg, n_steps)
                n_kd += 1
        finally:
            torch.set_num_threads(saved_threads)
    ratios = [out[c].train_s / out[b].train_s for c, (_, _, b) in distilled.items() if c in out and b in out]
    ratio = sum(ratios) / len(ratios) if ratios else KD_RATIO_GUESS
    for config, (_, _, baseline) in distilled.items():
        if config not in out and baseline in out:
            b = out[baseline]
            out[config] = StepTime(b.train_s * ratio, b.infer_s, b.dtype, b.val_images, probed=False)
    import_s = _import_seconds(*imports)
    setup_s = max((t.setup_s for t in out.values() if t.probed), default=0.0)
    startup_s = import_s + setup_s + STARTUP_EXTRA_S if import_s is not None else STARTUP_S
    return Probe(out, time.perf_counter() - t0, startup_s)


def _start_import_timer(threads: int):
    """A child process that imports what a job imports and prints the time it is done."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    started = time.time()
    # in the folder the jobs run in (the clone's root), as a job does
    proc = subprocess.Popen([sys.executable, "-c", f"{IMPORTS}; import time; print(time.time())"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, started


def _import_seconds(proc, started: float) -> Optional[float]:
    try:
        out, _ = proc.communicate(timeout=120)
        return float(out.strip().splitlines()[-1]) - started if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        proc.kill()
        proc.wait()
        return None


def _save_untrained(cfg, path: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = instantiate(cfg.model)
    torch.save({"model": model.state_dict()}, path)


# ---- reporting ----------------------------------------------------------------------------------
def bfloat16_note(teacher_dtypes: Sequence[str]) -> str:
    """Whether this CPU computes bfloat16 natively, and the dtype the probed teacher trained in."""
    native = native_bfloat16("cpu")
    bf16 = any(d == "bfloat16" for d in teacher_dtypes)
    cpu = "this CPU computes bfloat16 natively (AVX512-BF16/AMX)" if native else \
        "this CPU has no native bfloat16 (no AVX512-BF16 or AMX)"
    if not teacher_dtypes:
        return cpu
    if bf16 and not native:
        return f"{cpu}: the teacher trains in bfloat16 all the same (train.amp: emulated, slower than float32)"
    if native and not bf16:
        return f"{cpu}: the teacher trains in float32 (its train.amp does not ask for bfloat16)"
    return f"{cpu}: the teacher trains in {'bfloat16' if bf16 else 'float32'}"


def fmt_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def quiet_logs():
    """The probe builds models and loaders whose INFO logs would bury the estimate line."""
    names = ("detectron2", "d2kd", "fvcore")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
