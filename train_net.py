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
from d2kd.checkpoint import ReportingCheckpointer, init_checkpoint_fit
from d2kd.engine.trainer import checkpoint_fit
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
    previous_config = _read_config_yaml(cfg.train.output_dir)
    default_setup(cfg, args)  # writes <output_dir>/config.yaml
    # d2kd's own loggers (teacher loading, distillers, hooks) go to the same console and log.txt.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="d2kd", abbrev_name="d2kd")
    if args.eval_only:
        # The student alone: a distillation config's teacher is not needed to evaluate it.
        model = instantiate(student_model_config(cfg.model)).to(cfg.train.device)
        checkpointer = ReportingCheckpointer(
            model, drop_prefixes=(DISTILLER_PREFIX,), allow_pickle=cfg.train.get("allow_pickle_checkpoints", False)
        )
        checkpointer.load(cfg.train.init_checkpoint)
        _check_eval_fit(args.config_file, cfg, model, checkpointer.incompatible)
        return Trainer.test(cfg, model)
    try:
        trainer = _build_and_load(cfg, args)
    except BaseException:
        # A run refused before training leaves the folder's config.yaml as it was: that of the
        # run whose checkpoints are there (--resume with another config), not this one's.
        _restore_config_yaml(cfg.train.output_dir, previous_config)
        raise
    return trainer.train()


def _build_and_load(cfg, args):
    try:
        trainer = Trainer(cfg)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as e:
        # Building the model is where a config's mistakes surface (class counts, levels,
        # weights): one line on the console, the traceback in log.txt.
        _log_traceback(cfg.train.output_dir)
        raise ConfigError(f"cannot build {args.config_file}: {_one_line(e)}") from None
    try:
        trainer.resume_or_load(resume=args.resume)
    except ConfigError as e:
        # Weights that do not fit: say which config they were loaded for.
        raise ConfigError(f"{args.config_file}: {e}") from None
    return trainer


def _read_config_yaml(output_dir):
    """``<output_dir>/config.yaml`` (rank 0 writes it) as (bytes, stat), or None."""
    path = os.path.join(output_dir or "", "config.yaml")
    if not output_dir or comm.get_rank() != 0 or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read(), os.stat(path)


def _restore_config_yaml(output_dir, previous) -> None:
    if previous is None:
        return
    content, st = previous
    path = os.path.join(output_dir, "config.yaml")
    try:
        with open(path, "wb") as f:
            f.write(content)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


def _check_eval_fit(config_file, cfg, model, incompatible) -> None:
    """Weights of another architecture evaluated as AP nan, rc 0 (fvcore only warns): refuse
    them as training's ``train.init_checkpoint`` check does; evaluation also needs every
    parameter of the model from the file (a backbone-only file would evaluate random heads)."""
    problem = init_checkpoint_fit(model, incompatible) or checkpoint_fit(model, incompatible)
    if problem and not cfg.train.get("allow_partial_init", False):
        raise ConfigError(
            f"--eval-only: train.init_checkpoint {cfg.train.init_checkpoint} does not fit the model of "
            f"{config_file}: {problem}; pick weights trained with this config (or set "
            f"train.allow_partial_init=True to evaluate the matching part anyway)"
        )


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


def argument_parser():
    """Detectron2's parser, with ``key=value`` overrides and flags in any order: its overrides
    are an ``argparse.REMAINDER``, so ``X train.max_iter=20 --num-gpus 2`` took ``--num-gpus``
    for an override ("malformed override '--num-gpus'")."""
    parser = default_argument_parser()
    for action in parser._actions:
        if action.dest == "opts":
            action.nargs = "*"
            action.help = "key=value config overrides (e.g. train.max_iter=100), before or after the flags"
    return parser


def cli(argv=None):
    parser = argument_parser()
    args = parser.parse_intermixed_args(argv)
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
