"""Read the runs' outputs, aggregate over seeds, and write ``results.json`` / ``results.md``.

Every number in the report comes from a file under the benchmark's output folder (or the reused
teacher's folder): a run's final evaluation is the last ``bbox/*`` entry of its ``metrics.json``;
its training time is Detectron2's "Overall training speed" line of its ``log.txt`` (iterations
only, evaluation and checkpoint hooks excluded); the teacher's AP is its eval-only run's
``copypaste`` lines.
"""
import json
import math
import os
import re
import statistics
from typing import Dict, Iterable, List, Optional

from .runner import fmt_s

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ---- reading one run -------------------------------------------------------------------------
def read_metrics(out_dir: str) -> List[Dict]:
    path = os.path.join(out_dir, "metrics.json")
    rows = []
    if not os.path.isfile(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def final_eval(rows: List[Dict]) -> Optional[Dict[str, float]]:
    for row in reversed(rows):
        if "bbox/AP" in row:
            return {m: _num(row.get(f"bbox/{m}")) for m in METRICS} | {"iteration": row.get("iteration")}
    return None


def curves(rows: List[Dict]) -> Dict[str, List]:
    """Loss (``total_loss`` and each ``loss_*``) and AP against iteration."""
    loss_it, loss = [], []
    kd_loss = []
    ap_it, ap = [], []
    for row in rows:
        if "total_loss" in row:
            loss_it.append(row["iteration"])
            loss.append(row["total_loss"])
            kd_loss.append(sum(v for k, v in row.items() if k.startswith("loss_kd_")))
        if "bbox/AP" in row:
            ap_it.append(row["iteration"])
            ap.append(_num(row["bbox/AP"]))
    return {"loss_iter": loss_it, "total_loss": loss, "kd_loss": kd_loss, "ap_iter": ap_it, "ap": ap}


_SPEED = re.compile(r"Overall training speed: (\d+) iterations in ([0-9:]+) \(([0-9.]+) s / it\)")
_TOTAL = re.compile(r"Total training time: ([0-9:]+) \(([0-9:]+) on hooks\)")


def _hms(s: str) -> float:
    parts = [float(x) for x in s.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def train_time(out_dir: str) -> Dict[str, Optional[float]]:
    """``s_per_iter`` and ``train_s`` (iterations only), ``total_s`` and ``hooks_s`` from log.txt."""
    out = {"s_per_iter": None, "train_s": None, "total_s": None, "hooks_s": None}
    path = os.path.join(out_dir, "log.txt")
    if not os.path.isfile(path):
        return out
    with open(path, errors="ignore") as f:
        text = f.read()
    m = list(_SPEED.finditer(text))
    if m:
        n, hms, spi = m[-1].groups()
        out["s_per_iter"] = float(spi)
        out["train_s"] = _hms(hms)
    m = list(_TOTAL.finditer(text))
    if m:
        out["total_s"], out["hooks_s"] = _hms(m[-1].group(1)), _hms(m[-1].group(2))
    return out


def trained_iters(rows: List[Dict]) -> Optional[int]:
    """How many iterations a run trained: the last training row of its ``metrics.json`` + 1 (an
    evaluation at the end of training is logged one iteration later)."""
    its = [r["iteration"] for r in rows if "total_loss" in r]
    return max(its) + 1 if its else None


_MIXED = re.compile(r"Mixed precision: the training forward runs under autocast\(\w+, torch\.(\w+)\)")


def train_dtype(out_dir: str) -> Optional[str]:
    """The dtype the last training run logged in ``out_dir/log.txt`` computed its forward in
    ("bfloat16" under ``train.amp``, else "float32"); None without a log of a training run."""
    path = os.path.join(out_dir, "log.txt")
    if not os.path.isfile(path):
        return None
    with open(path, errors="ignore") as f:
        runs = f.read().split("Starting training from iteration")
    if len(runs) < 2:
        return None
    m = _MIXED.search(runs[-2].rsplit("Rank of current process", 1)[-1])  # the last run's set-up
    return m.group(1) if m else "float32"


_COPY = re.compile(r"copypaste: (.*)$", re.M)


def parse_copypaste(text: str, last: bool = False) -> Optional[Dict[str, float]]:
    """The bbox metrics from Detectron2's ``print_csv_format`` lines (the first evaluation in
    ``text``, or the last one)."""
    lines = [m.group(1).strip() for m in _COPY.finditer(text)]
    found = None
    for i, line in enumerate(lines):
        if line == "Task: bbox" and i + 2 < len(lines):
            names = lines[i + 1].split(",")
            values = lines[i + 2].split(",")
            found = {n: _num(v) for n, v in zip(names, values)}
            if not last:
                return found
    return found


def _num(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return x


# ---- aggregation -----------------------------------------------------------------------------
def mean_sd(values: Iterable[float]):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), sd, len(vals)


def summarize_runs(runs: List[Dict]) -> Dict:
    """Mean ± s.d. over seeds of each metric and of the training time of a list of runs."""
    out = {"n": len([r for r in runs if r.get("eval")]), "seeds": [r["seed"] for r in runs if r.get("eval")]}
    for m in METRICS:
        mu, sd, _ = mean_sd((r["eval"] or {}).get(m) for r in runs if r.get("eval"))
        out[m] = {"mean": mu, "sd": sd}
    for k in ("train_s", "s_per_iter"):
        mu, sd, _ = mean_sd((r.get("time") or {}).get(k) for r in runs)
        out[k] = {"mean": mu, "sd": sd}
    iters = sorted({r.get("iters") for r in runs if r.get("iters")})
    out["iters"] = iters[0] if len(iters) == 1 else iters
    return out


#: Two-sided 95 % quantiles of Student's t, t(0.975; df) for df = 1..30 (beyond: the normal 1.960).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.960


def paired_gain(a_runs: List[Dict], b_runs: List[Dict], metric: str = "AP") -> Dict:
    """Gain of ``a`` over ``b`` from the seed-matched differences d_s = a_s − b_s of ``metric``:
    their mean ± s.d., and the 95 % confidence interval of the mean gain,
    mean ± t(0.975; n−1) · s.d. / √n (``low``/``high``; None with fewer than 2 pairs). Pairing
    by seed removes what the two runs share (data order, initialisation), which is most of the
    seed-to-seed spread of either run alone."""
    b_by_seed = {r["seed"]: r for r in b_runs if r.get("eval")}
    diffs = [r["eval"][metric] - b_by_seed[r["seed"]]["eval"][metric]
             for r in a_runs if r.get("eval") and r["seed"] in b_by_seed]
    mu, sd, n = mean_sd(diffs)
    out = {"mean": mu, "sd": sd, "n_pairs": n, "low": None, "high": None}
    if n >= 2:
        half = t975(n - 1) * sd / math.sqrt(n)
        out.update(low=mu - half, high=mu + half)
    return out


def clears(gain: Dict, target: float) -> bool:
    """A gain target is met only when the 95 % interval's lower bound clears it (so a mean above
    the target with a wide spread over seeds is not a PASS); without an interval, never."""
    return gain.get("low") is not None and gain["low"] >= target


# ---- formatting ------------------------------------------------------------------------------
def _f(x, nd=1, sign=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _pm(stat, nd=1, sign=False):
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return "–"
    s = _f(stat["mean"], nd, sign)
    if stat.get("sd") and not math.isnan(stat["sd"]) and stat["sd"] > 0:
        s += f" ± {stat['sd']:.{nd}f}"
    return s


def _gain(stat, nd=1):
    """A paired gain: ``+x.x [lo, hi]`` (its 95 % interval) where there is one, else ``_pm``."""
    if not stat or stat.get("low") is None:
        return _pm(stat, nd, sign=True)
    return f"{_f(stat['mean'], nd, True)} [{_f(stat['low'], nd, True)}, {_f(stat['high'], nd, True)}]"


def _ap_digits(d: Dict) -> int:
    """Two decimals when every AP of the detector's table is below 10 (else one)."""
    aps = [((d.get("teacher") or {}).get("eval") or {}).get("AP")]
    aps += [b["summary"]["AP"]["mean"] for b in d["baselines"].values()]
    aps += [r["summary"]["AP"]["mean"] for r in d["methods"].values()]
    aps = [a for a in aps if a is not None and not math.isnan(a)]
    return 2 if aps and max(aps) < 10 else 1


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(results: Dict, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(_jsonable(results), f, indent=1)
    os.replace(path + ".tmp", path)


def markdown(results: Dict) -> str:
    """The human report: accuracy per detector, targets, cost, overhead, memory, teacher checks."""
    L: List[str] = []
    s = results["settings"]
    L.append("# d2kd embedded KD benchmark (shapes)\n")
    L.append(f"Command: `{s['command']}`  ")
    L.append(f"Machine: {s['machine']}  ")
    est = s.get("estimate") or {}
    estimated = (f" (estimated at the start: {fmt_s(est['seconds'])}; {est['bfloat16']})"
                 if est.get("seconds") and est.get("bfloat16") else "")
    L.append(f"Started {s['started']}, took {s.get('wall_clock', '?')}{estimated}; "
             f"{s['n_parallel']} job(s) in parallel, {s['threads']} thread(s) each; "
             f"load average at start {s.get('load_start', '?')}, at end {s.get('load_end', '?')}.  ")
    L.append(f"Seeds: {', '.join(map(str, s['seeds']))}. Mean ± s.d. over seeds; a gain is the mean of the "
             "seed-matched differences with its 95 % confidence interval [low, high] (Student's t, n − 1 "
             "degrees of freedom; mean ± s.d. with one pair). AP is COCO box AP (%) on the validation split "
             f"`{s.get('val_set', '?')}`.\n")
    for det, d in results["detectors"].items():
        L.append(f"## {det}\n")
        nd = _ap_digits(d)
        t = d.get("teacher") or {}
        trained = f", trained in {t['train_dtype']}" if t.get("train_dtype") else ""
        L.append(f"Teacher `{t.get('config')}` (weights `{t.get('weights')}`, "
                 f"{'reused' if t.get('reused') else 'trained by this benchmark'}{trained}); "
                 f"baseline student `{d['baseline_config']}`.\n")
        st = d.get("start")
        if st:
            sev = (st.get("eval") or {}).get("AP")
            L.append(f"Converged protocol: every student run (baseline, distilled, equal wall-clock) continues for "
                     f"{st.get('continued_iters')} iterations from the plain student trained {st.get('iters', '?')} "
                     f"iterations (`{st['weights']}`{', shipped with d2kd' if st.get('shipped') else ''}"
                     f"{f', {sev:.1f} AP' if sev is not None else ''}), its schedule restarted.\n")
        L.append("| model | iters | AP | AP50 | APs | gain AP (equal iters) | gap closure | "
                 "gain AP (equal wall-clock) | train time (s) | s/iter |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        te = t.get("eval") or {}
        L.append(f"| teacher | {t.get('iters', '–')} | {_f(te.get('AP'), nd)} | {_f(te.get('AP50'), nd)} | "
                 f"{_f(te.get('APs'), nd)} | | | | {_f(t.get('train_s'), 0)} | {_f(t.get('s_per_iter'), 3)} |")
        for bname, b in d["baselines"].items():
            bs = b["summary"]
            L.append(f"| baseline student{'' if bname == 'default' else f' ({bname})'} | {bs['iters']} | "
                     f"{_pm(bs['AP'], nd)} | {_pm(bs['AP50'], nd)} | {_pm(bs['APs'], nd)} | | | | "
                     f"{_pm(bs['train_s'], 0)} | {_pm(bs['s_per_iter'], 3)} |")
        for m, r in d["methods"].items():
            ms = r["summary"]
            wc = r.get("wallclock") or {}
            L.append(f"| **{m}** | {ms['iters']} | {_pm(ms['AP'], nd)} | {_pm(ms['AP50'], nd)} | {_pm(ms['APs'], nd)} | "
                     f"{_gain(r['gain_equal_iters'], nd)} | {_f(100 * r['gap_closure'], 0) + ' %' if r.get('gap_closure') is not None and not math.isnan(r['gap_closure']) else '–'} | "
                     f"{_gain(r.get('gain_equal_wallclock'), nd)} | {_pm(ms['train_s'], 0)} | {_pm(ms['s_per_iter'], 3)} |")
            if wc.get("summary"):
                ws = wc["summary"]
                L.append(f"| baseline, wall-clock of {m} (×{_f(wc.get('step_ratio'), 2)}) | {ws['iters']} | "
                         f"{_pm(ws['AP'], nd)} | {_pm(ws['AP50'], nd)} | {_pm(ws['APs'], nd)} | | | | "
                         f"{_pm(ws['train_s'], 0)} | {_pm(ws['s_per_iter'], 3)} |")
        L.append("")
        L.append("Gap closure = (distilled − baseline) / (teacher − baseline), AP at equal iterations. "
                 "The equal-wall-clock baseline trains round(iters × step ratio) iterations with the same "
                 "LR schedule stretched (milestones and warm-up are fractions of `train.max_iter`); the step "
                 "ratio is the KD/plain seconds-per-iteration ratio measured interleaved in one process on "
                 "the same batches (data loading included), robust to the machine's load; the logged "
                 "s/iter of the runs themselves is shown for comparison (runs share the machine).\n")
        if d.get("failed"):
            L.append("Failed or skipped runs: " + "; ".join(d["failed"]) + "\n")
    tg = results.get("targets") or {}
    if tg.get("checks"):
        L.append("## Targets\n")
        for c in tg["checks"]:
            L.append(f"- {'PASS' if c['pass'] else 'FAIL'}: {c['what']} — measured {c['measured']}")
        L.append("")
    cost = results.get("cost") or {}
    if cost:
        L.append("## Cost (one image, CPU)\n")
        L.append("| model | config | params (M) | GFLOPs (fvcore, multiply-adds) | latency (ms/img) |")
        L.append("|---|---|---:|---:|---:|")
        for name, c in cost.items():
            L.append(f"| {name} | `{c.get('config')}` | {_f(c.get('params_m'), 3)} | {_f(c.get('gflops'), 3)} | "
                     f"{_f(c.get('latency_ms'), 1)} |")
        any_c = next(iter(cost.values()))
        L.append(f"\n{any_c.get('image_size')}×{any_c.get('image_size')} input, {any_c.get('threads')} thread(s), "
                 f"median of {any_c.get('n_runs')} eval-mode forwards incl. postprocessing "
                 "(tools/model_cost.py, random weights).\n")
    oh = results.get("overhead") or {}
    if oh:
        L.append("## Distillation overhead per training iteration\n")
        L.append("| experiment | teacher parts run | t student (ms) | t teacher fwd (ms) | t KD iter (ms) | "
                 "overhead = KD / (student + teacher) | t data (ms) | step ratio (wall-clock) |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for key, o in oh.items():
            if o.get("error"):
                L.append(f"| {key} | failed: {o['error'][:120]} | | | | | | |")
                continue
            L.append(f"| {key} | {', '.join(o['teacher_needs'])} | {_f(o['t_student_ms'])} | {_f(o['t_teacher_ms'])} | "
                     f"{_f(o['t_kd_ms'])} | {_f(o['overhead_ratio'], 3)} | {_f(o['t_data_ms'])} | {_f(o['step_ratio'], 3)} |")
        fp32 = [(k, v) for k, v in oh.items() if not v.get("error") and v.get("t_teacher_fp32_ms")]
        if fp32:
            dtype = {k: (v.get("checks") or {}).get("teacher_compute_dtype", "autocast").replace("torch.", "")
                     for k, v in fp32}
            L.append("\nTeacher under autocast: " + "; ".join(
                f"{k}: {_f(v['t_teacher_ms'])} ms in {dtype[k]} against {_f(v['t_teacher_fp32_ms'])} ms for the "
                f"same calls in fp32 (×{v['t_teacher_fp32_ms'] / v['t_teacher_ms']:.2f})" for k, v in fp32) + ".")
        o = next((v for v in oh.values() if not v.get("error")), None)
        if o:
            L.append(f"\nMedians of {o['n_iters']} interleaved iterations after {o['warmup']} warm-up ones, "
                     f"on {o['n_batches']} fixed batches of {o['batch_size']} images, one process, "
                     f"{o['threads']} thread(s); forward + backward, no optimizer step. 'teacher fwd' is the "
                     "time spent in `Teacher.record` inside the KD iteration.\n")
    mem = results.get("memory") or {}
    if mem:
        L.append("## Peak memory with and without the teacher\n")
        L.append("| config | teacher | peak RSS increase (MB) | CUDA max allocated (MB) |")
        L.append("|---|---|---:|---:|")
        for key, m in mem.items():
            if m.get("error"):
                L.append(f"| {key} | failed: {m['error'][:120]} | | |")
                continue
            L.append(f"| {key} | {'yes' if m['has_teacher'] else 'no'} | {_f(m['peak_rss_increase_mb'], 0)} | "
                     f"{_f(m.get('cuda_max_memory_allocated_mb'), 0)} |")
        m = next((v for v in mem.values() if not v.get("error")), None)
        if m:
            L.append(f"\n{m['measured']}, fresh process per row, model build + {m['n_iters']} training "
                     f"iterations of batch {m['batch_size']}.\n")
    tc = results.get("teacher_checks") or {}
    if tc:
        L.append("## Is the teacher cheap?\n")
        for line in tc.get("lines", []):
            L.append(f"- {line}")
        L.append("")
    plots = results.get("plots") or []
    skipped = results.get("plots_skipped") or {}
    if plots or skipped:
        L.append("## Plots\n")
        for p in plots:
            L.append(f"![{os.path.splitext(p)[0]}]({p})")
        for p, why in skipped.items():
            L.append(f"\nNo `{p}`: {why}.")
        L.append("")
    L.append("## Files\n")
    L.append("Every number above is in `results.json`; each run's folder (config, `metrics.json`, `log.txt`, "
             "`benchmark_job.log`) is listed there under `runs`.")
    return "\n".join(L) + "\n"
