#!/usr/bin/env python3
"""Train or evaluate a detector (plain or distilled) from one LazyConfig experiment file.

    python train_net.py --config-file configs/shapes/retinanet_fitnet.py [--num-gpus N] \
        [--num-machines M --machine-rank R --dist-url URL] [--resume] [--eval-only] [key=value ...]

On a machine without GPUs, ``--num-gpus N`` runs N CPU processes over gloo.
``--eval-only`` evaluates ``train.init_checkpoint`` (the student of a distillation run).
"""
import os
import sys
import traceback

import torch

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import d2kd  # noqa: F401  (registers d2kd's models, backbones, distillers and datasets)
from d2kd.engine import Trainer
from d2kd.engine.validate import ConfigError, load_config, validate_config
from d2kd.checkpoint import ReportingCheckpointer
from d2kd.export import DISTILLER_PREFIX, student_model_config


def main(args):
    try:
        result = run(args)
        # No rank tears its process group down while another still runs its last hooks
        # (evaluation, export on rank 0): PyTorch asks for every collective to have completed.
        comm.synchronize()
        return result
    finally:
        # Each worker of a multi-process run tears its process group down itself: left to the
        # interpreter's exit, gloo's threads can be destroyed while still joinable ("terminate
        # called without an active exception", SIGABRT after training finished; pytorch#190489).
        # Destroying alone did not stop it (a rank 1 still aborted once in ~10 suite runs).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # d2kd's own loggers (teacher loading, distillers, hooks) go to the same console and log.txt.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="d2kd", abbrev_name="d2kd")
    if args.eval_only:
        # The student alone: a distillation config's teacher is not needed to evaluate it.
        model = instantiate(student_model_config(cfg.model)).to(cfg.train.device)
        ReportingCheckpointer(
            model, drop_prefixes=(DISTILLER_PREFIX,), allow_pickle=cfg.train.get("allow_pickle_checkpoints", False)
        ).load(cfg.train.init_checkpoint)
        return Trainer.test(cfg, model)
    try:
        trainer = Trainer(cfg)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as e:
        # Building the model is where a config's mistakes surface (class counts, levels,
        # weights): one line on the console, the traceback in log.txt.
        _log_traceback(cfg.train.output_dir)
        raise ConfigError(f"cannot build {args.config_file}: {_one_line(e)}") from None
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]  # no repr quotes
    first = text.splitlines()[0] if text else ""
    return first if isinstance(e, ConfigError) else f"{type(e).__name__}: {first}"


def _log_traceback(output_dir: str) -> None:
    if comm.get_rank() != 0 or not output_dir:
        return
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "log.txt"), "a") as f:
            f.write(traceback.format_exc())
    except OSError:
        pass


def _child_error(e: BaseException) -> str:
    """The last line of a spawned worker's traceback (``ProcessRaisedException``)."""
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    last = lines[-1] if lines else type(e).__name__
    prefix = f"{ConfigError.__module__}.{ConfigError.__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def cli(argv=None):
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    if args.num_machines == 1 and args.dist_url == parser.get_default("dist_url"):
        # Detectron2's default port is derived from the user id alone, so a second multi-process
        # run by the same user on this machine failed with EADDRINUSE; on one machine a free port
        # is picked instead (``launch``'s "auto"). An explicit --dist-url is kept as given.
        args.dist_url = "auto"
    try:
        # Fail before any process or model is started: a bad path, override or dataset name
        # gets one line naming it, not a traceback from a spawned worker.
        validate_config(load_config(args.config_file, args.opts), args)
    except ConfigError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    # Whatever fails, the last line of stderr says what, in one line (tracebacks are above it
    # and in <output_dir>/log.txt); exit status 2 for config errors, 1 for the rest.
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ConfigError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ProcessRaisedException as e:
        # One worker raised; torch.multiprocessing has already stopped the others.
        msg = _child_error(e)
        print(f"train_net.py: error: process {e.error_index} of {args.num_gpus} failed: {msg}", file=sys.stderr)
        sys.exit(1)
    except ProcessExitedException as e:
        print(
            f"train_net.py: error: process {e.error_index} of {args.num_gpus} died "
            f"(exit code {e.exit_code}{', signal ' + str(e.signal_name) if e.signal_name else ''}); "
            f"the others were stopped",
            file=sys.stderr,
        )
        sys.exit(1)
    except Exception as e:
        print(f"train_net.py: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
