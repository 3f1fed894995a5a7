"""train_net.py end to end on the embedded shapes set: train, evaluate, resume, serve, fail well.

One short training run (module fixture) feeds several checks, to keep the suite fast.
"""
import os
import shutil

import pytest
from conftest import D2_MISSING, REPO, TINY, read_metrics, run_cli, run_train_net

pytest.importorskip("detectron2", reason=D2_MISSING)

CONFIG = "configs/shapes/retinanet_student.py"
# A low score threshold so that even a briefly trained model has detections and a real AP.
RUN = TINY + ["train.max_iter=30", "train.checkpointer.period=15", "model.test_score_thresh=0.001"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    proc = run_train_net(["--config-file", CONFIG, *RUN, f"train.output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _final_ap(out):
    rows = [r for r in read_metrics(out) if "bbox/AP" in r]
    assert rows, "no evaluation was written to metrics.json"
    return rows[-1]


def test_training_writes_metrics_checkpoints_and_events(trained):
    out, _ = trained
    rows = [r for r in read_metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in rows] == list(range(30))
    assert all("lr" in r for r in rows) and "eta_seconds" in rows[10]  # progress with ETA
    ap = _final_ap(out)
    assert ap["iteration"] == 30 and ap["bbox/AP"] == ap["bbox/AP"]  # present and not NaN
    for name in ("model_final.pth", "model_0000014.pth", "config.yaml", "last_checkpoint"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))


# RetinaNet's focal loss on one batch falls slowly from its prior-0.01 start (-6% in 20 steps).
@pytest.mark.parametrize("config, ratio", [("retinanet_student", 0.95), ("faster_rcnn_student", 0.7)])
def test_a_few_iterations_reduce_the_loss(config, ratio):
    """SGD steps from the config's optimizer on one fixed batch: the loss must fall."""
    import torch
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    import d2kd  # noqa: F401
    from d2kd.engine import Trainer

    cfg = LazyConfig.load(f"configs/shapes/{config}.py")
    cfg = LazyConfig.apply_overrides(cfg, TINY)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    losses = []
    with EventStorage(0):
        for _ in range(20):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            # RetinaNet divides by an EMA of the positive count that starts at 100 and
            # shrinks over the first steps; compare the un-normalised loss sums.
            losses.append(loss.item() * float(getattr(model, "loss_normalizer", 1.0)))
    assert losses[-1] < ratio * losses[0], losses


def test_eval_only_reproduces_the_runs_ap(trained):
    out, _ = trained
    proc = run_train_net(
        ["--config-file", CONFIG, "--eval-only", *RUN, f"train.output_dir={out}/eval",
         f"train.init_checkpoint={out}/model_final.pth"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _final_ap(out)["bbox/AP"]
    # print_csv_format logs "copypaste: Task: bbox", "copypaste: AP,AP50,...", "copypaste: <values>".
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "copypaste:" in l]
    values = [float(v) for v in lines[-1].split("copypaste:")[1].split(",")]
    assert values[0] == pytest.approx(expected, abs=1e-4)


def test_default_predictor_serves_the_trained_model(trained):
    import d2kd  # noqa: F401
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.structures import Instances

    from d2kd.export import load_predictor_config

    out, _ = trained
    cfg = load_predictor_config(os.path.join(out, "student", "predictor.yaml"))
    predictor = DefaultPredictor(cfg)
    image = read_image(DatasetCatalog.get("shapes_tiny_val")[0]["file_name"], format="BGR")
    result = predictor(image)["instances"]
    assert isinstance(result, Instances)
    assert result.image_size == image.shape[:2]
    assert len(result) > 0 and result.has("pred_boxes") and result.has("scores")


def test_resume_continues_from_the_last_checkpoint(trained, tmp_path, train_net, capfd):
    out, _ = trained
    # Simulate a run stopped right after the iteration-15 checkpoint.
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    shutil.copy(os.path.join(out, "model_0000014.pth"), resumed)
    with open(os.path.join(resumed, "last_checkpoint"), "w") as f:
        f.write("model_0000014.pth")
    code, _, log = run_cli(train_net, capfd, ["--config-file", CONFIG, "--resume", *RUN, f"train.output_dir={resumed}"])
    assert code == 0, log[-3000:]
    assert "Starting training from iteration 15" in log
    iters = [r["iteration"] for r in read_metrics(resumed) if "total_loss" in r]
    assert iters[0] == 15 and iters[-1] == 29


# Two processes (and a free port when Detectron2's default one is taken):
# test_distillation_core.py::test_distillation_with_two_cpu_processes_under_bfloat16_on_a_free_port.


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataloader.train.dataset.names=no_such_dataset"], "no_such_dataset"),
        (["train.init_checkpoint=/nonexistent/model.pth"], "weights file not found: /nonexistent/model.pth"),
        (["train.max_iter"], "malformed override 'train.max_iter'"),
        (["nosuchsection.key=1"], "nosuchsection"),
    ],
)
def test_bad_input_exits_with_one_line(overrides, message, tmp_path, train_net, capfd, monkeypatch):
    """Refused before any worker starts (``launch`` is never called), with one line. In this
    process: test_missing_config_file runs the script itself for the exit status."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: pytest.fail("a worker started for a bad config"))
    code, lines, out = run_cli(train_net, capfd, ["--config-file", CONFIG, *overrides, f"train.output_dir={tmp_path}"])
    assert code == 2 and len(lines) == 1 and message in lines[0], out[-2000:]
    assert "Traceback" not in out


def test_missing_config_file(train_net, capfd, monkeypatch):
    monkeypatch.chdir(REPO)
    code, lines, out = run_cli(train_net, capfd, ["--config-file", "configs/nope.py"])
    assert code == 2 and len(lines) == 1 and "config file not found: 'configs/nope.py'" in lines[0], out[-2000:]


def test_import_without_detectron2_says_how_to_install():
    import subprocess
    import sys

    code = "import sys; sys.modules['detectron2'] = None; import d2kd"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "d2kd needs detectron2" in proc.stderr and "--no-build-isolation" in proc.stderr


def test_gradient_clipping_bounds_the_update():
    """train.clip_grad_norm=c: the global gradient norm the optimizer steps with is at most c."""
    import torch
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    import d2kd  # noqa: F401
    from d2kd.engine import Trainer

    cfg = LazyConfig.apply_overrides(
        LazyConfig.load("configs/shapes/faster_rcnn_student.py"), TINY + ["train.clip_grad_norm=0.01"]
    )
    model = Trainer.build_model(cfg).train()
    optimizer = Trainer.build_optimizer(cfg, model)
    assert type(optimizer).__name__ == "SGDWithGradientClip"
    with EventStorage(0):
        sum(model(next(iter(instantiate(cfg.dataloader.train)))).values()).backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    before = torch.norm(torch.stack([p.grad.norm() for p in params])).item()
    optimizer.step()
    after = torch.norm(torch.stack([p.grad.norm() for p in params])).item()
    assert before > 0.01 and after == pytest.approx(0.01, rel=1e-3)


def test_demo_tool_draws_predictions_to_png(trained, tmp_path):
    import importlib.util

    import cv2

    out, _ = trained
    spec = importlib.util.spec_from_file_location("demo", os.path.join(os.path.dirname(__file__), "..", "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    written = demo.main(["--predictor", os.path.join(out, "student", "predictor.yaml"),
                         "--input", "shapes://shapes_tiny_val/000000.png", "shapes://shapes_tiny_val/000001.png",
                         "--output", str(tmp_path), "--score-thresh", "0.0"])
    assert len(written) == 2
    image = cv2.imread(written[0])
    assert image is not None and image.shape[0] == 512 and image.shape[1] == 512  # 128 px drawn at 4x
    with pytest.raises(SystemExit, match="predictor config not found"):
        demo.main(["--predictor", str(tmp_path / "nope.yaml"), "--input", "x.png"])
