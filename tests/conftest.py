"""Shared test setup.

Convention: a test module that needs detectron2 starts with

    import pytest
    pytest.importorskip("detectron2", reason=D2_MISSING)   # from conftest: see below

so that, where detectron2 is not importable, the module is skipped with a visible reason
instead of failing at import.

With ``D2KD_REQUIRE_DETECTRON2=1`` (what ``.ci/run`` sets when it has installed detectron2),
such a skip is an error instead: a CI run can never pass with the suite hollowed out by a
missing or broken detectron2 install.
"""
import contextlib
import functools
import importlib.util
import io
import os
import signal
import sys

import pytest
import torch

D2_MISSING = (
    "detectron2 is not importable: build it from its repository into this Python "
    "(README.md, Install); tests that need it are skipped"
)

#: Environment variable that turns a skip for a missing detectron2 into an error.
REQUIRE_D2_ENV = "D2KD_REQUIRE_DETECTRON2"


def _detectron2_required() -> bool:
    return os.environ.get(REQUIRE_D2_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr or "")


def _fail_missing_detectron2(report) -> None:
    """Turn ``report`` (a skip for a missing detectron2) into a failure, in place."""
    if report.skipped and _detectron2_required() and "detectron2" in _skip_reason(report):
        report.outcome = "failed"
        report.longrepr = (
            f"{_skip_reason(report)}\n{REQUIRE_D2_ENV} is set, so a test skipped for a missing "
            f"detectron2 is an error: install detectron2 into this Python (README.md, Install)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Module-level ``pytest.importorskip("detectron2")``."""
    outcome = yield
    _fail_missing_detectron2(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """``d2`` fixture and in-test ``importorskip``."""
    outcome = yield
    _fail_missing_detectron2(outcome.get_result())

# Two cores: keep each test process to one intra-op thread so parallel work does not thrash.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def d2():
    return pytest.importorskip("detectron2", reason=D2_MISSING)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tools' modules (the benchmark harness tools/benchmarking/, tools/visualize_*.py, ...) are
# not part of the installed d2kd: a tool script finds them with tools/ first on sys.path; the
# tests import them the same way.
TOOLS = os.path.join(REPO, "tools")
if TOOLS not in sys.path:
    sys.path.append(TOOLS)


def tool_env(**extra) -> dict:
    """``os.environ`` (plus ``extra``) for a subprocess that runs a tools/ script: the tools
    import d2kd as the installed package (``pip install -e .``) and edit no sys.path; this puts
    the clone under test first on PYTHONPATH, so the script imports this clone's d2kd whatever
    the environment installed."""
    path = os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, PYTHONPATH=path, **extra)


#: Overrides that make any shapes config a seconds-long CPU run.
TINY = [
    "dataloader.train.dataset.names=shapes_tiny_train",
    "dataloader.test.dataset.names=shapes_tiny_val",
    "dataloader.train.total_batch_size=2",
    "train.log_period=1",
    "train.eval_period=0",
    "train.device=cpu",
]

#: TINY for ``--num-gpus 2``: 2 images per process, the least the shapes RetinaNets' per-level
#: head BN accepts on p7 (1x1 at 128 px).
TINY_2PROC = [*TINY, "dataloader.train.total_batch_size=4"]


def run_train_net(args, timeout=300, env=None, script="train_net.py"):
    """``python3 train_net.py ARGS`` (or another ``script`` with its command line) from the
    repository root; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(REPO, script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_train_net_here(args, monkeypatch, env=None):
    """``python3 train_net.py ARGS`` from the repository root with this process as the command
    line's: its ``--num-gpus N`` workers are spawned interpreters as from a shell (they import
    ``train_net`` by name, hence the repository on ``sys.path``), one interpreter and detectron2
    start fewer than :func:`run_train_net`. Returns the exit code; the run's log is its log.txt."""
    monkeypatch.syspath_prepend(REPO)
    monkeypatch.chdir(REPO)
    for key, value in dict(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {})).items():
        monkeypatch.setenv(key, value)
    import train_net

    return cli_exit_code(train_net.cli, args)


@functools.lru_cache(maxsize=None)
def benchmark_tool():
    """tools/benchmark.py as a module: ``main(argv)`` is its command line."""
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(REPO, "tools", "benchmark.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def run_benchmark_here(argv, monkeypatch):
    """``python tools/benchmark.py ARGV`` with this process as the command line's (no interpreter
    and detectron2 start; its jobs are still subprocesses): the environment its own process would
    have (the jobs inherit it), and the SIGTERM handler main() installs put back. Returns what it
    printed."""
    for key, value in tool_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore").items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            benchmark_tool().main(list(argv))
    finally:
        signal.signal(signal.SIGTERM, handler)
    return out.getvalue()


def read_metrics(output_dir):
    import json

    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_random_weights(config_file, path, overrides=()):
    """Instantiate ``config_file``'s model with random init and save it for DetectionCheckpointer."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(overrides))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    torch.save({"model": model.state_dict()}, path)
    return model


@pytest.fixture(scope="module")
def train_net():
    """``train_net.py`` imported as a module, to run its command line in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net_under_test", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_loggers():
    """setup_logger caches handlers on the streams of an earlier test's capture, and stops its
    loggers from propagating (so a later test's caplog saw nothing): start afresh."""
    import logging

    from detectron2.utils import logger as d2_logger

    for name in ("detectron2", "d2kd", "fvcore", "d2"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    d2_logger.setup_logger.cache_clear()


def run_cli(train_net, capfd, args):
    """``train_net.cli(args)`` in this process: (exit code, its 'error:' lines, stdout + stderr;
    detectron2's console log goes to stdout)."""
    code = cli_exit_code(train_net.cli, args)
    cap = capfd.readouterr()
    lines = [l for l in cap.err.splitlines() if l.startswith("train_net.py: error:")]
    return code, lines, cap.out + cap.err


def cli_exit_code(cli, args):
    """``cli(args)`` in this process: its exit code (0 when it returns), with fresh loggers before
    and after (no handler left on this test's capture, and caplog working, for the next tests)."""
    fresh_loggers()
    try:
        with pytest.raises(SystemExit) as e:
            cli(list(args))
            raise SystemExit(0)
    finally:
        fresh_loggers()
    return e.value.code


#: A small model-zoo RetinaNet (ResNet-18, one conv per head tower) on the CPU, for yacs routes.
YACS_ZOO_RETINANET = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
YACS_SMALL = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CONVS", 1,
              "MODEL.DEVICE", "cpu"]


def yacs_small_retinanet():
    """The yacs config of ``YACS_ZOO_RETINANET`` with ``YACS_SMALL`` and d2kd's keys."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from d2kd.config import add_d2kd_config

    cfg = get_cfg()
    add_d2kd_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(YACS_ZOO_RETINANET))
    cfg.merge_from_list(YACS_SMALL)
    return cfg

