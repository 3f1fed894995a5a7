"""The benchmark's pictures say what they show: plain bar labels, no AP "curve" of single dots,
and prediction panels that name their run's seed, with a legend (issue #27, item 7)."""
import json
import os

import pytest
from conftest import D2_MISSING

pytest.importorskip("matplotlib")


def _run(seed, ap, iters, evals=((1000, None),)):
    """A run as results.json records it: its final AP and its AP curve (``evals``: iteration, AP)."""
    its = [it for it, _ in evals]
    aps = [a if a is not None else ap for _, a in evals]
    return {"seed": seed, "job": f"j{seed}", "status": "done", "out_dir": f"/runs/s{seed}", "iters": iters,
            "eval": {"AP": ap}, "curves": {"ap_iter": its, "ap": aps, "loss_iter": [0, 1], "total_loss": [2.0, 1.0],
                                           "kd_loss": [0.0, 0.5]}}


def _results(evals=((1000, None),)):
    def summary(runs, iters):
        aps = [r["eval"]["AP"] for r in runs]
        return {"AP": {"mean": sum(aps) / len(aps), "sd": 1.0}, "iters": iters}

    base = [_run(0, 13.1, 1000, evals), _run(1, 12.9, 1000, evals)]
    kd = [_run(0, 15.6, 1000, evals), _run(1, 17.7, 1000, evals)]
    wall = [_run(0, 17.7, 1353, evals), _run(1, 23.3, 1353, evals)]
    return {"detectors": {"faster_rcnn": {
        "teacher": {"eval": {"AP": 30.0}, "iters": 1000},
        "baselines": {"default": {"config": "configs/shapes/faster_rcnn_student.py", "runs": base,
                                  "summary": summary(base, 1000)}},
        "methods": {"fgfi": {"config": "configs/shapes/faster_rcnn_fgfi.py", "runs": kd, "summary": summary(kd, 1000),
                             "wallclock": {"runs": wall, "summary": summary(wall, 1353), "step_ratio": 1.353}}},
    }}}


def test_bar_labels_say_what_each_bar_is():
    from benchmarking.plots import bars

    labels = [b[0] for b in bars(_results()["detectors"]["faster_rcnn"])]
    assert labels == ["teacher (1000 it)", "baseline (1000 it)", "baseline, fgfi's\nwall-clock (1353 it)",
                      "fgfi (1000 it)"]


def test_ap_curves_only_where_runs_were_evaluated_along_the_way(tmp_path):
    from benchmarking.plots import write_plots
    from benchmarking.results import markdown

    (tmp_path / "ap_curves.png").write_bytes(b"from an earlier call")
    res = _results()  # the quick mode: one evaluation per run, at its end
    assert write_plots(res, str(tmp_path)) == ["ap_per_method.png", "loss_curves.png"]
    assert not (tmp_path / "ap_curves.png").exists()  # not left from an earlier call either
    reason = res["plots_skipped"]["ap_curves.png"]
    assert reason.startswith("each run was evaluated once, at its end: no AP curve to draw")
    settings = {"command": "-", "machine": "-", "started": "-", "n_parallel": 2, "threads": 1, "seeds": [0, 1]}
    md = markdown({"settings": settings, "detectors": {}, "plots": ["ap_per_method.png"],
                   "plots_skipped": res["plots_skipped"]})
    assert f"No `ap_curves.png`: {reason}." in md
    # evaluated 4 times along the way (--evals 4): curves
    res = _results(evals=((250, 5.0), (500, 8.0), (750, 10.0), (1000, None)))
    assert write_plots(res, str(tmp_path)) == ["ap_per_method.png", "loss_curves.png", "ap_curves.png",
                                                "ap_curves_per_method.png"]
    assert res["plots_skipped"] == {} and (tmp_path / "ap_curves.png").stat().st_size > 1000
    assert (tmp_path / "ap_curves_per_method.png").stat().st_size > 1000


def test_a_methods_panel_draws_seed_means_of_baseline_distilled_and_wall_clock_baseline():
    from benchmarking.plots import method_curves

    res = _results(evals=((500, None), (1000, None)))
    d = res["detectors"]["faster_rcnn"]
    d["methods"]["fgfi"]["runs"][1]["curves"]["ap_iter"] = [500, 750, 1000]  # an extra evaluation in one seed
    d["methods"]["fgfi"]["runs"][1]["curves"]["ap"] = [17.7, 1.0, 17.7]
    d["methods"]["fgfi"]["baseline"] = "default"
    drawn = method_curves(d, "fgfi")
    assert [label for label, *_ in drawn] == ["baseline", "fgfi", "baseline, fgfi's wall-clock (×1.35 iterations)"]
    (_, its_b, ap_b, _), (_, its_k, ap_k, _), (_, its_w, ap_w, _) = drawn
    assert its_b == [500, 1000] and ap_b == pytest.approx([13.0, 13.0])  # (13.1 + 12.9) / 2
    assert its_k == [500, 1000] and ap_k == pytest.approx([16.65, 16.65])  # 750: not evaluated in every seed
    assert ap_w == pytest.approx([20.5, 20.5])


def _vis_tool():
    # tools/visualize_predictions.py imports its sibling tools/visualize_fgfi_mask.py, hence d2kd
    pytest.importorskip("detectron2", reason=D2_MISSING)
    import visualize_predictions  # tools/ (conftest)

    return visualize_predictions


def test_prediction_panels_name_the_seed_they_draw(tmp_path):
    vis = _vis_tool()
    res = _results()
    res["detectors"]["faster_rcnn"]["teacher"].update(config="configs/shapes/faster_rcnn_teacher.py", weights="/t.pth")
    res["detectors"]["faster_rcnn"]["methods"]["fgfi"]["runs"][0]["status"] = "failed"
    (tmp_path / "results.json").write_text(json.dumps(res))
    names = [m[0] for m in vis.from_benchmark(str(tmp_path), None, None)[0]]
    assert names == ["teacher", "baseline, seed 0", "fgfi, seed 1"]  # fgfi's seed 0 failed: its first run is 1
    models = vis.from_benchmark(str(tmp_path), 1, None)[0]
    assert [m[0] for m in models] == ["teacher", "baseline, seed 1", "fgfi, seed 1"]
    assert models[1][2] == os.path.join("/runs/s1", "model_final.pth")


def test_legend_colours_are_the_boxes_colours():
    vis = _vis_tool()
    meta = {"thing_classes": ["circle", "square"], "thing_colors": [(230, 25, 75), (60, 180, 75)]}

    class Meta(dict):
        def get(self, key, default=None):
            return dict.get(self, key, default)

    meta = Meta(meta)
    assert vis.class_color(meta, 1) == (60 / 255, 180 / 255, 75 / 255)
    entries = vis.legend_entries(meta, [1, 0, 1], with_mask=False)
    assert entries == [("circle", vis.class_color(meta, 0)), ("square", vis.class_color(meta, 1))]
    labels = [label for label, _ in vis.legend_entries(meta, [0], with_mask=True)]
    assert labels == ["circle", "FGFI: imitated cells", "FGFI panels: ground-truth box"]
