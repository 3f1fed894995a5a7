"""d2kd's configs under Detectron2's own LazyConfig script, ``tools/lazyconfig_train_net.py``
(issue 21, item 14): a shapes config trains and then evaluates (the shapes ``COCOEvaluator``
has an ``output_dir`` by default), and ``faster_rcnn_teacher.py`` does not send the script into
its CUDA-only ``AMPTrainer`` on a CPU.

Where the script is depends on how detectron2 was installed. The test runs, in this order:
- the file named by ``D2KD_STOCK_LAZY_TRAIN_NET`` (e.g. detectron2's own, from its repository:
  ``git show HEAD:tools/lazyconfig_train_net.py``);
- ``tools/lazyconfig_train_net.py`` next to the imported ``detectron2`` package: a source
  checkout (``pip install -e detectron2``), or a wheel built from the repository, which installs
  ``tools/`` into site-packages beside ``detectron2/`` (this project's environment);
- otherwise ``STOCK_EQUIVALENT`` below: not detectron2's file (it is not copied into this
  repository), but the same public calls in the same order — what the stock script does with a
  config: ``instantiate`` each section, ``AMPTrainer`` if ``train.amp.enabled`` is true else
  ``SimpleTrainer``, ``create_ddp_model``, ``DetectionCheckpointer``, Detectron2's hooks, and
  ``inference_on_dataset`` with ``instantiate(cfg.dataloader.evaluator)`` as written (no
  ``output_dir`` filled in, unlike d2kd's trainer).
Each test's output says which one ran.
"""
import os
import subprocess
import sys

import pytest
from conftest import D2_MISSING, REPO, TINY, read_metrics, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

import detectron2  # noqa: E402

STOCK_ENV = "D2KD_STOCK_LAZY_TRAIN_NET"

#: The stock script's construction, call for call (detectron2 @ 02b5c4e, 2026-06), without its
#: docstrings and logging of the model.
STOCK_EQUIVALENT = '''\
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (AMPTrainer, SimpleTrainer, default_argument_parser, default_setup,
                               default_writers, hooks, launch)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm


def do_test(cfg, model):
    if "evaluator" in cfg.dataloader:
        ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
        print_csv_format(ret)
        return ret


def do_train(args, cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        print(do_test(cfg, model))
    else:
        do_train(args, cfg)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
'''


def _checkout_script():
    root = os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__)))
    path = os.path.join(root, "tools", "lazyconfig_train_net.py")
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="module")
def stock_script(tmp_path_factory):
    """``(path, which)`` of the script to run (see the module docstring)."""
    env_path = os.environ.get(STOCK_ENV)
    if env_path:
        assert os.path.isfile(env_path), f"{STOCK_ENV}={env_path} is not a file"
        return env_path, f"{STOCK_ENV}={env_path}"
    path = _checkout_script()
    if path:
        return path, f"detectron2's own {path}"
    path = tmp_path_factory.mktemp("stock") / "lazyconfig_train_net.py"
    path.write_text(STOCK_EQUIVALENT)
    return str(path), f"its equivalent (no {STOCK_ENV}, no detectron2 source checkout)"


def _run_stock(script, config, overrides, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    # From a folder outside the checkout, as a user runs detectron2's script: only the config
    # names d2kd (``import d2kd``); relative paths in the configs are relative to the checkout.
    return subprocess.run(
        [sys.executable, script, "--config-file", os.path.join(REPO, config), *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
    )


def _tiny(out_dir):
    return [*TINY, "train.max_iter=2", "train.eval_period=2", "train.checkpointer.period=100",
            f"train.output_dir={out_dir}"]


def test_teacher_config_trains_and_evaluates_on_cpu(stock_script, tmp_path):
    """faster_rcnn_teacher.py: SimpleTrainer (its train.amp.enabled is False; "auto" sent the
    stock script into AMPTrainer, which asserts CUDA), 2 steps, then the COCO evaluation writes
    into <output_dir>/inference (it raised "output_dir must be provided to COCOEvaluator")."""
    script, which = stock_script
    out = tmp_path / "out"
    proc = _run_stock(script, "configs/shapes/faster_rcnn_teacher.py", _tiny(out), cwd=REPO)
    print(f"ran {which}")
    assert proc.returncode == 0, f"{which}:\n{proc.stderr[-4000:]}"
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 0" in log and "copypaste: Task: bbox" in log
    assert [r["iteration"] for r in read_metrics(str(out)) if "total_loss" in r] == [0, 1]
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / "shapes_tiny_val_coco_format.json").is_file()
    assert (out / "inference" / "coco_instances_results.json").is_file()


def test_distillation_config_trains_with_its_kd_loss(stock_script, tmp_path):
    """A KD config (FGFI on Faster R-CNN) under the stock script, run from another folder: the
    teacher is built and loaded at instantiate, the KD loss is in the metrics, evaluation runs."""
    script, which = stock_script
    teacher = tmp_path / "teacher.pth"
    save_random_weights(os.path.join(REPO, "configs/shapes/faster_rcnn_teacher.py"), str(teacher))
    out = tmp_path / "out"
    overrides = [*_tiny(out), f"model.teacher.weights={teacher}",
                 f"model.teacher.config_file={os.path.join(REPO, 'configs/shapes/faster_rcnn_teacher.py')}",
                 "model.distillers.0.schedule.warmup_iters=0"]
    proc = _run_stock(script, "configs/shapes/faster_rcnn_fgfi.py", overrides, cwd=str(tmp_path))
    print(f"ran {which}")
    assert proc.returncode == 0, f"{which}:\n{proc.stderr[-4000:]}"
    rows = [r for r in read_metrics(str(out)) if "total_loss" in r]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["loss_kd_fgfi_imitation"] > 0 for r in rows), rows
    assert "copypaste: Task: bbox" in proc.stdout + proc.stderr
    assert (out / "inference" / "coco_instances_results.json").is_file()
