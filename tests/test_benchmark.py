"""tools/benchmark.py end to end on a micro setting, its measurements, and the visualise tool.

One module-scoped benchmark run (RetinaNet + FitNet, 1 seed, 2 iterations, the tiny shapes
splits, a teacher trained for 2 iterations into a temporary folder) is shared by the tests.
"""
import json
import math
import os
import re
import types

import pytest
from conftest import D2_MISSING, REPO, benchmark_tool, run_benchmark_here

pytest.importorskip("detectron2", reason=D2_MISSING)

MICRO = [
    "--set", "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.test.dataset.names=shapes_tiny_val",
    "dataloader.train.total_batch_size=2", "train.log_period=1",
    # untrained models score below the 0.05 default: keep every detection so AP is a number
    "model.test_score_thresh=0.0",
    "--teacher-set", "train.max_iter=2",
]


def _args(tmp, *extra):
    return ["--methods", "fitnet", "--detectors", "retinanet", "--seeds", "0", "--iters", "2", "--evals", "1",
            "--jobs", "2", "--output", str(tmp / "bench"), "--teacher-root", str(tmp / "teachers"),
            "--overhead-iters", "2", "--overhead-warmup", "1", "--memory-iters", "1", "--no-cost",
            "--heartbeat", "1000", *MICRO, *extra]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The benchmark's first call, main(argv) in this process (the command line's own process is
    tests/test_tools_layout.py's); returns the folder and what it printed."""
    tmp = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        printed = run_benchmark_here(_args(tmp), mp)
    return tmp, types.SimpleNamespace(stdout=printed)


def test_writes_results_md_json_and_plots(bench):
    tmp, first = bench
    out = tmp / "bench"
    res = json.loads((out / "results.json").read_text())
    for key in ("settings", "detectors", "overhead", "memory", "runs", "targets", "teacher_checks", "plots"):
        assert key in res, key
    d = res["detectors"]["retinanet"]
    assert set(d["methods"]) == {"fitnet"}
    m = d["methods"]["fitnet"]
    assert [r["status"] for r in m["runs"]] == ["done"]
    assert math.isfinite(m["runs"][0]["eval"]["AP"])
    assert math.isfinite(d["baselines"]["default"]["runs"][0]["eval"]["AP"])
    assert math.isfinite(d["teacher"]["eval"]["AP"])
    assert d["teacher"]["train_dtype"] == "float32"  # retinanet_teacher.py: no train.amp
    # the machine line says whether this CPU computes bfloat16 natively (issue #26), however the call ran
    from d2kd.runtime import native_bfloat16

    assert ("native bfloat16 (AVX512-BF16/AMX)" if native_bfloat16("cpu") else "no native bfloat16") in \
        res["settings"]["machine"]
    # the teacher trained here is scored by its training run's final evaluation, not again
    assert "start teacher_eval:" not in first.stdout
    teacher_rows = [json.loads(line) for line in open(tmp / "teachers" / "retinanet_teacher" / "metrics.json")]
    final = [r for r in teacher_rows if "bbox/AP" in r][-1]["bbox/AP"]
    assert d["teacher"]["eval"]["AP"] == pytest.approx(final, abs=5e-5)  # the log prints 4 decimals
    # gain and the equal-wall-clock baseline, whose length is iters x the measured step ratio
    assert m["gain_equal_iters"]["mean"] == pytest.approx(
        m["runs"][0]["eval"]["AP"] - d["baselines"]["default"]["runs"][0]["eval"]["AP"])
    wc = m["wallclock"]
    assert wc["runs"][0]["iters"] == max(1, round(2 * wc["step_ratio"]))
    assert wc["runs"][0]["status"] == "done"
    # every run wrote its metrics and its folder is recorded
    assert all(r["status"] == "done" for r in res["runs"]), [r for r in res["runs"] if r["status"] != "done"]
    # the table: teacher, baseline and one row per method, with numbers
    md = (out / "results.md").read_text()
    assert re.search(r"^\| teacher \| 2 \| \d+\.\d+ \|", md, re.M), md
    assert re.search(r"^\| baseline student \| 2 \| \d+\.\d+ \|", md, re.M), md
    row = re.search(r"^\| \*\*fitnet\*\* \| 2 \| (\d+\.\d+)( ± \d+\.\d+)? \| .*$", md, re.M)
    assert row, md
    assert "wall-clock of fitnet" in md and "## Distillation overhead" in md
    assert "## Peak memory" in md and "## Targets" in md
    # PNGs open and are not empty; one evaluation per run draws no AP curve, and the report says so
    from PIL import Image

    assert sorted(res["plots"]) == ["ap_per_method.png", "loss_curves.png"]
    assert not (out / "ap_curves.png").exists()
    assert "No `ap_curves.png`: each run was evaluated once, at its end: no AP curve to draw" in md
    for name in res["plots"]:
        path = out / name
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    # progress with an ETA after each job
    assert re.search(r"\[benchmark\] \d+/\d+ jobs \| elapsed \d+:\d\d \| ETA", first.stdout)
    # the time estimate, before the first job starts, from a probe of the configs it trains
    est = re.search(r"^\[benchmark\] time estimate: about .*; this CPU (computes bfloat16 natively|has no native "
                    r"bfloat16).*: the teacher trains in float32\n\[benchmark\]   from a \d+ s probe: seconds per "
                    r"training step retinanet_teacher [0-9.]+ s \(float32\), retinanet_student [0-9.]+ s, "
                    r"retinanet_fitnet [0-9.]+ s; \d+ s to start a job", first.stdout, re.M)
    assert est and first.stdout.index(est.group(0)) < first.stdout.index("[benchmark] start "), first.stdout[:3000]
    assert res["settings"]["estimate"]["seconds"] > 0
    assert re.search(r"^Started .*, took \d+:\d\d \(estimated at the start: \d+:\d\d; this CPU ", md, re.M), md[:1000]


def test_overhead_measured_on_fixed_batches(bench):
    tmp, _ = bench
    res = json.loads((tmp / "bench" / "results.json").read_text())
    o = res["overhead"]["retinanet/fitnet"]
    assert o["n_batches"] == 2 and o["batch_size"] == 2 and o["n_iters"] == 2
    assert len(o["raw_ms"]["kd"]) == len(o["raw_ms"]["student"]) == 2
    for k in ("overhead_ratio", "step_ratio", "t_kd_ms", "t_student_ms", "t_teacher_ms"):
        assert math.isfinite(o[k]) and o[k] > 0, (k, o[k])
    assert o["overhead_ratio"] == pytest.approx(o["t_kd_ms"] / (o["t_student_ms"] + o["t_teacher_ms"]))
    # the run (2 iterations x 2 images of 32) loads every image for the first time; a longer one
    # would weigh in the faster reloads
    assert o["first_load_share"] == 1.0 and o["t_data_ms"] == pytest.approx(o["t_data_first_load_ms"])
    assert 0 < o["t_data_reload_ms"] < o["t_data_first_load_ms"]
    assert o["step_ratio"] == pytest.approx((o["t_kd_ms"] + o["t_data_ms"]) / (o["t_student_ms"] + o["t_data_ms"]))
    assert o["teacher_needs"] == ["features"] and o["backbone_only"]
    c = o["checks"]
    assert not c["teacher_forward_grad_enabled"] and not c["teacher_outputs_require_grad"]
    assert c["teacher_params_with_grad"] == 0 and c["teacher_params_requires_grad"] == 0
    assert c["teacher_parts_run"] == ["features"]  # FitNet needs no teacher head
    # retinanet_fitnet.py runs its teacher in fp32: no autocast, nothing timed twice
    assert c["teacher_autocast_dtype"] is None and c["teacher_compute_dtype"] == "torch.float32"
    assert o["t_teacher_fp32_ms"] is None
    mem = res["memory"]
    assert {k: v["has_teacher"] for k, v in mem.items()} == {
        "configs/shapes/retinanet_student.py": False, "configs/shapes/retinanet_fitnet.py": True}
    assert all(v["peak_rss_increase_mb"] > 0 for v in mem.values())


def test_parts_recorded_names_every_teacher_output():
    """The report's "parts run": RPN/ROI/dense-head records and an SSD teacher's ``ssd`` record
    (which the report once missed: Chen 2017 on SSD was listed as running the backbone only)."""
    import torch

    from benchmarking.measure import parts_recorded
    from d2kd.records import DetectorRecord

    record = DetectorRecord(images=None, features={"p3": torch.zeros(1, 2, 4, 4)})
    assert parts_recorded(record) == ["features"]
    record.ssd = object()
    assert parts_recorded(record) == ["features", "ssd"]
    record.head = object()
    assert parts_recorded(record) == ["features", "head", "ssd"]


def test_cost_of_teacher_and_student():
    from benchmarking.measure import measure_cost

    t, s = (os.path.join(REPO, "configs/shapes", f) for f in ("retinanet_teacher.py", "retinanet_fitnet.py"))
    cost = measure_cost([t, s], image_size=64, n_runs=1)
    assert cost[t]["params_m"] > 10 * cost[s]["params_m"] > 0  # the fitnet config's student, no adapters
    assert cost[t]["gflops"] > cost[s]["gflops"] > 0
    assert cost[t]["latency_ms"] > 0 and cost[s]["latency_ms"] > 0


def test_second_call_reuses_teacher_and_runs(bench, monkeypatch):
    """The same command again (the reuse is the plan's and the Scheduler's, whatever process runs
    them)."""
    tmp, _ = bench
    weights = tmp / "teachers" / "retinanet_teacher" / "model_final.pth"
    mtime = weights.stat().st_mtime
    second = run_benchmark_here(_args(tmp), monkeypatch)
    assert "reusing" in second and str(weights) in second
    assert "start teacher:" not in second and "start teacher_eval:" not in second
    assert weights.stat().st_mtime == mtime
    # finished student runs with the same command line are reused too
    assert "start kd:" not in second and "reused kd:retinanet:fitnet:s0" in second
    res = json.loads((tmp / "bench" / "results.json").read_text())
    assert res["detectors"]["retinanet"]["teacher"]["reused"] is True
    assert {r["status"] for r in res["runs"]} == {"reused"}, res["runs"]
    # a teacher replaced at the same path: what used it runs again, the plain baseline does not
    os.utime(weights, (mtime + 10, mtime + 10))
    # (and a config that now says 7 teacher iterations: the table reports the 2 the weights had;
    # no equal-wall-clock run, which reads no teacher and nothing here asserts on)
    third = run_benchmark_here(_args(tmp, "--teacher-set", "train.max_iter=7", "--no-estimate", "--no-wallclock"),
                               monkeypatch)
    res = json.loads((tmp / "bench" / "results.json").read_text())
    assert res["detectors"]["retinanet"]["teacher"]["iters"] == 2
    assert "start kd:retinanet:fitnet:s0" in third and "start overhead:retinanet:fitnet" in third
    assert "start memory:configs_shapes_retinanet_fitnet.py" in third
    assert "reused baseline:retinanet:default:s0" in third
    assert "start teacher_eval:" in third  # its cached score was for the old file
    assert all(r["status"] in ("done", "reused") for r in res["runs"]), res["runs"]


def test_visualize_predictions_from_benchmark(bench):
    tmp, _ = bench
    import visualize_predictions  # tools/ (conftest)

    paths = visualize_predictions.main(["--from-benchmark", str(tmp / "bench"), "--num", "1", "--score-thresh", "0.0",
                                        "--output", str(tmp / "vis")])
    assert len(paths) == 1
    # each student panel says which seed's run it draws
    models, _ = visualize_predictions.from_benchmark(str(tmp / "bench"), None, None)
    assert [m[0] for m in models] == ["teacher", "baseline, seed 0", "fitnet, seed 0"]
    from PIL import Image

    with Image.open(paths[0]) as im:
        # GT + teacher + baseline + fitnet panels side by side (no FGFI mask: FitNet ran): 4 x 3.2 in
        # wide, 4.3 in high with the title and the legend
        assert 2.5 * im.size[1] < im.size[0] < 3.5 * im.size[1]


def test_registry_skips_missing_configs_and_discovers_new_ones(tmp_path):
    from benchmarking import registry

    (tmp_path / "configs" / "shapes").mkdir(parents=True)
    for name in ("retinanet_student.py", "retinanet_teacher.py", "retinanet_fgfi.py", "retinanet_newkd.py",
                 "retinanet_student_500.py"):
        (tmp_path / "configs" / "shapes" / name).write_text("")
    notes = []
    exps = registry.select(["retinanet"], None, root=str(tmp_path), log=notes.append)
    keys = [e.key for e in exps]
    assert keys == ["retinanet/fgfi", "retinanet/newkd"]  # fitnet etc. do not exist here: skipped
    assert exps[1].discovered and not exps[0].discovered
    assert any("retinanet/fitnet" in n and "does not exist yet" in n for n in notes)
    # ADL's baseline is the few-labels student
    (tmp_path / "configs" / "shapes" / "retinanet_adl.py").write_text("")
    adl = registry.select(["retinanet"], ["adl"], root=str(tmp_path), log=notes.append)
    assert adl[0].baseline.endswith("retinanet_student_500.py")


def _list(capsys, *argv):
    """``tools/benchmark.py ARGV --list`` run as main(argv) in this process (it returns before
    any job or signal handler); its stdout. The command line's --list is
    tests/test_tools_layout.py's."""
    capsys.readouterr()
    assert benchmark_tool().main([*argv, "--list"]) == {}
    return capsys.readouterr().out


def test_semi_supervised_runs_wait_for_the_teachers_pseudo_labels(tmp_path, capsys):
    """SAD's config reads the teacher's pseudo-labels: the plan writes them (after the teacher,
    with tools/pseudo_label.py over the unlabeled split) before the runs and measurements that
    read them."""
    out = _list(capsys, "--detectors", "retinanet", "--methods", "adl_semi", "--seeds", "0",
                "--output", str(tmp_path / "bench"), "--teacher-root", str(tmp_path / "teachers"))
    deps = dict(re.findall(r"^  (\S+)  deps=(\[.*\])$", out, flags=re.M))
    pl = "pseudo_labels:shapes_unlabeled_retinanet_teacher.json"
    assert deps[pl] == "['teacher:retinanet_teacher']"
    for job in ("kd:retinanet:adl_semi:s0", "overhead:retinanet:adl_semi", "memory:configs_shapes_retinanet_adl_semi.py"):
        assert pl in deps[job], (job, deps[job])
    assert pl not in deps["baseline:retinanet:student_500:s0"]
    cmd = out[out.index(f"  {pl}"):].splitlines()[1]
    assert "tools/pseudo_label.py" in cmd and "--source shapes_unlabeled" in cmd
    assert f"--weights {tmp_path / 'teachers' / 'retinanet_teacher' / 'model_final.pth'}" in cmd


def _list_plan(capsys, tmp_path, *extra):
    return _list(capsys, "--detectors", "retinanet", "--methods", "lshfm_l2", "--seeds", "0", "1",
                 "--output", str(tmp_path / "bench"), "--teacher-root", str(tmp_path / "teachers"), *extra)


def test_runs_from_a_student_checkpoint_wait_for_it(tmp_path, capsys):
    """LSHFM's RetinaNet runs and their baseline start from the tower-128 student's checkpoint
    (train.init_checkpoint): the plan trains it once, with its own config, before every run and
    measurement that loads it; a checkpoint that no config makes is an error naming it."""
    init = tmp_path / "retinanet_student_tower128" / "model_final.pth"
    out = _list_plan(capsys, tmp_path, "--student-set", f"train.init_checkpoint={init}")
    deps = dict(re.findall(r"^  (\S+)  deps=(\[.*\])$", out, flags=re.M))
    assert deps["init:retinanet_student_tower128"] == "[]"
    for job in ("baseline:retinanet:student_tower128_finetune:s0", "baseline:retinanet:student_tower128_finetune:s1",
                "kd:retinanet:lshfm_l2:s0", "kd:retinanet:lshfm_l2:s1", "overhead:retinanet:lshfm_l2",
                "memory:configs_shapes_retinanet_student_tower128_finetune.py",
                "memory:configs_shapes_retinanet_lshfm_l2.py"):
        assert "init:retinanet_student_tower128" in deps[job], (job, deps[job])
    assert "init:retinanet_student_tower128" not in deps["teacher:retinanet_teacher"]
    # the teacher trains with a fixed seed (the configs' -1 draws a new one per run)
    tcmd = out[out.index("  teacher:retinanet_teacher"):].splitlines()[1]
    assert "--config-file configs/shapes/retinanet_teacher.py train.seed=0 " in tcmd
    cmd = out[out.index("  init:retinanet_student_tower128"):].splitlines()[1]
    assert "--config-file configs/shapes/retinanet_student_tower128.py train.seed=0" in cmd
    assert f"train.output_dir={init.parent}" in cmd
    # present: reused, nothing trained for it
    init.parent.mkdir()
    init.write_bytes(b"")
    out = _list_plan(capsys, tmp_path, "--student-set", f"train.init_checkpoint={init}")
    assert "init:" not in out and f"starts from {init} (reused" in out
    # missing and no config to make it: the command stops with this error (uncaught: its
    # traceback on stderr, exit status 1)
    bad = tmp_path / "nowhere" / "model_final.pth"
    with pytest.raises(FileNotFoundError) as err:
        _list_plan(capsys, tmp_path, "--student-set", f"train.init_checkpoint={bad}")
    assert f"train.init_checkpoint={bad} does not exist and no configs/shapes/nowhere.py makes it" in str(err.value)


@pytest.mark.parametrize("method", ["fgfi", "gkd"])
def test_faster_rcnn_finetune_rows_differ_from_scratch_only_in_the_start(method):
    """The fine-tune protocol (GKD's: the student starts from its trained checkpoint): the
    distilled config and its baseline are the from-scratch ones with train.init_checkpoint set to
    the plain student's final checkpoint, and the registry pairs the row with that baseline."""
    from detectron2.config import LazyConfig

    from benchmarking import registry

    def load(name):
        return LazyConfig.load(os.path.join(REPO, "configs", "shapes", f"{name}.py"))

    def plain(cfg):
        d = LazyConfig.to_py(cfg)  # the whole config as source text, nested calls included
        d = re.sub(r"train\.(init_checkpoint|output_dir) = .*\n", "", d)
        # the evaluator writes into <train.output_dir>/inference (configs/common/data/shapes.py)
        return re.sub(r'output_dir="[^"]*/inference"', 'output_dir="<train.output_dir>/inference"', d)

    start = "output/shapes/faster_rcnn_student/model_final.pth"
    for tuned, scratch in ((f"faster_rcnn_{method}_finetune", f"faster_rcnn_{method}"),
                           ("faster_rcnn_student_finetune", "faster_rcnn_student")):
        cfg, ref = load(tuned), load(scratch)
        assert cfg.train.init_checkpoint == start and ref.train.init_checkpoint == ""
        assert cfg.train.output_dir != ref.train.output_dir
        assert plain(cfg) == plain(ref), tuned
    config, baseline = registry.EXPERIMENTS[("faster_rcnn", f"{method}_finetune")]
    assert baseline.endswith("faster_rcnn_student_finetune.py") and config.endswith(f"faster_rcnn_{method}_finetune.py")
    # the checkpoint is made by the config the benchmark's init job runs
    assert os.path.isfile(os.path.join(REPO, registry.SHAPES_DIR, os.path.basename(os.path.dirname(start)) + ".py"))


def test_quick_time_target_reports_the_lower_bound_of_its_jobs():
    """The quick-mode time check states the call's total job time over its parallel slots (the
    wall-clock no schedule can beat), here the 2026-11-30 quick run's job times."""
    import argparse

    tool = benchmark_tool()
    seconds = {"teacher": 712.8, "teacher_eval": 25.5, "baseline": 446.2, "overhead": 14.5, "distilled": 687.4,
               "wallclock": 720.9, "cost": 18.0}
    runs = [{"name": k, "kind": k, "status": "done", "seconds": v} for k, v in seconds.items()]
    res = {"detectors": {}, "overhead": {}, "runs": runs}
    (check,) = tool.targets(res, argparse.Namespace(mode="quick", jobs=2), 1442.0)["checks"]
    assert check["pass"] is False  # 24:02 > 15 min
    assert check["measured"] == ("24:02 (teacher trained in this call); its jobs ran 2625 s in all, "
                                 "at least 21:53 on 2 parallel slot(s)")  # 2625.3 s / 2 = 21:52.65
    runs[0]["status"] = "reused"
    (check,) = tool.targets(res, argparse.Namespace(mode="quick", jobs=2), 700.0)["checks"]
    assert check["pass"] is False and "1 job(s) reused from an earlier call: teacher" in check["measured"]


def test_overhead_times_an_autocast_teacher_against_fp32(tmp_path):
    """With ``model.teacher.autocast_dtype`` set, the overhead measurement also times the same
    teacher calls without autocast (interleaved), and results.md states both."""
    from conftest import save_random_weights

    from benchmarking.measure import measure_overhead
    from benchmarking.results import markdown

    weights = str(tmp_path / "teacher.pth")
    save_random_weights(os.path.join(REPO, "configs/shapes/retinanet_teacher.py"), weights)
    o = measure_overhead("configs/shapes/retinanet_fitnet.py", "configs/shapes/retinanet_student.py",
                         [f"model.teacher.weights={weights}", "model.teacher.autocast_dtype=bfloat16",
                          "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.train.total_batch_size=2"],
                         n_iters=2, warmup=1)
    assert o["checks"]["teacher_compute_dtype"] == "torch.bfloat16"
    assert o["t_teacher_fp32_ms"] > 0 and o["t_teacher_ms"] > 0
    settings = {"command": "-", "machine": "-", "started": "-", "n_parallel": 1, "threads": 1, "seeds": [0]}
    md = markdown({"settings": settings, "detectors": {}, "overhead": {"retinanet/fitnet": o}})
    ratio = o["t_teacher_fp32_ms"] / o["t_teacher_ms"]
    assert (f"retinanet/fitnet: {o['t_teacher_ms']:.1f} ms in bfloat16 against {o['t_teacher_fp32_ms']:.1f} ms "
            f"for the same calls in fp32 (×{ratio:.2f})") in md


def test_training_dtype_is_read_from_the_last_run_in_the_log(tmp_path, train_net, capfd):
    """A folder trained under train.amp, then resumed in fp32: log.txt holds both runs, and the
    reported dtype is the last one's. (train_net.py's command line run in this process, as
    tests/test_distillation_core.py does; log.txt is what it writes either way.)"""
    from conftest import TINY, run_cli

    from benchmarking.results import train_dtype

    assert train_dtype(str(tmp_path)) is None
    base = ["configs/shapes/faster_rcnn_student.py", *TINY, f"train.output_dir={tmp_path}", "train.checkpointer.period=1"]
    code, _, log = run_cli(train_net, capfd, ["--config-file", *base, "train.max_iter=1", "train.amp.enabled=True"])
    assert code == 0, log[-2000:]
    assert train_dtype(str(tmp_path)) == "bfloat16"
    code, _, log = run_cli(train_net, capfd, ["--resume", "--config-file", *base, "train.max_iter=2"])
    assert code == 0, log[-2000:]
    assert "Starting training from iteration 1" in log  # resumed: the same log.txt holds both runs
    assert train_dtype(str(tmp_path)) == "float32"


def test_teacher_outputs_are_walked_once_through_a_faster_rcnn_gkd_record(tmp_path):
    """The overhead report's "teacher outputs carry no graph" check walks the teacher's record;
    GKD's record on Faster R-CNN holds a reference cycle, and the walk exceeded the recursion
    limit (the converged Faster R-CNN run's GKD measurement failed so, 2026-12-04)."""
    from conftest import TINY, save_random_weights
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    from benchmarking.measure import _tensors

    cfg = LazyConfig.apply_overrides(LazyConfig.load("configs/shapes/faster_rcnn_gkd.py"), TINY)
    save_random_weights("configs/shapes/faster_rcnn_teacher.py", str(tmp_path / "teacher.pth"))
    cfg.model.teacher.weights = str(tmp_path / "teacher.pth")
    model = instantiate(cfg.model).train()
    record, captured = model.teacher.record, {}

    def capture(*args):
        captured["out"] = out = record(*args)
        return out

    model.teacher.record = capture
    with EventStorage(1000):
        model(next(iter(instantiate(cfg.dataloader.train))))
    out = captured["out"]
    tensors = list(_tensors([out.features, out.rpn, out.roi]))
    assert len({id(t) for t in tensors}) == len(tensors) > len(out.features)
    assert not any(t.requires_grad or t.grad_fn is not None for t in tensors)
