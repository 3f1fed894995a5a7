#!/usr/bin/env python3
"""Parameters, GFLOPs and CPU latency of detection models.

    python tools/model_cost.py                       # VGG16-SSD300 vs MobileNetV2-SSDLite, 300 px
    python tools/model_cost.py --size 300 --runs 20 --threads 1 \
        --models vgg16-ssd300 vgg16-ssd300-aligned mbv2-ssdlite

Library use: ``model_cost(model, image_size, n_runs)`` -> dict for any Detectron2-style model
that takes ``[{"image": (3, H, W) tensor, "height", "width"}]`` (RetinaNet, R-CNN, SSD, ...).

GFLOPs are fvcore's count (detectron2.utils.analysis.FlopCountAnalysis): **one multiply-add =
one flop**, ops fvcore does not know (NMS, ...) are ignored. Latency is the median wall time of
``n_runs`` single-image forwards after ``warmup`` runs, in eval mode under ``torch.no_grad()``,
on the CPU with the current ``torch.get_num_threads()``; "net" is backbone + head only, "full"
adds decoding, NMS and postprocessing (with random weights nearly every prior passes the 0.01
score threshold, so "full" is a worst case for NMS).
"""
import argparse
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _inputs(image_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, image_size, image_size), generator=g).float()
    return [{"image": img, "height": image_size, "width": image_size}]


def _median_ms(fn: Callable, n_runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n_runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def count_gflops(model, image_size: int) -> float:
    """fvcore flops (1 multiply-add = 1 flop) of one forward on an image_size x image_size input."""
    from detectron2.utils.analysis import FlopCountAnalysis

    model.eval()
    with torch.no_grad():
        fca = FlopCountAnalysis(model, _inputs(image_size))
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        return fca.total() / 1e9


def model_cost(model, image_size: int = 300, n_runs: int = 10, warmup: int = 2,
               flops: bool = True) -> Dict[str, float]:
    """Cost of ``model`` on one ``image_size`` x ``image_size`` image.

    Returns ``{"params_m", "gflops", "latency_ms"}`` (+ ``"latency_net_ms"`` for models with
    ``extract_features``/``predict``, i.e. d2kd's SSD): parameters in millions, fvcore GFLOPs
    (multiply-adds), median CPU latency of the full forward (and of backbone + head only).
    """
    model.eval()
    x = _inputs(image_size)
    out = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    out["gflops"] = count_gflops(model, image_size) if flops else float("nan")
    with torch.no_grad():
        out["latency_ms"] = _median_ms(lambda: model(x), n_runs, warmup)
        if hasattr(model, "extract_features") and hasattr(model, "predict"):
            images = model.preprocess_image(x)
            out["latency_net_ms"] = _median_ms(
                lambda: model.predict(model.extract_features(images)), n_runs, warmup)
    return out


def build_named_model(name: str, num_classes: int = 20):
    """Random-weight SSD models by name: vgg16-ssd300 (8732 priors), vgg16-ssd300-aligned (3000
    priors, the SSD-KD teacher layout), mbv2-ssdlite (3000 priors)."""
    import d2kd  # noqa: F401
    from d2kd.modeling.backbone.mobilenetv2_ssdlite import MobileNetV2SSDLite
    from d2kd.modeling.backbone.ssd_vgg import VGG16SSD
    from d2kd.modeling.meta_arch.ssd import PRIOR_PRESETS, SSD, SSDPriorGenerator

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
    args = ap.parse_args(argv)
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
