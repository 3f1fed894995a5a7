"""The benchmark's statistics: seed-paired gains with a 95 % interval, and targets that PASS only
when the interval's lower bound clears them (issue #26)."""
import math

import pytest

pytest.importorskip("matplotlib")  # tools/benchmarking/results.py is imported with the harness

from benchmarking.results import T975, clears, markdown, paired_gain, t975  # noqa: E402


def _runs(aps, seeds=None):
    seeds = range(len(aps)) if seeds is None else seeds
    return [{"seed": s, "eval": {"AP": ap}} for s, ap in zip(seeds, aps)]


def _t_cdf(x: float, df: int, steps: int = 20000) -> float:
    """P(T <= x) for Student's t by Simpson's rule over its density (an independent route)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def pdf(t):
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    h = x / steps
    area = pdf(0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + area * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 30])
def test_t_quantiles_are_the_975_points_of_students_t(df):
    assert _t_cdf(t975(df), df) == pytest.approx(0.975, abs=2e-4)
    assert len(T975) == 30 and t975(31) == 1.96


def test_paired_gain_interval_by_hand():
    # differences per seed 1, 2, 3, 6: mean 3, s.d. sqrt(14/3), half-width t(0.975; 3) s.d./2
    a, b = _runs([11.0, 12.0, 13.0, 16.0]), _runs([10.0, 10.0, 10.0, 10.0])
    g = paired_gain(a, b)
    sd = math.sqrt(14 / 3)
    assert g["mean"] == pytest.approx(3.0) and g["sd"] == pytest.approx(sd) and g["n_pairs"] == 4
    assert g["low"] == pytest.approx(3.0 - 3.182 * sd / 2) and g["high"] == pytest.approx(3.0 + 3.182 * sd / 2)
    assert g["low"] == pytest.approx(-0.437, abs=1e-3)


def test_paired_gain_pairs_by_seed_not_by_position():
    a = _runs([20.0, 12.0], seeds=[1, 0])
    b = _runs([10.0, 15.0], seeds=[0, 1])  # seed 0: 12 - 10, seed 1: 20 - 15
    g = paired_gain(a, b)
    assert g["mean"] == pytest.approx(3.5) and g["n_pairs"] == 2
    sd = 1.5 * math.sqrt(2)  # differences 2 and 5
    assert g["sd"] == pytest.approx(sd)
    assert g["high"] - g["low"] == pytest.approx(2 * 12.706 * sd / math.sqrt(2))


def test_one_pair_has_no_interval_and_never_passes():
    g = paired_gain(_runs([30.0]), _runs([10.0]))
    assert g["mean"] == 20.0 and g["low"] is None and g["high"] is None
    assert not clears(g, 5.0)


def test_a_mean_above_the_target_with_a_wide_interval_does_not_pass():
    wide = paired_gain(_runs([16.0, 2.0, 14.0, 4.0]), _runs([0.0, 0.0, 0.0, 0.0]))  # mean 9, low < 5
    tight = paired_gain(_runs([6.0, 6.2, 5.9, 6.1]), _runs([0.0, 0.0, 0.0, 0.0]))
    assert wide["mean"] > 5 and wide["low"] < 5 and not clears(wide, 5)
    assert tight["low"] > 5 and clears(tight, 5)


def test_targets_check_the_lower_bound():
    from benchmark import gain_check

    c = gain_check("x", paired_gain(_runs([16.0, 2.0, 14.0, 4.0]), _runs([0.0] * 4)), 5)
    assert c["pass"] is False and "95 % interval [" in c["measured"] and "over 4 seeds" in c["measured"]
    c = gain_check("x", paired_gain(_runs([30.0]), _runs([10.0])), 5)
    assert c["pass"] is False and "no interval" in c["measured"]


def test_report_prints_the_interval():
    base = _runs([10.0, 11.0, 12.0, 13.0])
    kd = _runs([12.0, 14.0, 14.0, 16.0])  # differences 2, 3, 2, 3: mean 2.5, s.d. 0.577
    summary = {"iters": 100, "n": 4, "seeds": [0, 1, 2, 3], "train_s": {"mean": 1.0, "sd": 0.0},
               "s_per_iter": {"mean": 0.1, "sd": 0.0},
               **{m: {"mean": 20.0, "sd": 0.0} for m in ("AP", "AP50", "APs")}}  # one decimal
    results = {
        "settings": {"command": "c", "machine": "m", "started": "s", "n_parallel": 1, "threads": 1,
                     "seeds": [0, 1, 2, 3]},
        "detectors": {"faster_rcnn": {
            "teacher": {}, "baseline_config": "b.py",
            "baselines": {"default": {"summary": summary, "runs": base}},
            "methods": {"fgfi": {"summary": summary, "runs": kd, "gain_equal_iters": paired_gain(kd, base),
                                 "gap_closure": float("nan")}},
        }},
        "cost": {}, "overhead": {}, "memory": {}, "targets": {}, "teacher_checks": {},
    }
    half = 3.182 * math.sqrt(1 / 3) / 2
    assert f"+2.5 [{2.5 - half:+.1f}, {2.5 + half:+.1f}]" in markdown(results)
