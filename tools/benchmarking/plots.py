"""PNG plots of the benchmark (matplotlib, Agg backend): AP per method, loss and AP curves.

The AP curves need runs evaluated along the way (``--evals N``, N > 1); a call whose runs were
each evaluated once (the quick mode) would draw one dot per run, so it has no ``ap_curves.png``
(:func:`write_plots` says why in ``results["plots_skipped"]``)."""
import math
import os
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ok(x):
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _its(n) -> str:
    """`` (1353 it)`` for a label, or nothing when the runs trained different lengths."""
    return f" ({n} it)" if isinstance(n, int) else ""


def bars(d: Dict) -> List[Tuple[str, float, float, List[float], str]]:
    """One detector's bars: ``(label, mean AP, s.d., per-seed APs, colour)``: teacher, baselines,
    then per method its equal-wall-clock baseline and the distilled students; every label says
    how many iterations the bar's runs trained."""
    out = []
    te = (d.get("teacher") or {}).get("eval") or {}
    if _ok(te.get("AP")):
        out.append((f"teacher{_its(d['teacher'].get('iters'))}", te["AP"], 0, [], "#555555"))

    def runs_bar(label, summary, runs, color):
        out.append((f"{label}{_its(summary.get('iters'))}", summary["AP"]["mean"], summary["AP"]["sd"],
                    [r["eval"]["AP"] for r in runs if r.get("eval")], color))

    for bname, b in d["baselines"].items():
        runs_bar("baseline" if bname == "default" else f"baseline ({bname})", b["summary"], b["runs"], "#999999")
    for m, r in d["methods"].items():
        wc = r.get("wallclock") or {}
        if wc.get("summary"):  # the plain student trained as long, in seconds, as the distilled one
            runs_bar(f"baseline, {m}'s\nwall-clock", wc["summary"], wc["runs"], "#c9c9c9")
        runs_bar(m, r["summary"], r["runs"], "#1f77b4")
    return out


def plot_ap_per_method(results: Dict, path: str) -> str:
    dets = list(results["detectors"])
    fig, axes = plt.subplots(1, max(len(dets), 1), figsize=(max(5, 1.2 * _max_bars(results) + 2) * max(len(dets), 1), 4.2),
                             squeeze=False)
    for ax, det in zip(axes[0], dets):
        rows = bars(results["detectors"][det])
        if not rows:
            continue
        names, means, sds, seeds, colors = zip(*rows)
        xs = list(range(len(names)))
        ax.bar(xs, [m if _ok(m) else 0 for m in means], yerr=[s if _ok(s) else 0 for s in sds], color=colors,
               capsize=4, edgecolor="black", linewidth=0.5)
        for x, pts in zip(xs, seeds):
            ax.scatter([x] * len(pts), pts, color="black", s=10, zorder=3)
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("box AP (mean ± s.d. over seeds; dots: seeds)")
        ax.set_title(det)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _max_bars(results):
    n = 1
    for d in results["detectors"].values():
        n = max(n, 2 + len(d["baselines"]) + 2 * len(d["methods"]))
    return n


def _groups(d: Dict) -> List:
    out = []
    for bname, b in d["baselines"].items():
        out.append(("baseline" if bname == "default" else f"baseline ({bname})", b["runs"], "--"))
    for m, r in d["methods"].items():
        out.append((m, r["runs"], "-"))
        wc = r.get("wallclock") or {}
        if wc.get("runs"):
            out.append((f"baseline, {m}'s wall-clock", wc["runs"], ":"))
    return out


def plot_curves(results: Dict, path: str, what: str) -> str:
    """``what``: "loss" (detection loss = total − KD terms, and the weighted KD loss, vs iteration)
    or "ap" (box AP vs iteration); one line per run."""
    dets = list(results["detectors"])
    rows = 2 if what == "loss" else 1
    fig, axes = plt.subplots(rows, max(len(dets), 1), figsize=(6.5 * max(len(dets), 1), 4.2 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for col, det in enumerate(dets):
        d = results["detectors"][det]
        for gi, (label, runs, style) in enumerate(_groups(d)):
            for ri, run in enumerate(runs):
                c = run.get("curves") or {}
                if what == "ap":
                    series = [(axes[0][col], c.get("ap_iter"), c.get("ap"))]
                else:
                    det_loss = [t - k for t, k in zip(c.get("total_loss") or [], c.get("kd_loss") or [])]
                    series = [(axes[0][col], c.get("loss_iter"), det_loss)]
                    if any(c.get("kd_loss") or []):
                        # a log scale has no 0: the iterations before a warm-up turns KD on are left out
                        kd = [(i, k) for i, k in zip(c.get("loss_iter"), c.get("kd_loss")) if k > 0]
                        series.append((axes[1][col], [i for i, _ in kd], [k for _, k in kd]))
                for ax, xs, ys in series:
                    if xs:
                        ax.plot(xs, ys, style, color=cmap(gi % 10), marker="o" if what == "ap" else None,
                                markersize=3, label=label if ri == 0 else None, linewidth=1)
        if what == "ap":
            te = (d.get("teacher") or {}).get("eval") or {}
            if _ok(te.get("AP")):
                axes[0][col].axhline(te["AP"], color="black", linewidth=0.8, linestyle="-.", label="teacher")
        ylabels = ["box AP"] if what == "ap" else ["detection loss (total − KD terms)", "KD loss (weighted sum, > 0)"]
        for r in range(rows):
            ax = axes[r][col]
            ax.set_xlabel("iteration")
            ax.set_ylabel(ylabels[r])
            if what == "loss":
                ax.set_yscale("log")
            ax.set_title(det)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return _save(fig, path)


def mean_curve(runs: List[Dict]) -> Tuple[List[int], List[float]]:
    """The seed-mean AP curve of ``runs``: at each iteration where every run was evaluated."""
    curves = [dict(zip((r.get("curves") or {}).get("ap_iter") or [], (r.get("curves") or {}).get("ap") or []))
              for r in runs if r.get("eval")]
    if not curves:
        return [], []
    its = sorted(set.intersection(*(set(c) for c in curves)))
    return its, [sum(c[i] for c in curves) / len(curves) for i in its]


def method_curves(d: Dict, method: str) -> List[Tuple[str, List[int], List[float], str]]:
    """What a method's panel draws: ``(label, iterations, seed-mean AP, line style)`` for the
    baseline, the distilled student and the baseline trained for the distilled run's wall-clock."""
    r = d["methods"][method]
    base = d["baselines"].get(r.get("baseline", "default")) or next(iter(d["baselines"].values()))
    out = [("baseline", *mean_curve(base["runs"]), "--"), (method, *mean_curve(r["runs"]), "-")]
    wc = r.get("wallclock") or {}
    if wc.get("runs"):
        ratio = wc.get("step_ratio")
        out.append((f"baseline, {method}'s wall-clock" + (f" (×{ratio:.2f} iterations)" if ratio else ""),
                    *mean_curve(wc["runs"]), ":"))
    return out


def plot_method_curves(results: Dict, path: str) -> str:
    """One panel per (detector, method): seed-mean AP against iteration of the baseline, the
    distilled student and the equal-wall-clock baseline, with the teacher's AP as a line — does
    distillation pay at equal iterations, at equal time, and from when."""
    panels = [(det, m) for det, d in results["detectors"].items() for m in d["methods"]]
    cols = min(3, max(len(panels), 1))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (det, m) in zip(axes.flat, panels):
        d = results["detectors"][det]
        for (label, its, aps, style), color in zip(method_curves(d, m), ("#777777", "#1f77b4", "#aaaaaa")):
            if its:
                ax.plot(its, aps, style, color=color, marker="o", markersize=3, linewidth=1.2, label=label)
        te = (d.get("teacher") or {}).get("eval") or {}
        if _ok(te.get("AP")):
            ax.axhline(te["AP"], color="black", linewidth=0.8, linestyle="-.", label="teacher")
        ax.set_title(f"{det} / {m}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("box AP (mean over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def has_ap_curves(results: Dict) -> bool:
    """Whether some run was evaluated at two iterations or more (a curve, not a dot)."""
    for d in results["detectors"].values():
        for _, runs, _ in _groups(d):
            if any(len(set((r.get("curves") or {}).get("ap_iter") or [])) >= 2 for r in runs):
                return True
    return False


def write_plots(results: Dict, out_dir: str) -> List[str]:
    """Write the plots into ``out_dir``; returns their file names. A plot left out is named in
    ``results["plots_skipped"]`` with the reason (and a stale file of that name is removed)."""
    os.makedirs(out_dir, exist_ok=True)
    names = []
    skipped = results.setdefault("plots_skipped", {})
    for name, fn in (("ap_per_method.png", plot_ap_per_method),
                     ("loss_curves.png", lambda r, p: plot_curves(r, p, "loss")),
                     ("ap_curves.png", lambda r, p: plot_curves(r, p, "ap")),
                     ("ap_curves_per_method.png", plot_method_curves)):
        if name.startswith("ap_curves") and not has_ap_curves(results):
            skipped[name] = ("each run was evaluated once, at its end: no AP curve to draw "
                             "(--evals N evaluates every run N times along the way)")
            if os.path.isfile(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
            continue
        fn(results, os.path.join(out_dir, name))
        names.append(name)
    return names
