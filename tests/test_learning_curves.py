"""Learning curves from metrics.json rows, and the plateau test
(tools/benchmarking/learning_curves.py)."""
import importlib.util
import json
import os

import pytest

from conftest import D2_MISSING, REPO

pytest.importorskip("detectron2", reason=D2_MISSING)  # importing d2kd needs it
from benchmarking.learning_curves import ap_at, ap_curve, markdown_table, plateau, schedule_gains  # noqa: E402


def rows_of(evals, max_iter, losses_every=100):
    """metrics.json rows as Detectron2 writes them: training rows, evaluations at iteration-1."""
    rows = [{"iteration": i - 1, "total_loss": 1.0} for i in range(losses_every, max_iter + 1, losses_every)]
    rows += [{"iteration": i - 1, "bbox/AP": ap, "bbox/AP50": 2 * ap} for i, ap in evals]
    rows.append({"iteration": 0, "teacher/bbox/AP": 99.0})  # a teacher's AP is not the run's
    return sorted(rows, key=lambda r: r["iteration"])


def test_curve_points_are_iterations_trained_and_only_the_runs_ap():
    rows = rows_of([(500, 10.0), (1000, 14.0)], 1000)
    rows.append({"iteration": 999, "bbox/AP": float("nan")})
    assert ap_curve(rows) == [(500, 10.0), (1000, 14.0)]


def test_interpolation_between_evaluations():
    curve = [(1000, 10.0), (2000, 20.0), (4000, 22.0)]
    assert ap_at(curve, 1500) == pytest.approx(15.0)
    assert ap_at(curve, 3000) == pytest.approx(21.0)
    assert ap_at(curve, 500) is None
    assert ap_at(curve, 4000) == 22.0


def test_plateau_by_hand():
    # 4000 iterations; last quarter from 3000: AP(3000) = 21.0 by interpolation, final 22.0 -> +1.0
    curve = [(1000, 10.0), (2000, 20.0), (4000, 22.0)]
    p = plateau(curve, 4000)
    assert p["gain_last_window"] == pytest.approx(1.0)
    assert not p["plateaued"]  # strictly less than 1 AP is required
    assert plateau(curve, 4000, tol=1.01)["plateaued"]
    # before the first LR step: AP(2000) = 20.0 -> AP(3000) = 21.0
    assert p["gain_50_75"] == pytest.approx(1.0)
    assert p["final_AP"] == 22.0 and p["best_AP"] == 22.0
    climbing = [(1000, 5.0), (2000, 10.0), (3000, 15.0), (4000, 20.0)]
    assert plateau(climbing, 4000)["gain_last_window"] == pytest.approx(5.0)
    assert not plateau(climbing, 4000)["plateaued"]


def test_tool_writes_the_plot_and_table(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "metrics.json", "w") as f:
        for r in rows_of([(250, 5.0), (500, 9.0), (750, 9.5)], 1000):
            f.write(json.dumps(r) + "\n")
        # the final evaluation runs after training, logged at iteration max_iter (not max_iter - 1)
        f.write(json.dumps({"iteration": 1000, "bbox/AP": 9.8}) + "\n")
    spec = importlib.util.spec_from_file_location("learning_curves_tool", os.path.join(REPO, "tools", "learning_curves.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (label, curve, max_iter), = tool.main(["--run", f"student={run}", "--output", str(tmp_path / "out" / "curves")])
    assert (label, max_iter, curve[-1]) == ("student", 1000, (1000, 9.8))
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    table = (tmp_path / "out" / "curves.md").read_text()
    # last quarter: 9.5 -> 9.8 = +0.3 (plateaued); 50 -> 75 %: 9.0 -> 9.5 = +0.5
    assert "| student | 1000 | 250: 5.0, 500: 9.0, 750: 9.5, 1000: 9.8 | 9.8 | +0.5 | +0.3 |  | yes |" in table
    with pytest.raises(SystemExit):
        tool.main(["--run", str(run), "--output", str(tmp_path / "x")])  # no LABEL=


def test_a_longer_schedule_decides_the_plateau():
    # the 1000-iteration run gains +0.3 over its last quarter (within-run: plateaued), but the
    # same model trained 2000 iterations ends 6 AP higher: not plateaued at 1000; the 4000 one
    # ends 0.5 above the 2000 one: plateaued at 2000 (the gain is the 4000 run's row)
    short = [(500, 9.0), (750, 9.5), (1000, 9.8)]
    named = [("m", short, 1000), ("m", [(1000, 12.0), (2000, 15.8)], 2000),
             ("m", [(2000, 14.0), (4000, 16.3)], 4000), ("other", [(500, 1.0), (1000, 8.0)], 1000)]
    assert schedule_gains(named) == [None, (1000, pytest.approx(6.0)), (2000, pytest.approx(0.5)), None]
    rows = markdown_table(named).splitlines()[2:]
    assert rows[1].endswith("| +6.0 (vs 1000) | no |") and rows[2].endswith("| +0.5 (vs 2000) | yes |")
    assert rows[0].endswith("|  | yes |") and rows[3].endswith("|  | no |")  # one length: within-run test
