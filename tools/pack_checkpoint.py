#!/usr/bin/env python3
"""Pack a trained run's ``model_final.pth`` as a checkpoint d2kd ships (d2kd/model_zoo/).

    python tools/pack_checkpoint.py output/shapes/retinanet_teacher_12000 --name retinanet_teacher_12000 \\
        --command "python3 train_net.py --config-file configs/shapes/retinanet_teacher.py ..."

Writes ``d2kd/model_zoo/shapes/<name>.pth`` (``{"model": state_dict}``, floating tensors in
float16: the optimizer, scheduler and iteration a resume needs are left out) and its card
``<name>.json``: the command, the run's iterations, training dtype and final AP (from its
``metrics.json`` and ``log.txt``), and the :func:`d2kd.model_zoo.tensor_digest` of the float32
weights and of the shipped float16 ones — the same command on the same versions gives the same
digests (``--check`` recomputes them from a run without writing anything).
"""
import argparse
import json
import math
import os
import sys

import torch

from benchmarking.results import final_eval, read_metrics, train_dtype, trained_iters
from d2kd.model_zoo import SHAPES_DIR, half_state_dict, tensor_digest


def card_of(run_dir: str, name: str, command: str) -> dict:
    state = torch.load(os.path.join(run_dir, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    half = half_state_dict(state)
    rows = read_metrics(run_dir)
    return {
        "name": name,
        "command": command,
        "iters": trained_iters(rows),
        "train_dtype": train_dtype(run_dir),
        # JSON has no NaN (APl is NaN on the shapes set: no large objects)
        "eval": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in (final_eval(rows) or {}).items()},
        "params": sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k),
        "digest_float32": tensor_digest(state),
        "digest_float16": tensor_digest(half),
        "torch": torch.__version__,
    }, half


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a train_net.py output folder holding model_final.pth and metrics.json")
    ap.add_argument("--name", required=True, help="the shipped name, e.g. retinanet_teacher_12000")
    ap.add_argument("--command", default="", help="the command that trained the run (written on the card)")
    ap.add_argument("--output-dir", default=SHAPES_DIR)
    ap.add_argument("--check", action="store_true", help="compare the run's digests with the shipped card; write nothing")
    args = ap.parse_args(argv)
    card, half = card_of(args.run_dir, args.name, args.command)
    card_path = os.path.join(args.output_dir, f"{args.name}.json")
    if args.check:
        with open(card_path) as f:
            shipped = json.load(f)
        same = all(card[k] == shipped[k] for k in ("digest_float32", "digest_float16"))
        print(f"{args.run_dir}: {'the same weights as' if same else 'NOT the weights of'} {card_path}")
        return 0 if same else 1
    os.makedirs(args.output_dir, exist_ok=True)
    torch.save({"model": half}, os.path.join(args.output_dir, f"{args.name}.pth"))
    with open(card_path, "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    print(json.dumps(card, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
