#!/usr/bin/env python3
"""Parameters, GFLOPs and CPU latency of detection models.

    python tools/model_cost.py                       # VGG16-SSD300 vs MobileNetV2-SSDLite, 300 px
    python tools/model_cost.py --size 300 --runs 20 --threads 1 \
        --models vgg16-ssd300 vgg16-ssd300-aligned mbv2-ssdlite
    python tools/model_cost.py --students output/shapes/retinanet_fgfi/student ...   # trained students:
        # parameters and CPU ms per image of the eager student, TorchScript and ONNX Runtime
        # (exported with d2kd.deploy first where student/deploy/ lacks them; same resized images,
        # 1 thread, warm-up, median: d2kd.deploy.latency)

The model is built with random weights; what is measured and how (fvcore GFLOPs = multiply-adds,
median single-image CPU latency, "net" and "full"): :mod:`benchmarking.cost`, which also serves
the benchmark's cost measurement (``tools/benchmark.py``).
"""
import argparse
import logging
import os
from typing import Dict

import torch

from d2kd.deploy import export_deployable, latency
from d2kd.export import build_predictor
from d2kd.modeling.backbone.mobilenetv2_ssdlite import MobileNetV2SSDLite
from d2kd.modeling.backbone.ssd_vgg import VGG16SSD
from d2kd.modeling.meta_arch.ssd import PRIOR_PRESETS, SSD, SSDPriorGenerator

# tools/ is sys.path[0] when a tool runs as a script
from benchmarking.cost import count_gflops, model_cost  # noqa: F401  (count_gflops: re-exported)


def build_named_model(name: str, num_classes: int = 20):
    """Random-weight SSD models by name: vgg16-ssd300 (8732 priors), vgg16-ssd300-aligned (3000
    priors, the SSD-KD teacher layout), mbv2-ssdlite (3000 priors)."""
    if name == "vgg16-ssd300":
        bb, preset, head = VGG16SSD(layout="classic"), "classic", "conv"
    elif name == "vgg16-ssd300-aligned":
        bb, preset, head = VGG16SSD(layout="aligned"), "aligned", "conv"
    elif name == "mbv2-ssdlite":
        bb, preset, head = MobileNetV2SSDLite(), "aligned", "ssdlite"
    else:
        raise ValueError(f"unknown model {name!r}; known: {MODELS}")
    return SSD(backbone=bb, prior_generator=SSDPriorGenerator(**PRIOR_PRESETS[preset]),
               num_classes=num_classes, head_type=head)


MODELS = ["vgg16-ssd300", "vgg16-ssd300-aligned", "mbv2-ssdlite"]


def format_table(rows: Dict[str, Dict[str, float]], image_size: int, threads: int) -> str:
    head = (f"| model ({image_size}x{image_size}, CPU, {threads} thread(s)) | params (M) | GFLOPs "
            "(fvcore, MACs) | latency net (ms) | latency full (ms) |")
    lines = [head, "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params_m']:.2f} | {r['gflops']:.2f} | "
                     f"{r.get('latency_net_ms', float('nan')):.1f} | {r['latency_ms']:.1f} |")
    return "\n".join(lines)


def student_costs(student_dirs, images: int = 20, threads: int = 1) -> Dict[str, Dict[str, float]]:
    """Per exported student folder: parameters (M) and the median CPU ms per image of the eager
    model, TorchScript and ONNX Runtime (exported first where ``deploy/`` lacks them)."""
    rows = {}
    for folder in student_dirs:
        deploy_dir = os.path.join(folder, "deploy")
        paths = {fmt: os.path.join(deploy_dir, name) for fmt, name in (("torchscript", "model.ts"), ("onnx", "model.onnx"))}
        missing = [fmt for fmt, path in paths.items() if not os.path.isfile(path)]
        if missing:
            paths.update(export_deployable(folder, missing))
        model = build_predictor(os.path.join(folder, "predictor.yaml"), device="cpu").model
        ms = latency(folder, [paths["torchscript"], paths["onnx"]], images=images, threads=threads)
        rows[folder] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "eager_ms": ms["eager"],
                        "torchscript_ms": ms[paths["torchscript"]], "onnx_ms": ms[paths["onnx"]]}
    return rows


def format_student_table(rows: Dict[str, Dict[str, float]], threads: int) -> str:
    lines = [f"| student | params (M) | eager (ms) | TorchScript (ms) | ONNX Runtime (ms) |  <- CPU, {threads} thread(s), "
             "median per image", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params_m']:.2f} | {r['eager_ms']:.1f} | {r['torchscript_ms']:.1f} | "
                     f"{r['onnx_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["vgg16-ssd300", "mbv2-ssdlite"],
                    choices=MODELS)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=20)
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--students", nargs="+", metavar="DIR",
                    help="exported student folders (RUN/student): eager, TorchScript and ONNX latency instead")
    ap.add_argument("--images", type=int, default=20, help="--students: images timed per runtime")
    args = ap.parse_args(argv)
    if args.students:
        rows = student_costs(args.students, images=args.images, threads=args.threads)
        print(format_student_table(rows, args.threads))
        return rows
    torch.set_num_threads(args.threads)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    torch.manual_seed(0)
    rows = {}
    for name in args.models:
        model = build_named_model(name, args.num_classes)
        rows[name] = model_cost(model, args.size, args.runs, args.warmup, not args.no_flops)
    print(format_table(rows, args.size, args.threads))
    return rows


if __name__ == "__main__":
    main()
