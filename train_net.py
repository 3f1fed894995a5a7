#!/usr/bin/env python3
"""Train or evaluate a detector (plain or distilled) from one LazyConfig experiment file.

    python train_net.py --config-file configs/shapes/retinanet_fitnet.py [--num-gpus N] \
        [--num-machines M --machine-rank R --dist-url URL] [--resume] [--eval-only] [key=value ...]

On a machine without GPUs, ``--num-gpus N`` runs N CPU processes over gloo.
``--eval-only`` evaluates ``train.init_checkpoint`` (the student of a distillation run).
"""
import sys

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import d2kd  # noqa: F401  (registers d2kd's models, backbones, distillers and datasets)
from d2kd.engine import Trainer
from d2kd.engine.validate import ConfigError, load_config, validate_config
from d2kd.checkpoint import ReportingCheckpointer
from d2kd.export import DISTILLER_PREFIX, student_model_config


def main(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # d2kd's own loggers (teacher loading, distillers, hooks) go to the same console and log.txt.
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="d2kd", abbrev_name="d2kd")
    if args.eval_only:
        # The student alone: a distillation config's teacher is not needed to evaluate it.
        model = instantiate(student_model_config(cfg.model)).to(cfg.train.device)
        ReportingCheckpointer(model, drop_prefixes=(DISTILLER_PREFIX,)).load(cfg.train.init_checkpoint)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    try:
        # Fail before any process or model is started: a bad path, override or dataset name
        # gets one line naming it, not a traceback from a spawned worker.
        validate_config(load_config(args.config_file, args.opts), args)
    except ConfigError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
