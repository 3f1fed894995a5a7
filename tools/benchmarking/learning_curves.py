"""AP-vs-iteration learning curves of training runs, and whether each has reached its plateau.

A run evaluated along the way (``train.eval_period``) leaves ``bbox/AP`` rows in its
``metrics.json``. Within one run, the gain over the last ``window`` of its schedule and the gain
before the first LR step (50 % → 75 %) are reported. With the shapes configs' step schedule (LR
×0.1 at 75 % and 92 %) every run gains over its last quarter from the LR steps alone, so a model
has **plateaued** when a longer schedule of the same run (same label, more iterations: the
schedule scales with ``train.max_iter``) ends less than ``tol`` AP higher (:func:`schedule_gains`);
a model measured at one length only falls back to the within-run test (< ``tol`` AP over the
last ``window``).
"""
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .results import read_metrics  # noqa: E402

Curve = List[Tuple[int, float]]  # (iterations trained, AP)


def ap_curve(rows: List[Dict], metric: str = "bbox/AP") -> Curve:
    """``(iterations trained, AP)`` of every evaluation in ``metrics.json`` rows, in order.

    Detectron2 logs an evaluation at the iteration index of the step that preceded it, so a
    periodic evaluation after the 500th step is at ``iteration`` 499: it becomes 500 here."""
    points = {}
    for r in rows:
        if metric in r and r[metric] is not None and not math.isnan(r[metric]):
            points[int(r["iteration"]) + 1] = float(r[metric])  # a resumed run's repeat wins
    return sorted(points.items())


def ap_at(curve: Curve, it: float) -> Optional[float]:
    """AP at iteration ``it``, interpolated linearly between evaluations (None before the first)."""
    if not curve or it < curve[0][0]:
        return None
    for (i0, a0), (i1, a1) in zip(curve, curve[1:]):
        if i0 <= it <= i1:
            return a0 + (a1 - a0) * (it - i0) / (i1 - i0)
    return curve[-1][1] if it >= curve[-1][0] else None


def plateau(curve: Curve, max_iter: int, *, window: float = 0.25, tol: float = 1.0) -> Dict:
    """Whether ``curve`` (a run of ``max_iter`` iterations) gained < ``tol`` AP over the last
    ``window`` of the schedule, and its gain before the first LR step (50 % → 75 %)."""
    final = curve[-1][1] if curve else None
    start = ap_at(curve, (1 - window) * max_iter)
    mid, before_step = ap_at(curve, 0.5 * max_iter), ap_at(curve, 0.75 * max_iter)
    gain_last = None if start is None or final is None else final - start
    gain_before_step = None if mid is None or before_step is None else before_step - mid
    return {
        "final_AP": final,
        "best_AP": max((a for _, a in curve), default=None),
        "gain_last_window": gain_last,
        "gain_50_75": gain_before_step,
        "plateaued": gain_last is not None and gain_last < tol,
        "window": window,
        "tol": tol,
    }


def run_curve(out_dir: str) -> Tuple[Curve, Optional[int]]:
    """A training folder's AP curve and the iterations its schedule ran (its last training row)."""
    rows = read_metrics(out_dir)
    trained = [int(r["iteration"]) + 1 for r in rows if "total_loss" in r]
    max_iter = max(trained) if trained else None
    curve = ap_curve(rows)
    if max_iter is not None and curve and curve[-1][0] == max_iter + 1:
        # The final evaluation runs after training (EvalHook.after_train), when the trainer's
        # iteration is already max_iter: it is the evaluation of max_iter iterations.
        curve[-1] = (max_iter, curve[-1][1])
    return curve, max_iter


def plot(curves: Sequence[Tuple[str, Curve]], path: str, title: str = "") -> str:
    """One line per (label, curve)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, curve in curves:
        if curve:
            xs, ys = zip(*curve)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("iterations trained")
    ax.set_ylabel("COCO box AP (%) on shapes_val")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def schedule_gains(named: Sequence[Tuple[str, Curve, int]]) -> List[Optional[Tuple[int, float]]]:
    """Per run, ``(iterations of the next shorter run with the same label, final AP gained over
    it)``, or None where the label has no shorter run."""
    out = []
    for label, curve, max_iter in named:
        shorter = [(m, c) for lab, c, m in named if lab == label and m < max_iter and c]
        if not shorter or not curve:
            out.append(None)
            continue
        m, c = max(shorter, key=lambda x: x[0])
        out.append((m, curve[-1][1] - c[-1][1]))
    return out


def markdown_table(named: Sequence[Tuple[str, Curve, int]], *, window: float = 0.25, tol: float = 1.0) -> str:
    """One row per run: its evaluations, the within-run gains and the plateau test (a longer
    schedule gains < ``tol``; a model run at one length only: < ``tol`` over the last window)."""
    lines = [
        f"| run | iterations | AP at each evaluation (iterations: AP) | final AP | gain 50 → 75 % | "
        f"gain over the last {window:.0%} | gain over the shorter schedule | plateaued (< {tol:g} AP) |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]

    def f(x):
        return "" if x is None else f"{x:+.1f}"

    for (label, curve, max_iter), longer in zip(named, schedule_gains(named)):
        p = plateau(curve, max_iter, window=window, tol=tol)
        points = ", ".join(f"{i}: {a:.1f}" for i, a in curve)
        final = "" if p["final_AP"] is None else f"{p['final_AP']:.1f}"
        vs = "" if longer is None else f"{longer[1]:+.1f} (vs {longer[0]})"
        plateaued = p["plateaued"] if longer is None else longer[1] < tol
        lines.append(
            f"| {label} | {max_iter} | {points} | {final} | {f(p['gain_50_75'])} | {f(p['gain_last_window'])} | "
            f"{vs} | {'yes' if plateaued else 'no'} |"
        )
    return "\n".join(lines) + "\n"
