"""Speed, cost and memory measurements of the benchmark, each runnable in a fresh process.

From the clone's root, with tools/ on the path (as ``tools/benchmark.py`` runs its measurement
jobs: ``PYTHONPATH=tools``):

    python -m benchmarking.measure overhead --config KD.py --baseline STUDENT.py --output o.json [key=value ...]
    python -m benchmarking.measure memory --config X.py --output m.json [key=value ...]
    python -m benchmarking.measure cost --config T.py --config S.py --output c.json

**Overhead** (:func:`measure_overhead`): one process, the same fixed batches, interleaved so a
change of machine load hits both sides alike. Per iteration it times

* ``t_kd``: the distillation model's forward (student + teacher parts asked for + losses) and
  backward of the summed losses;
* ``t_student``: the plain student's (the baseline config's model) forward + backward;
* ``t_teacher``: the time spent in ``Teacher.record`` *inside* the KD iteration (features plus the
  parts the distillers declared, under ``no_grad``) - the teacher work any KD method must pay.

and reports medians after warm-up, ``overhead = t_kd / (t_student + t_teacher)`` (the part that is
d2kd's own: losses, adapters, bookkeeping) and ``step_ratio = (t_kd + t_data) / (t_student +
t_data)`` with ``t_data`` the data loader's time per batch: the ratio of the seconds per training
iteration, which sets the equal-wall-clock baseline's length. ``t_data`` is the run's mean: a
batch of first loads (timed through the loader) weighted by the share of the run's draws that are
first loads, the rest at the time to map the same images again (served from the shapes PNG cache:
5 ms against 20 ms per batch of 8 at 128 px). No optimizer step is taken, so every iteration sees
the same weights.

**Memory** (:func:`measure_memory`): in a fresh process, the peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) after building the model and running training iterations,
minus the resident size just before the model is built (after imports and the data loader's
first batch). That is process memory (weights, activations, allocator caches, the teacher's
weights when there is one), not torch's allocator alone. On CUDA ``torch.cuda.max_memory_allocated``
is reported as well.

**Cost** (:func:`measure_cost`): :func:`benchmarking.cost.model_cost` (params, fvcore GFLOPs = multiply-
adds, median single-image CPU latency in eval mode) of each config's model (random weights; the
numbers do not depend on them except NMS work in the full latency).
"""
import argparse
import contextlib
import copy
import json
import logging
import math
import os
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf

import d2kd  # noqa: F401  (registers d2kd's models and datasets the configs name)
from d2kd.export import student_model_config
from d2kd.records import TEACHER_PARTS

from .cost import model_cost


def _load_cfg(config_file: str, overrides: Sequence[str] = ()):
    cfg = LazyConfig.load(config_file)
    return LazyConfig.apply_overrides(cfg, [o for o in overrides if _applies(cfg, o)])


def _applies(cfg, override: str) -> bool:
    """``model.teacher.*`` overrides only apply to configs that have a teacher."""
    key = override.split("=", 1)[0]
    if key.startswith("model.teacher.") or key.startswith("model.distillers"):
        return OmegaConf.select(cfg, "model.teacher", default=None) is not None
    return True


def _grad_step(model, batch) -> None:
    losses = model(batch)
    total = sum(losses.values())
    total.backward()
    for p in model.parameters():
        p.grad = None


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def _tensors(obj, seen=None):
    """Every tensor reachable from ``obj`` through dicts, lists, tuples and object attributes,
    each object visited once (a record can hold a cycle: Faster R-CNN's ROI record made the GKD
    overhead measurement exceed the recursion limit on 2026-12-04)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        for v in vars(obj).values():
            yield from _tensors(v, seen)


def parts_recorded(record) -> List[str]:
    """The teacher parts (``d2kd.records.TEACHER_PARTS``) a ``DetectorRecord`` holds."""
    return [p for p in TEACHER_PARTS if p == "features" or getattr(record, p, None) is not None]


def _reload_time(cfg, batches):
    """``(images in the training set, seconds to load a batch of these images again)``, the
    second time through ``cfg.dataloader.train``'s mapper; None for a loader without one."""
    dl = cfg.dataloader.train
    if "mapper" not in dl or "dataset" not in dl:
        return None
    dicts = {d["image_id"]: d for d in instantiate(dl.dataset)}
    mapper = instantiate(dl.mapper)
    t0 = time.perf_counter()
    for batch in batches:
        for x in batch:
            mapper(copy.deepcopy(dicts[x["image_id"]]))
    return len(dicts), (time.perf_counter() - t0) / len(batches)


def measure_overhead(
    config: str,
    baseline: str,
    overrides: Sequence[str] = (),
    *,
    n_iters: int = 10,
    warmup: int = 2,
    n_batches: int = 2,
    seed: int = 0,
    threads: int = 1,
) -> Dict:
    """Time KD vs plain-student iterations on the same fixed batches (see the module doc)."""
    torch.set_num_threads(threads)
    cfg = _load_cfg(config, overrides)
    bcfg = _load_cfg(baseline, [o for o in overrides if not o.startswith("model.teacher.")])
    torch.manual_seed(seed)
    kd = instantiate(cfg.model)
    kd.train()
    torch.manual_seed(seed)
    student = instantiate(bcfg.model)
    student.train()
    teacher = kd.teacher

    loader = iter(instantiate(cfg.dataloader.train))
    t_data = []
    batches = []
    for _ in range(max(n_batches, 1) + 1):
        t0 = time.perf_counter()
        batches.append(next(loader))
        t_data.append(time.perf_counter() - t0)
    batches = batches[1:]  # the first batch pays the loader's start-up
    t_data = t_data[1:]
    t_data_first = statistics.median(t_data)
    # Images loaded before come back faster (the shapes PNG cache, the OS page cache): t_data is
    # the run's mean loader time per batch, first loads weighted by their share of its draws.
    reload = _reload_time(cfg, batches)
    first_share = None
    if reload is not None:
        n_images, t_reload = reload
        first_share = min(1.0, n_images / (cfg.train.max_iter * len(batches[0])))
        t_data = [first_share * t_data_first + (1 - first_share) * t_reload]

    # Time the teacher inside the KD iteration, and check it keeps no autograd state.
    record = teacher.record
    teacher_times: List[float] = []
    checks = {"grad_enabled_in_teacher": [], "teacher_outputs_require_grad": [], "teacher_parts_run": []}

    last_call = {}

    def timed_record(images, needs, student_record):
        last_call["args"] = (images, needs, student_record)
        t0 = time.perf_counter()
        out = record(images, needs, student_record)
        teacher_times.append(time.perf_counter() - t0)
        checks["teacher_outputs_require_grad"].append(
            any(t.requires_grad or t.grad_fn is not None for t in _tensors(
                [out.features, out.rpn, out.roi, out.head, out.ssd])))
        checks["teacher_parts_run"].append(parts_recorded(out))
        return out

    teacher.record = timed_record
    # ``record`` is decorated with torch.no_grad: probe the grad mode inside the teacher's backbone.
    bb = teacher.model.backbone
    probe = bb.register_forward_hook(
        lambda m, i, o: checks["grad_enabled_in_teacher"].append(torch.is_grad_enabled()))
    t_kd, t_student, t_teacher, t_teacher_fp32 = [], [], [], []
    teacher_param = next(teacher.model.parameters())
    teacher_dtype = teacher.compute_dtype(teacher_param.device.type)  # None: no autocast
    autocast = teacher_dtype is not None
    try:
        with EventStorage(0) as storage:
            for i in range(warmup + n_iters):
                storage.iter = i
                batch = batches[i % len(batches)]
                teacher_times.clear()
                t0 = time.perf_counter()
                _grad_step(kd, batch)
                tk = time.perf_counter() - t0
                t0 = time.perf_counter()
                _grad_step(student, batch)
                ts = time.perf_counter() - t0
                tf = None
                if autocast:  # the same teacher call without autocast, for its speed-up
                    saved, teacher.autocast_dtype = teacher.autocast_dtype, None
                    try:
                        t0 = time.perf_counter()
                        record(*last_call["args"])
                        tf = time.perf_counter() - t0
                    finally:
                        teacher.autocast_dtype = saved
                if i >= warmup:
                    t_kd.append(tk)
                    t_student.append(ts)
                    t_teacher.append(sum(teacher_times))
                    if tf is not None:
                        t_teacher_fp32.append(tf)
    finally:
        probe.remove()
        del teacher.record
    med = statistics.median
    kd_ms, s_ms, t_ms, d_ms = (1000 * med(x) for x in (t_kd, t_student, t_teacher, t_data))
    teacher_grads = [p.grad for p in teacher.model.parameters() if p.grad is not None]
    return {
        "config": config,
        "baseline": baseline,
        "n_iters": n_iters,
        "warmup": warmup,
        "n_batches": len(batches),
        "batch_size": len(batches[0]),
        "threads": threads,
        "t_kd_ms": kd_ms,
        "t_student_ms": s_ms,
        "t_teacher_ms": t_ms,
        "t_data_ms": d_ms,
        "t_data_first_load_ms": 1000 * t_data_first,
        "t_data_reload_ms": 1000 * reload[1] if reload is not None else None,
        "first_load_share": first_share,
        "overhead_ratio": kd_ms / (s_ms + t_ms),
        # with an autocast teacher: its calls timed again without autocast (same inputs, interleaved)
        "t_teacher_fp32_ms": 1000 * med(t_teacher_fp32) if t_teacher_fp32 else None,
        "step_ratio": (kd_ms + d_ms) / (s_ms + d_ms),
        "teacher_needs": list(kd.teacher_needs),
        "backbone_only": list(kd.teacher_needs) == ["features"],
        "checks": {
            "teacher_forward_grad_enabled": any(checks["grad_enabled_in_teacher"]),
            "teacher_outputs_require_grad": any(checks["teacher_outputs_require_grad"]),
            "teacher_params_with_grad": len(teacher_grads),
            "teacher_params_requires_grad": sum(p.requires_grad for p in teacher.model.parameters()),
            "teacher_in_eval_mode": not teacher.model.training,
            "teacher_parts_run": checks["teacher_parts_run"][-1] if checks["teacher_parts_run"] else [],
            "teacher_parts_available": teacher.parts(),
            # the dtype the teacher computed in (Teacher(autocast_dtype=...), "auto" resolved here)
            "teacher_autocast_dtype": teacher.autocast_dtype,
            "teacher_compute_dtype": str(teacher_dtype or teacher_param.dtype),
        },
        "raw_ms": {"kd": [1000 * x for x in t_kd], "student": [1000 * x for x in t_student],
                   "teacher": [1000 * x for x in t_teacher]},
    }


def measure_memory(config: str, overrides: Sequence[str] = (), *, n_iters: int = 3, threads: int = 1) -> Dict:
    """Peak RSS increase (MB) of building ``config``'s model and training ``n_iters`` steps.

    Meant for a fresh process (``ru_maxrss`` is the peak over the process's life)."""
    torch.set_num_threads(threads)
    cfg = _load_cfg(config, overrides)
    loader = iter(instantiate(cfg.dataloader.train))
    batches = [next(loader) for _ in range(2)]
    rss_before = _rss_mb()
    peak_before = _maxrss_mb()
    model = instantiate(cfg.model)
    model.train()
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with EventStorage(0):
        for i in range(n_iters):
            _grad_step(model, batches[i % len(batches)])
    peak = _maxrss_mb()
    out = {
        "config": config,
        "has_teacher": hasattr(model, "teacher"),
        "n_iters": n_iters,
        "batch_size": len(batches[0]),
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "peak_rss_increase_mb": peak - rss_before,
        "peak_before_model_mb": peak_before,
        "measured": "CPU: peak resident set size (getrusage ru_maxrss) minus the RSS before the model was built",
    }
    if cuda:
        out["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_cost(configs: Sequence[str], overrides: Sequence[str] = (), *, image_size: int = 128,
                 n_runs: int = 10, threads: int = 1) -> Dict[str, Dict]:
    """``model_cost`` (params M, GFLOPs, latency ms per image) of each config's (student) model."""
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    out = {}
    for config in configs:
        cfg = _load_cfg(config, overrides)
        torch.manual_seed(0)
        model = instantiate(student_model_config(cfg.model))
        r = model_cost(model, image_size, n_runs)
        r.update(image_size=image_size, threads=threads, n_runs=n_runs)
        out[config] = r
    return out


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser(description="d2kd benchmark measurements (see the module doc)")
    ap.add_argument("kind", choices=["overhead", "memory", "cost"])
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--output", required=True)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.kind == "overhead":
        res = measure_overhead(args.config[0], args.baseline, args.overrides, n_iters=args.iters,
                               warmup=args.warmup, threads=args.threads)
    elif args.kind == "memory":
        res = measure_memory(args.config[0], args.overrides, n_iters=args.iters, threads=args.threads)
    else:
        res = measure_cost(args.config, args.overrides, image_size=args.image_size, n_runs=args.iters,
                           threads=args.threads)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".tmp", "w") as f:
        json.dump(_finite(res), f, indent=1)
    os.replace(args.output + ".tmp", args.output)
    print(json.dumps({k: v for k, v in res.items() if k != "raw_ms"} if args.kind != "cost" else res, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
