"""PNG plots of the benchmark (matplotlib, Agg backend): AP per method, loss and AP curves."""
import math
import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _ok(x):
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def plot_ap_per_method(results: Dict, path: str) -> str:
    dets = list(results["detectors"])
    fig, axes = plt.subplots(1, max(len(dets), 1), figsize=(max(5, 1.2 * _max_bars(results) + 2) * max(len(dets), 1), 4.2),
                             squeeze=False)
    for ax, det in zip(axes[0], dets):
        d = results["detectors"][det]
        names, means, sds, seeds, colors = [], [], [], [], []
        te = (d.get("teacher") or {}).get("eval") or {}
        if _ok(te.get("AP")):
            names.append("teacher"); means.append(te["AP"]); sds.append(0); seeds.append([]); colors.append("#555555")
        for bname, b in d["baselines"].items():
            names.append("baseline" if bname == "default" else f"baseline\n({bname})")
            means.append(b["summary"]["AP"]["mean"]); sds.append(b["summary"]["AP"]["sd"])
            seeds.append([r["eval"]["AP"] for r in b["runs"] if r.get("eval")]); colors.append("#999999")
        for m, r in d["methods"].items():
            wc = r.get("wallclock") or {}
            if wc.get("summary"):
                names.append(f"baseline\n=wall({m})")
                means.append(wc["summary"]["AP"]["mean"]); sds.append(wc["summary"]["AP"]["sd"])
                seeds.append([x["eval"]["AP"] for x in wc["runs"] if x.get("eval")]); colors.append("#c9c9c9")
            names.append(m)
            means.append(r["summary"]["AP"]["mean"]); sds.append(r["summary"]["AP"]["sd"])
            seeds.append([x["eval"]["AP"] for x in r["runs"] if x.get("eval")]); colors.append("#1f77b4")
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
            out.append((f"baseline = wall-clock of {m}", wc["runs"], ":"))
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
                        series.append((axes[1][col], c.get("loss_iter"), c.get("kd_loss")))
                for ax, xs, ys in series:
                    if xs:
                        ax.plot(xs, ys, style, color=cmap(gi % 10), marker="o" if what == "ap" else None,
                                markersize=3, label=label if ri == 0 else None, linewidth=1)
        if what == "ap":
            te = (d.get("teacher") or {}).get("eval") or {}
            if _ok(te.get("AP")):
                axes[0][col].axhline(te["AP"], color="black", linewidth=0.8, linestyle="-.", label="teacher")
        ylabels = ["box AP"] if what == "ap" else ["detection loss (total − KD terms)", "KD loss (weighted sum)"]
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: Dict, out_dir: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    names = []
    for name, fn in (("ap_per_method.png", plot_ap_per_method),
                     ("loss_curves.png", lambda r, p: plot_curves(r, p, "loss")),
                     ("ap_curves.png", lambda r, p: plot_curves(r, p, "ap"))):
        fn(results, os.path.join(out_dir, name))
        names.append(name)
    return names
