#!/usr/bin/env python3
"""The embedded KD benchmark: what each distillation method buys on the shapes set.

    python tools/benchmark.py --quick            # RetinaNet, FGFI, 2 seeds, continued from shipped checkpoints
    python tools/benchmark.py --full             # every detector and method in the table, 4 seeds
    python tools/benchmark.py --detectors retinanet --methods fgfi gkd --seeds 0 1 --jobs 2
    python tools/benchmark.py --list             # what would run (and which configs are missing)

Steps (each a subprocess, ``--jobs`` at a time, failures isolated and reported):

1. the teacher of each detector, trained once with ``train_net.py`` into the folder of the
   distillation config's ``model.teacher.weights`` (``output/shapes/<teacher>/``) and reused
   whenever that ``model_final.pth`` exists; then evaluated (eval-only) on the validation split;
2. the baseline student and one distilled student per method and seed (``train.seed=<s>``), all
   evaluated at the end (and ``--evals`` times along the way for the AP curves);
   ``--protocol converged`` (the default of ``--quick`` and ``--full``): for the detectors with a
   :class:`registry.Continuation`, the teacher is the one trained ``teacher_iters``
   (``output/shapes/<teacher>_<iters>/``) and every student run continues for ``iters`` from the
   plain student trained once for ``start_iters``; either is the checkpoint d2kd ships
   (``d2kd/model_zoo/``) when there is one, else trained once here and reused;
   ``--protocol scratch`` (the default otherwise) trains every student from scratch;
3. the distillation overhead per method (:mod:`benchmarking.measure`, fixed batches,
   interleaved); its step ratio sets the **equal wall-clock** baseline: the student trained
   ``round(iters x step ratio)`` iterations with the LR schedule stretched to that length;
4. params / GFLOPs / CPU latency of teacher and student, peak memory with and without teacher;
5. ``results.md``, ``results.json`` and PNG plots in ``--output``.

The experiment table is :mod:`benchmarking.registry` (plus every ``configs/shapes/<detector>_
<method>.py`` found); rows whose config does not exist yet are skipped with a note.
Re-running with the same ``--output`` reuses finished runs (same command line) unless ``--rerun``.
Every training run saves a checkpoint each tenth of its iterations: a call that was stopped
(SIGTERM, Ctrl-C, a crash) and is run again resumes its teacher and unfinished runs from their
last checkpoint (:mod:`benchmarking.resume`); a run that cannot resume starts from a clean folder.
"""
import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import shlex
import signal
import sys
import time
from typing import Dict, List, Optional

import torch
from detectron2.config import LazyConfig

# The harness is the package next to this script (tools/benchmarking/): tools/ is sys.path[0]
# when a tool runs as a script; d2kd is the installed package.
from benchmarking import registry
from benchmarking.results import (
    clears,
    curves,
    final_eval,
    markdown,
    paired_gain,
    parse_copypaste,
    read_metrics,
    summarize_runs,
    train_dtype,
    train_time,
    trained_iters,
    write_json,
)
from benchmarking.estimate import bfloat16_note, fmt_minutes, job_seconds, makespan, probe, quiet_logs
from benchmarking.resume import checkpoint_overrides, remove_periodic_checkpoints, resume_point
from benchmarking.runner import Job, Scheduler, fmt_s, input_stamps, python_cmd, reusable
from d2kd.model_zoo import checkpoint_card, shapes_checkpoint
from d2kd.runtime import native_bfloat16

#: The clone's root: the jobs run there (their configs are relative to it).
REPO = registry.REPO
#: This script's folder, home of the harness package the measurement jobs run
#: (``python -m benchmarking.measure``).
TOOLS = os.path.dirname(os.path.abspath(__file__))
TRAIN_NET = os.path.join(REPO, "train_net.py")
#: Relative cost of one iteration (student iteration = 1) for the ETA before anything is measured.
COST_GUESS = {"baseline": 1.0, "distilled": 2.5, "wallclock": 2.5, "teacher": 7.0}
EVAL_COST = 40.0  # one evaluation of a student on shapes_val, in student iterations
#: Jobs that are ``train_net.py`` training runs (checkpointed, resumable).
TRAINING_KINDS = ("teacher", "init", "baseline", "distilled", "wallclock")

QUICK = dict(detectors=list(registry.QUICK_DETECTORS), methods=list(registry.QUICK_METHODS), seeds=[0, 1],
             iters=None, evals=1)
#: Four seeds: a 95 % interval from 2 seed pairs is ± 12.7 s.d./√2 wide (t with 1 degree of freedom),
#: from 4 pairs ± 3.2 s.d./√4 (issue #26: gains reported with their interval, PASS on its lower bound).
FULL = dict(detectors=None, methods=None, seeds=[0, 1, 2, 3], iters=None, evals=4)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="RetinaNet, FGFI, 2 seeds, the converged protocol "
                      "from the checkpoints d2kd ships")
    mode.add_argument("--full", action="store_true", help="every detector and method, 4 seeds, the converged protocol")
    ap.add_argument("--protocol", choices=("converged", "scratch"),
                    help="converged: students continue from their detector's long-trained start beside its "
                         "long-trained teacher (registry.CONTINUATIONS; the default of --quick and --full); "
                         "scratch: every student from scratch for its config's train.max_iter (the default otherwise)")
    ap.add_argument("--detectors", nargs="+", help=f"subset of {sorted(registry.DETECTORS)}")
    ap.add_argument("--methods", nargs="+", help="subset of the methods in the table")
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--iters", type=int, help="student iterations (default: the student config's train.max_iter)")
    ap.add_argument("--evals", type=int, help="evaluations per student run (the last at the end)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--output", help="output folder (default output/benchmark/<quick|full>)")
    ap.add_argument("--teacher-root", help="train/reuse teachers (and the converged protocol's student starts) in "
                    "ROOT/<dir name>/ instead of the folder of the configs' model.teacher.weights (output/shapes/) "
                    "or the checkpoints d2kd ships")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--student-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for the student runs (baseline, distilled, wall-clock) only")
    ap.add_argument("--teacher-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for the teacher's training and evaluation only")
    ap.add_argument("--no-wallclock", action="store_true", help="skip the equal-wall-clock baselines")
    ap.add_argument("--no-cost", action="store_true", help="skip params/GFLOPs/latency")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--overhead-iters", type=int, default=10)
    ap.add_argument("--overhead-warmup", type=int, default=3)
    ap.add_argument("--memory-iters", type=int, default=3)
    ap.add_argument("--cost-runs", type=int, default=10)
    ap.add_argument("--rerun", action="store_true", help="do not reuse finished runs (the teacher is still reused)")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    ap.add_argument("--baselines-only", action="store_true",
                    help="run only the baseline students (they need no teacher: start them while it trains); "
                         "a later full call reuses them")
    ap.add_argument("--heartbeat", type=float, default=60.0, help="seconds between progress lines during runs")
    ap.add_argument("--no-estimate", action="store_true",
                    help="skip the time estimate at the start (a probe of a few training steps per config)")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.mode = "quick" if args.quick else "full"
    args.protocol = args.protocol or ("converged" if args.quick or args.full else "scratch")
    args.detectors = args.detectors or preset["detectors"]
    args.methods = args.methods or preset["methods"]
    args.seeds = args.seeds if args.seeds is not None else preset["seeds"]
    args.evals = args.evals or preset["evals"]
    args.iters = args.iters or preset["iters"]
    args.output = args.output or os.path.join("output", "benchmark", args.mode)
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- planning ----------------------------------------------------------------------------------
def _load(config: str, overrides=()):
    """A config with ``overrides`` applied, for reading (a plan reads the same few configs
    hundreds of times, ~0.2 s a load: callers must not change what it returns)."""
    path = os.path.join(REPO, config) if not os.path.isabs(config) else config
    return _load_cached(path, os.path.getmtime(path), tuple(o for o in overrides if not o.startswith("model.teacher.")))


@functools.lru_cache(maxsize=None)
def _load_cached(path: str, mtime: float, overrides: tuple):
    return LazyConfig.apply_overrides(LazyConfig.load(path), list(overrides))


def _trained_once(name: str, root: Optional[str]) -> str:
    """Where a model trained once (a teacher, a converged protocol's student start) named ``name``
    is: ``root/<name>/model_final.pth`` when ``--teacher-root`` gives a root, else the checkpoint
    d2kd ships under that name, else ``output/shapes/<name>/model_final.pth``."""
    if not root:
        shipped = shapes_checkpoint(name)
        if shipped:
            return shipped
    return os.path.join(root or os.path.join("output", "shapes"), name, "model_final.pth")


def _weights_name(weights: str) -> str:
    """``output/shapes/x/model_final.pth`` and the shipped ``.../shapes/x.pth`` are both ``x``."""
    base = os.path.splitext(os.path.basename(weights))[0]
    return os.path.basename(os.path.dirname(weights)) if base == "model_final" else base


def _teacher_of(config: str, teacher_root: Optional[str], continuations: Dict[str, registry.Continuation]):
    """The teacher of a distillation config: (its config, its weights, ``model.teacher.opts``, the
    overrides that train it). Under the converged protocol a detector's own teacher config
    (``<detector>_teacher.py``, whatever the student's family) is the one trained ``teacher_iters``."""
    t = _load(config).model.teacher
    stem = os.path.splitext(os.path.basename(t.config_file))[0]
    cont = continuations.get(stem[: -len("_teacher")]) if stem.endswith("_teacher") else None
    name = _weights_name(t.weights)
    if cont:
        weights, extra = _trained_once(cont.teacher_dir(name), teacher_root), [f"train.max_iter={cont.teacher_iters}"]
    else:
        weights, extra = (os.path.join(teacher_root, name, "model_final.pth") if teacher_root else t.weights), []
    return t.config_file, weights, list(t.get("opts", []) or []), extra


def _name(s: str) -> str:
    return s.replace("/", "_").replace(":", "_")


def train_cmd(config: str, overrides: List[str]) -> List[str]:
    return python_cmd(TRAIN_NET, "--config-file", config, *overrides)


def train_once_cmd(config: str, out_dir: str, iters: int, extra: List[str]) -> List[str]:
    """A model trained once into ``out_dir`` and reused by later calls (a teacher, a student's
    starting checkpoint): seed 0 (the configs' ``train.seed = -1`` draws a new seed per run, and
    two trainings of the RetinaNet teacher reached 31.6 and 36.7 AP), a checkpoint every tenth of
    the run to resume from if the call is stopped, one evaluation at the end; ``extra`` (e.g.
    ``--teacher-set``) may override any of it."""
    return train_cmd(config, ["train.seed=0", f"train.output_dir={out_dir}", *checkpoint_overrides(iters),
                              f"train.eval_period={iters}", *extra])


def run_overrides(out_dir: str, seed: int, iters: int, evals: int, args, student_set: List[str]) -> List[str]:
    return [
        f"train.seed={seed}",
        f"train.output_dir={out_dir}",
        f"train.max_iter={iters}",
        f"train.eval_period={max(1, math.ceil(iters / max(evals, 1)))}",
        *checkpoint_overrides(iters),
        *args.set,
        *student_set,
    ]


class Plan:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.output)
        self.jobs: List[Job] = []
        self.experiments = registry.select(args.detectors, args.methods, root=REPO, log=log)
        self.detectors: Dict[str, Dict] = {}
        self.teachers: Dict[str, Dict] = {}  # weights -> info
        self.inits: Dict[str, List[str]] = {}  # init checkpoint -> the deps of a run starting from it
        #: detector -> its converged protocol, for the detectors that have one (``--protocol converged``)
        self.continuations = dict(registry.CONTINUATIONS) if args.protocol == "converged" else {}
        self.starts: Dict[str, tuple] = {}  # a protocol's start checkpoint -> (student config, iterations)
        self._build()

    def add(self, job: Job) -> Job:
        if not self.args.rerun and job.kind in ("baseline", "distilled", "wallclock", "overhead", "memory", "cost"):
            # Reused when it exists and records the same command line (see Scheduler._start).
            job.done_file = os.path.join(job.out_dir, "benchmark_done.json")
        if job.kind in TRAINING_KINDS:
            # stopped and started again: resumes its own unfinished run (--rerun: the students start afresh)
            job.resume = job.kind in ("teacher", "init") or not self.args.rerun
        orig = job.on_done

        def mark_done(j, orig=orig):
            if j.status == "done" and j.kind in TRAINING_KINDS:
                remove_periodic_checkpoints(j.out_dir)  # model_final.pth stays
            if j.status == "done" and j.kind not in ("teacher", "init"):
                with open(os.path.join(j.out_dir, "benchmark_done.json"), "w") as f:
                    json.dump({"argv": j.argv, "seconds": j.seconds, "inputs": input_stamps(j.inputs)}, f)
            if orig:
                orig(j)

        job.on_done = mark_done
        self.jobs.append(job)
        return job

    def _build(self):
        a = self.args
        for exp in self.experiments:
            d = self.detectors.setdefault(exp.detector, {"experiments": [], "baselines": {}})
            d["experiments"].append(exp)
            bname = "default" if exp.baseline == registry.DETECTORS.get(exp.detector) else \
                os.path.splitext(os.path.basename(exp.baseline))[0].replace(f"{exp.detector}_", "")
            exp.bname = bname
            # The protocol continues the detector's plain student: a row with a baseline of its own
            # (another architecture, fewer labels, its own init_checkpoint) runs as its config says.
            exp.continuation = self.continuations.get(exp.detector) if bname == "default" else None
            exp.student_set = self._student_set(exp.baseline, exp.continuation)
            exp.iters = a.iters or (exp.continuation.iters if exp.continuation else
                                    int(_load(exp.config, a.set + exp.student_set).train.max_iter))
            tconf, tweights, topts, textra = _teacher_of(exp.config, a.teacher_root, self.continuations)
            exp.teacher = (tconf, tweights)
            d.setdefault("teacher", (tconf, tweights))
            if tweights not in self.teachers:
                self.teachers[tweights] = self._teacher_jobs(tconf, tweights, topts, textra)
            if bname not in d["baselines"]:
                d["baselines"][bname] = self._baseline_jobs(exp, bname)
            self._method_jobs(exp)
        if not a.no_cost and self.experiments:
            configs = []
            for det, d in self.detectors.items():
                configs += [d["teacher"][0], registry.DETECTORS.get(det) or d["experiments"][0].baseline]
            out_dir = os.path.join(self.out, "measure", "cost")
            self.cost_job = self.add(Job(
                "cost", "cost", python_cmd("-m", "benchmarking.measure", "cost", *sum([["--config", c] for c in configs], []),
                                           "--output", os.path.join(out_dir, "cost.json"), "--iters", str(a.cost_runs),
                                           "--threads", str(a.threads), *[o for o in a.set if o.startswith("model.")]),
                out_dir, weight=60))
            self.cost_job.meta.update(configs=configs, runs=a.cost_runs)

    def _student_set(self, baseline: str, cont: Optional[registry.Continuation]) -> List[str]:
        """The overrides of a row's student runs: ``--student-set``, after the converged protocol's
        start (``train.init_checkpoint``), which ``--student-set`` may override."""
        if cont is None:
            return list(self.args.student_set)
        start = _trained_once(cont.start_name(baseline), self.args.teacher_root)
        self.starts.setdefault(start, (baseline, cont.start_iters))
        return [f"train.init_checkpoint={start}", *self.args.student_set]

    def _teacher_jobs(self, tconf, tweights, topts, textra):
        a = self.args
        info = {"config": tconf, "weights": tweights, "reused": os.path.isfile(tweights), "train_job": None,
                "opts": topts, "set": [*a.set, *textra, *a.teacher_set]}
        tcfg = _load(tconf, info["set"])
        info["iters"] = int(tcfg.train.max_iter)
        tdir = os.path.dirname(tweights)
        tname = _weights_name(tweights)
        eval_dir = os.path.join(self.out, "teacher_eval", tname)
        info["eval_dir"] = eval_dir
        eval_file = os.path.join(eval_dir, "eval.json")
        info["eval_file"] = eval_file
        argv = train_cmd(tconf, ["--eval-only", f"train.init_checkpoint={tweights}", f"train.output_dir={eval_dir}",
                                 *topts, *a.set, *a.teacher_set])

        def save_eval(job, source="this --eval-only run"):
            with open(job.log_file, errors="ignore") as f:
                ev = parse_copypaste(f.read(), last=True)
            if ev is None:
                raise RuntimeError(f"no bbox metrics in {job.log_file}")
            os.makedirs(eval_dir, exist_ok=True)
            with open(eval_file, "w") as f:
                json.dump({"eval": ev, "weights": tweights, "weights_mtime": os.path.getmtime(tweights),
                           "argv": argv, "source": f"{source}: {job.log_file}"}, f)

        if not info["reused"]:
            # Trained here: its training run ends with one evaluation of exactly these weights,
            # which an --eval-only run would repeat (unless the KD config evaluates the teacher
            # with options of its own, ``model.teacher.opts``).
            job = self.add(Job(
                f"teacher:{tname}", "teacher",
                train_once_cmd(tconf, tdir, info["iters"], info["set"]),
                tdir, weight=COST_GUESS["teacher"] * info["iters"] + EVAL_COST * 3,
                meta={"iters": info["iters"], "config": tconf, "evals": 1},
                on_done=None if topts else (lambda job: save_eval(job, "the training run's final evaluation"))))
            info["train_job"] = job.name
            if not topts:
                return info
        else:
            log(f"[benchmark] teacher {tname}: reusing {tweights} (not retrained)")

        cached = None
        if os.path.isfile(eval_file) and info["reused"]:
            with open(eval_file) as f:
                cached = json.load(f)
            if cached.get("argv") != argv or cached.get("weights_mtime") != os.path.getmtime(tweights):
                cached = None
        if cached is None:
            self.add(Job(f"teacher_eval:{tname}", "teacher_eval", argv, eval_dir,
                         deps=[info["train_job"]] if info["train_job"] else [], weight=EVAL_COST * 3, on_done=save_eval,
                         meta={"config": tconf}))
        return info

    def _inputs(self, config: str, student_set: List[str], tweights: Optional[str] = None) -> List[str]:
        """The files a run of ``config`` reads besides the code and the data: its teacher's
        weights, its starting checkpoint, its pseudo-labels (see ``input_stamps``)."""
        cfg = _load(config, self.args.set + student_set)
        paths = [tweights, cfg.train.get("init_checkpoint") or ""]
        unlabeled = cfg.dataloader.train.get("unlabeled_dataset") if "train" in cfg.dataloader else None
        if unlabeled is not None:
            paths += list(unlabeled.get("pseudo_label_files") or [])
        return [os.path.join(REPO, p) for p in paths if p and "://" not in p]

    def _init_jobs(self, config: str, student_set: List[str]) -> List[str]:
        """The deps of a run of ``config`` that starts from ``train.init_checkpoint`` (a student
        fine-tuned from its own trained checkpoint, as LSHFM's RetinaNet rows are, or continued
        from the converged protocol's start): the checkpoint is trained first (once, seed 0,
        reused when present, like a teacher): a protocol's start with its student config for
        ``start_iters``, ``output/shapes/<name>/model_final.pth`` with ``configs/shapes/<name>.py``;
        any other missing file is an error."""
        a = self.args
        init = _load(config, a.set + student_set).train.get("init_checkpoint") or ""
        if not init or "://" in init:
            return []
        if init in self.inits:
            return self.inits[init]
        tdir = os.path.dirname(init)
        source, extra = os.path.join(registry.SHAPES_DIR, os.path.basename(tdir) + ".py"), []
        if init in self.starts:
            source, iters = self.starts[init]
            extra = [f"train.max_iter={iters}"]
        if os.path.isfile(os.path.join(REPO, init)):
            log(f"[benchmark] {config}: starts from {init} (reused, not retrained)")
            deps = []
        elif os.path.isfile(os.path.join(REPO, source)):
            iters = int(_load(source, [*a.set, *extra]).train.max_iter)
            job = self.add(Job(
                f"init:{os.path.basename(tdir)}", "init",
                train_once_cmd(source, tdir, iters, [*a.set, *extra]),
                tdir, weight=COST_GUESS["baseline"] * iters + EVAL_COST, meta={"iters": iters, "config": source, "evals": 1}))
            deps = [job.name]
        else:
            raise FileNotFoundError(
                f"{config}: train.init_checkpoint={init} does not exist and no {source} makes it; "
                f"train that checkpoint first or drop train.init_checkpoint")
        self.inits[init] = deps
        return deps

    def _baseline_jobs(self, exp, bname):
        a = self.args
        det, config, student_set, iters = exp.detector, exp.baseline, exp.student_set, exp.iters
        init_deps = self._init_jobs(config, student_set)
        runs = []
        for s in a.seeds:
            out_dir = os.path.join(self.out, "runs", det, "baseline" if bname == "default" else f"baseline_{bname}", f"seed{s}")
            job = self.add(Job(f"baseline:{det}:{bname}:s{s}", "baseline",
                               train_cmd(config, run_overrides(out_dir, s, iters, a.evals, a, student_set)), out_dir,
                               deps=init_deps, weight=COST_GUESS["baseline"] * iters + EVAL_COST * a.evals,
                               meta={"iters": iters, "config": config, "evals": a.evals},
                               inputs=self._inputs(config, student_set)))
            runs.append({"seed": s, "job": job.name, "out_dir": out_dir, "iters": iters})
        return {"config": config, "iters": iters, "runs": runs, "student_set": student_set}

    def _method_jobs(self, exp):
        a = self.args
        det, m = exp.detector, exp.method
        tconf, tweights = exp.teacher
        teacher = self.teachers[tweights]
        tdeps = [teacher["train_job"]] if teacher["train_job"] else []
        iters, student_set = exp.iters, exp.student_set
        kd_extra = [f"model.teacher.weights={tweights}", "train.eval_teacher=False"]
        # a semi-supervised config reads the teacher's pseudo-labels: they are made first
        kd_deps = tdeps + self._pseudo_label_jobs(exp, tconf, tweights, tdeps) + self._init_jobs(exp.config, student_set)
        # overhead (and the step ratio of the wall-clock baseline)
        oh_dir = os.path.join(self.out, "measure", f"overhead_{det}_{m}")
        oh_file = os.path.join(oh_dir, "overhead.json")
        exp.overhead_file = oh_file
        self.add(Job(f"overhead:{det}:{m}", "overhead",
                     python_cmd("-m", "benchmarking.measure", "overhead", "--config", exp.config,
                                "--baseline", exp.baseline, "--output", oh_file, "--iters", str(a.overhead_iters),
                                "--warmup", str(a.overhead_warmup), "--threads", str(a.threads),
                                f"model.teacher.weights={tweights}", *a.set, *student_set,
                                f"train.max_iter={iters}"),  # the run's length: the share of first image loads
                     oh_dir, deps=kd_deps, weight=12 * (a.overhead_iters + a.overhead_warmup) + 30,
                     meta={"config": exp.config, "baseline": exp.baseline, "steps": a.overhead_iters + a.overhead_warmup},
                     inputs=self._inputs(exp.config, student_set, tweights)))
        exp.runs, exp.wall_runs = [], []
        for s in a.seeds:
            out_dir = os.path.join(self.out, "runs", det, m, f"seed{s}")
            job = self.add(Job(f"kd:{det}:{m}:s{s}", "distilled",
                               train_cmd(exp.config, run_overrides(out_dir, s, iters, a.evals, a, student_set) + kd_extra),
                               out_dir, deps=kd_deps, weight=COST_GUESS["distilled"] * iters + EVAL_COST * a.evals,
                               meta={"iters": iters, "config": exp.config, "evals": a.evals},
                               inputs=self._inputs(exp.config, student_set, tweights)))
            exp.runs.append({"seed": s, "job": job.name, "out_dir": out_dir, "iters": iters})
        if not a.no_wallclock:
            for s in a.seeds:
                out_dir = os.path.join(self.out, "runs", det, f"baseline_wallclock_{m}", f"seed{s}")

                meta = {"config": exp.baseline, "kd_config": exp.config, "base_iters": iters, "evals": a.evals}

                def cmd(out_dir=out_dir, s=s, oh_file=oh_file, iters=iters, exp=exp, meta=meta):
                    with open(oh_file) as f:
                        ratio = json.load(f)["step_ratio"]
                    n = max(1, int(round(iters * ratio)))
                    meta["iters"] = n  # for the progress lines
                    return train_cmd(exp.baseline, run_overrides(out_dir, s, n, a.evals, a, student_set))

                job = self.add(Job(f"wall:{det}:{m}:s{s}", "wallclock", cmd, out_dir, deps=[f"overhead:{det}:{m}"],
                                   weight=COST_GUESS["wallclock"] * iters + EVAL_COST * a.evals, meta=meta,
                                   inputs=self._inputs(exp.baseline, student_set)))
                exp.wall_runs.append({"seed": s, "job": job.name, "out_dir": out_dir})
        if not a.no_memory:
            for cfg_file, kind in ((exp.baseline, "student"), (exp.config, "kd")):
                name = f"memory:{_name(cfg_file)}"
                if any(j.name == name for j in self.jobs):
                    continue
                out_dir = os.path.join(self.out, "measure", f"memory_{os.path.splitext(os.path.basename(cfg_file))[0]}")
                self.add(Job(name, "memory",
                             python_cmd("-m", "benchmarking.measure", "memory", "--config", cfg_file,
                                        "--output", os.path.join(out_dir, "memory.json"), "--iters", str(a.memory_iters),
                                        "--threads", str(a.threads),
                                        *([f"model.teacher.weights={tweights}"] if kind == "kd" else []),
                                        *a.set, *student_set),
                             out_dir, deps=kd_deps if kind == "kd" else self._init_jobs(cfg_file, student_set), weight=40,
                             meta={"config": cfg_file, "steps": a.memory_iters},
                             inputs=self._inputs(cfg_file, student_set, tweights if kind == "kd" else None)))

    def _pseudo_label_jobs(self, exp, tconf, tweights, tdeps) -> List[str]:
        """Jobs writing the teacher's pseudo-labels that ``exp``'s config reads (SAD, docs/methods.md
        §5.2), once per file: ``tools/pseudo_label.py`` over the registry's unlabeled source.
        An existing file is reused unless the teacher is trained in this call."""
        source = registry.PSEUDO_LABEL_SOURCES.get((exp.detector, exp.method))
        if source is None:
            return []
        unlabeled = _load(exp.config).dataloader.train.get("unlabeled_dataset")
        if unlabeled is None or not unlabeled.get("pseudo_label_files"):
            raise ValueError(f"{exp.config}: registry.PSEUDO_LABEL_SOURCES names {exp.key}, but its "
                             "dataloader.train has no unlabeled_dataset.pseudo_label_files")
        names = []
        for path in unlabeled.pseudo_label_files:
            name = f"pseudo_labels:{os.path.basename(path)}"
            if not any(j.name == name for j in self.jobs):
                if os.path.isfile(os.path.join(REPO, path)) and not tdeps:
                    log(f"[benchmark] pseudo-labels {path}: reusing (the teacher is reused)")
                    continue
                self.add(Job(name, "pseudo_labels",
                             python_cmd(os.path.join(REPO, "tools", "pseudo_label.py"), "--config-file", tconf,
                                        "--weights", tweights, "--source", source, "--output", path, "--force"),
                             os.path.join(self.out, "pseudo_labels", _name(os.path.basename(path))),
                             deps=tdeps, weight=EVAL_COST * 10, meta={"config": tconf}))
            names.append(name)
        return names


# ---- collecting ----------------------------------------------------------------------------------
def _run_result(run: Dict, jobs: Dict[str, Job]) -> Dict:
    job = jobs.get(run["job"])
    rows = read_metrics(run["out_dir"])
    out = dict(run)
    out["status"] = job.status if job else "?"
    if job and job.error:
        out["error"] = job.error
    out["eval"] = final_eval(rows) if out["status"] in ("done", "reused") else None
    out["time"] = train_time(run["out_dir"])
    out["curves"] = curves(rows)
    if not out.get("iters"):
        out["iters"] = trained_iters(rows)
    return out


def _start_of(plan: Plan, d: Dict) -> Optional[Dict]:
    """The converged protocol's student start of a detector: its checkpoint, iterations and AP
    (its card when shipped, else its run's metrics)."""
    exp = next((e for e in d["experiments"] if e.continuation), None)
    if exp is None:
        return None
    init = [o.split("=", 1)[1] for o in exp.student_set if o.startswith("train.init_checkpoint=")][-1]
    card, rows = checkpoint_card(init), read_metrics(os.path.dirname(init))
    return {"weights": init, "iters": card.get("iters") or trained_iters(rows), "eval": card.get("eval") or final_eval(rows),
            "shipped": bool(card), "continued_iters": exp.iters}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def collect(plan: Plan, jobs: Dict[str, Job], wall: float) -> Dict:
    a = plan.args
    res = {"detectors": {}, "overhead": {}, "memory": {}, "cost": {}, "runs": []}
    for det, d in plan.detectors.items():
        tconf, tweights = d["teacher"]
        tinfo = plan.teachers[tweights]
        tev = _read_json(tinfo["eval_file"]) or {}
        ttime = train_time(os.path.dirname(tweights))
        titers = tinfo["iters"]
        tcard = checkpoint_card(tweights)  # a shipped checkpoint's record of its training
        if tinfo["reused"]:  # what the weights were trained for, not what the config says now
            titers = trained_iters(read_metrics(os.path.dirname(tweights))) or tcard.get("iters")
        dd = {
            "teacher": {"config": tconf, "weights": tweights, "reused": tinfo["reused"], "eval": tev.get("eval"),
                        "iters": titers, "train_s": ttime["train_s"], "s_per_iter": ttime["s_per_iter"],
                        "eval_file": tinfo["eval_file"],
                        "train_dtype": train_dtype(os.path.dirname(tweights)) or tcard.get("train_dtype")},
            "start": _start_of(plan, d),
            "baseline_config": registry.DETECTORS.get(det),
            "baselines": {},
            "methods": {},
            "failed": [],
        }
        t_ap = (tev.get("eval") or {}).get("AP", float("nan"))
        for bname, b in d["baselines"].items():
            runs = [_run_result(r, jobs) for r in b["runs"]]
            dd["baselines"][bname] = {"config": b["config"], "runs": runs, "summary": summarize_runs(runs)}
        for exp in d["experiments"]:
            runs = [_run_result(r, jobs) for r in exp.runs]
            base = dd["baselines"][exp.bname]
            summ = summarize_runs(runs)
            gain = paired_gain(runs, base["runs"])
            b_ap = base["summary"]["AP"]["mean"]
            gap = t_ap - b_ap
            closure = (summ["AP"]["mean"] - b_ap) / gap if gap and not math.isnan(gap) and gap > 0 else float("nan")
            r = {"config": exp.config, "baseline": exp.bname, "runs": runs, "summary": summ,
                 "gain_equal_iters": gain, "gap_closure": closure}
            oh = _read_json(exp.overhead_file)
            if exp.wall_runs:
                wruns = []
                for w in exp.wall_runs:
                    job = jobs.get(w["job"])
                    if job and job.argv:
                        its = [x.split("=", 1)[1] for x in job.argv if x.startswith("train.max_iter=")]
                        w = dict(w, iters=int(its[-1]) if its else None)
                    wruns.append(_run_result(w, jobs))
                r["wallclock"] = {"runs": wruns, "summary": summarize_runs(wruns),
                                  "step_ratio": (oh or {}).get("step_ratio")}
                r["gain_equal_wallclock"] = paired_gain(runs, wruns)
                # the same comparison from the runs' own logged s/iter (noisier: shared machine)
                kd_t = summ["s_per_iter"]["mean"]
                b_t = base["summary"]["s_per_iter"]["mean"]
                r["wallclock"]["logged_step_ratio"] = kd_t / b_t if kd_t and b_t and not math.isnan(kd_t + b_t) else None
            for rr in runs + base["runs"] + (r.get("wallclock") or {}).get("runs", []):
                if rr["status"] not in ("done", "reused") or rr.get("eval") is None:
                    msg = f"{rr['job']}: {rr['status']}" + (f" ({rr['error'][:200]})" if rr.get("error") else "")
                    if msg not in dd["failed"]:
                        dd["failed"].append(msg)
            dd["methods"][exp.method] = r
            key = f"{det}/{exp.method}"
            job = jobs.get(f"overhead:{det}:{exp.method}")
            res["overhead"][key] = oh if oh else {"error": job.error if job else "not run"}
        res["detectors"][det] = dd
    for job in jobs.values():
        if job.kind == "memory":
            m = _read_json(os.path.join(job.out_dir, "memory.json"))
            res["memory"][job.meta["config"]] = m if m else {"error": job.error or job.status}
        if job.kind == "cost":
            c = _read_json(os.path.join(job.out_dir, "cost.json")) or {}
            for det, d in plan.detectors.items():
                tconf = d["teacher"][0]
                sconf = registry.DETECTORS.get(det) or d["experiments"][0].baseline
                for role, conf in (("teacher", tconf), ("student", sconf)):
                    if conf in c:
                        res["cost"][f"{det} {role}"] = dict(c[conf], config=conf)
        res["runs"].append({"name": job.name, "kind": job.kind, "status": job.status, "out_dir": job.out_dir,
                            "seconds": round(job.seconds, 1), "argv": job.argv or None, "error": job.error or None})
    res["targets"] = targets(res, a, wall)
    res["teacher_checks"] = teacher_checks(res, plan)
    return res


def gain_check(what: str, gain: Dict, target: float) -> Dict:
    """PASS only when the 95 % interval of the seed-paired gain lies above ``target``."""
    g = gain["mean"]
    if math.isnan(g):
        measured = "n/a"
    elif gain.get("low") is None:
        measured = f"{g:+.2f} AP (one seed pair: no interval)"
    else:
        measured = f"{g:+.2f} AP, 95 % interval [{gain['low']:+.2f}, {gain['high']:+.2f}] over {gain['n_pairs']} seeds"
    return {"what": what + " (the 95 % interval's lower bound)", "measured": measured, "pass": clears(gain, target)}


def targets(res: Dict, args, wall: float) -> Dict:
    checks = []
    for det, d in res["detectors"].items():
        best = None
        for m, r in d["methods"].items():
            checks.append(gain_check(f"{det}/{m}: distilled − baseline ≥ +5 AP at equal iterations",
                                     r["gain_equal_iters"], 5))
            if "gain_equal_wallclock" in r:
                checks.append(gain_check(f"{det}/{m}: distilled − baseline ≥ +2 AP at equal wall-clock",
                                         r["gain_equal_wallclock"], 2))
            c = r.get("gap_closure")
            if c is not None and not math.isnan(c) and (best is None or c > best[1]):
                best = (m, c)
        if d["methods"]:
            checks.append({"what": f"{det}: best method closes ≥ 60 % of the teacher–student gap",
                           "measured": f"{best[0]} {100 * best[1]:.0f} %" if best else "n/a",
                           "pass": bool(best and best[1] >= 0.6)})
    for key, o in res["overhead"].items():
        if o.get("backbone_only"):
            checks.append({"what": f"{key}: overhead ratio ≤ 1.10 (backbone-only teacher work, CPU)",
                           "measured": f"{o['overhead_ratio']:.3f}", "pass": o["overhead_ratio"] <= 1.10})
    if args.mode == "quick":
        reused = [r["name"] for r in res["runs"] if r["status"] == "reused"]
        teacher_trained = any(r["kind"] == "teacher" and r["status"] == "done" for r in res["runs"])
        # The CPU time the call's jobs took, spread over the parallel slots, bounds its wall-clock
        # from below: it says whether a better schedule could have met the target.
        busy = sum(r["seconds"] or 0.0 for r in res["runs"] if r["status"] == "done")
        note = (f" ({len(reused)} job(s) reused from an earlier call: {', '.join(reused)})" if reused else "") + \
            (" (teacher trained in this call)" if teacher_trained else " (teacher reused)") + \
            (f"; its jobs ran {busy:.0f} s in all, at least {fmt_s(busy / max(args.jobs, 1))} on "
             f"{args.jobs} parallel slot(s)" if busy else "")
        checks.append({"what": "--quick completes in ≤ 15 minutes on 2 CPU cores",
                       "measured": (fmt_s(wall) if wall else "n/a") + note,
                       "pass": bool(wall and wall <= 900 and not reused)})
    return {"checks": checks, "all_pass": all(c["pass"] for c in checks)}


def teacher_checks(res: Dict, plan: Plan) -> Dict:
    lines = []
    for key, o in res["overhead"].items():
        c = o.get("checks")
        if not c:
            continue
        lines.append(
            f"{key}: teacher forward under grad mode {'ON (autograd state kept!)' if c['teacher_forward_grad_enabled'] else 'off (torch.no_grad)'}; "
            f"teacher outputs {'carry' if c['teacher_outputs_require_grad'] else 'carry no'} autograd graph; "
            f"{c['teacher_params_requires_grad']} teacher params require grad, {c['teacher_params_with_grad']} got one; "
            f"eval mode: {c['teacher_in_eval_mode']}; parts run {c['teacher_parts_run']} of {c['teacher_parts_available']}"
            + (f"; computes in {c['teacher_compute_dtype'].replace('torch.', '')} "
               f"(`model.teacher.autocast_dtype={c['teacher_autocast_dtype']!r}`)" if "teacher_compute_dtype" in c else ""))
    lines.append("Teacher dtype: `build_teacher(autocast_dtype=...)` runs `Teacher.record` under `torch.autocast` "
                 "(\"auto\": bfloat16 where the device computes it natively: a CPU with AVX512-BF16/AMX, a CUDA GPU "
                 "with bf16), weights staying fp32. Independently, `train.amp.enabled` (Detectron2's `AMPTrainer` on "
                 "CUDA, d2kd's `AutocastTrainer` on CPU) autocasts the whole training forward, the teacher's included.")
    lines.append("`Teacher.record` uses `torch.no_grad`, not `torch.inference_mode` (documented in "
                 "d2kd/teacher.py: inference tensors cannot be saved for the student's backward); no graph is kept either way.")
    return {"lines": lines}


# ---- the time estimate ---------------------------------------------------------------------------
def time_estimate(plan: Plan) -> Optional[Dict]:
    """Probe the configs the call's jobs train (a few steps each, see
    :mod:`benchmarking.estimate`) and lay the jobs out as the Scheduler will: the call's
    expected wall-clock on this machine, printed before anything starts."""
    a = plan.args
    work = []  # (job, meta for the estimate)
    for job in plan.jobs:
        try:
            argv = job.cmd() if callable(job.cmd) else job.cmd
        except Exception:  # built from a measurement this call makes first: not reusable
            argv = None
        meta = dict(job.meta)
        if argv is not None and reusable(job, argv):
            continue
        if argv is not None and job.resume and meta.get("iters"):
            meta["resumed_at"] = resume_point(job.out_dir, argv, input_stamps(job.inputs))
        work.append((job, meta))
    needed = set()
    for _, meta in work:
        needed.update(c for c in (meta.get("config"), meta.get("kd_config"), meta.get("baseline")) if c)
        needed.update(meta.get("configs") or [])
    teachers = {info["config"]: (info["set"], w, info["config"] in needed) for w, info in plan.teachers.items()}
    students, distilled = {}, {}
    for d in plan.detectors.values():
        for exp in d["experiments"]:
            if exp.config in needed:
                distilled[exp.config] = ([*a.set, *exp.student_set], exp.teacher[0], exp.baseline)
                students[exp.baseline] = [*a.set, *exp.student_set]
        for b in d["baselines"].values():
            if b["config"] in needed:
                students[b["config"]] = [*a.set, *b["student_set"]]
    for job, meta in work:
        if job.kind == "init":
            students[meta["config"]] = list(a.set)
    if not work:
        log("[benchmark] time estimate: nothing to run (every job is reused)")
        return {"seconds": 0.0}
    with quiet_logs():
        p = probe(teachers, students, distilled, threads=a.threads, load=_load_for_probe)
    steps = p.steps
    seconds = {job.name: job_seconds(job.kind, meta, steps, startup_s=p.startup_s) for job, meta in work}
    total = makespan([(j.name, seconds.get(j.name, 0.0), j.deps) for j in plan.jobs], a.jobs)
    tdtypes = [steps[c].dtype for c in teachers if c in steps]
    parts = [f"{os.path.splitext(os.path.basename(c))[0]} {t.train_s:.2f} s"
             + (f" ({t.dtype})" if c in teachers else "") + ("" if t.probed else " (not probed: priced at the others' ratio)")
             for c, t in steps.items()]
    longest = max(((seconds[j.name], j.name) for j, _ in work), default=(0.0, ""))
    log(f"[benchmark] time estimate: about {fmt_minutes(total)} on this machine ({a.jobs} job(s) in parallel, "
        f"{a.threads} thread(s) each; the longest job, {longest[1]}, ~{fmt_minutes(longest[0])}); {bfloat16_note(tdtypes)}")
    log(f"[benchmark]   from a {p.seconds:.0f} s probe: seconds per training step {', '.join(parts)}; "
        f"{p.startup_s:.0f} s to start a job. It assumes nothing else runs here (load average now {_load_avg()}); "
        "--no-estimate skips the probe.")
    return {"seconds": total, "probe_s": p.seconds, "startup_s": p.startup_s, "jobs_s": seconds, "bfloat16": bfloat16_note(tdtypes),
            "steps": {c: dataclasses.asdict(t) for c, t in steps.items()}}


def _load_for_probe(config: str, overrides: List[str]):
    cfg = LazyConfig.load(os.path.join(REPO, config) if not os.path.isabs(config) else config)
    return LazyConfig.apply_overrides(cfg, [o for o in overrides if _applies(cfg, o)])


def _applies(cfg, override: str) -> bool:
    """``model.teacher.*`` overrides only reach configs with a teacher."""
    return not override.startswith(("model.teacher.", "model.distillers")) or "teacher" in cfg.model


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    bf16 = "native bfloat16 (AVX512-BF16/AMX)" if native_bfloat16("cpu") else "no native bfloat16"
    return f"{platform.node()} {model}, {os.cpu_count()} CPU core(s), {bf16}, torch {torch.__version__}, " + \
        ("CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")


def _load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> Dict:
    args = parse_args(argv)
    t0 = time.time()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.makedirs(args.output, exist_ok=True)
    plan = Plan(args)
    if not plan.experiments:
        log("[benchmark] nothing to run: no experiment config exists for the selection")
        return {}
    log(f"[benchmark] {args.mode} mode: {len(plan.experiments)} experiment(s) "
        f"({', '.join(e.key for e in plan.experiments)}), seeds {args.seeds}, {len(plan.jobs)} jobs, "
        f"{args.jobs} in parallel; output {plan.out}")
    if args.baselines_only:
        plan.jobs = [j for j in plan.jobs if j.kind in ("baseline", "init")]
        log(f"[benchmark] --baselines-only: {len(plan.jobs)} baseline run(s) and starting checkpoint(s)")
    if args.list:
        for j in plan.jobs:
            cmd = "<built after its dependencies>" if callable(j.cmd) else " ".join(shlex.quote(x) for x in j.cmd)
            log(f"  {j.name}  deps={j.deps}\n      {cmd}")
        return {}
    # Stopped (SIGTERM, e.g. by `timeout` or a batch system): the Scheduler stops its running
    # jobs on the way out, so none goes on writing into a folder the next call resumes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    estimate = None
    if not args.no_estimate:
        try:
            estimate = time_estimate(plan)
        except Exception as e:  # an estimate must not stop the benchmark
            log(f"[benchmark] no time estimate: the probe failed ({type(e).__name__}: {e})")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore")
    # The measurement jobs run this folder's harness package as a module (``-m benchmarking.measure``,
    # from the clone's root): tools/ is on their path as it is on a tool script's. d2kd is installed.
    env["PYTHONPATH"] = TOOLS + os.pathsep + env.get("PYTHONPATH", "")
    load_start = _load_avg()
    jobs = Scheduler(plan.jobs, n_parallel=args.jobs, env=env, cwd=REPO, heartbeat_s=args.heartbeat, log=log).run()
    wall = time.time() - t0
    if args.baselines_only:
        bad = [j.name for j in jobs.values() if j.status not in ("done", "reused")]
        log(f"[benchmark] baselines done in {fmt_s(wall)}" + (f"; failed: {bad}" if bad else ""))
        return {}
    res = collect(plan, jobs, wall)
    from benchmarking.plots import write_plots  # matplotlib

    res["settings"] = {
        "mode": args.mode, "protocol": args.protocol, "command": "python tools/benchmark.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "started": started, "wall_clock": fmt_s(wall), "wall_clock_s": wall,
        "n_parallel": args.jobs, "threads": args.threads, "seeds": args.seeds, "evals_per_run": args.evals,
        "load_start": load_start, "load_end": _load_avg(), "estimate": estimate,
        "val_set": _val_set(plan), "overrides": {"all": args.set, "students": args.student_set, "teacher": args.teacher_set},
    }
    try:
        res["plots"] = write_plots(res, args.output)
    except Exception as e:  # plots must not lose the tables
        log(f"[benchmark] plots failed: {type(e).__name__}: {e}")
        res["plots"] = []
    write_json(res, os.path.join(args.output, "results.json"))
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(markdown(res))
    log(f"[benchmark] done in {fmt_s(wall)}: {os.path.join(args.output, 'results.md')}")
    with open(os.path.join(args.output, "results.md")) as f:
        log(f.read())
    return res


def _val_set(plan: Plan) -> str:
    try:
        exp = plan.experiments[0]
        return str(_load(exp.baseline, plan.args.set + plan.args.student_set).dataloader.test.dataset.names)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
