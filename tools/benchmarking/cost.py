"""Parameters, GFLOPs and CPU latency of a detection model (``tools/model_cost.py``, the
benchmark's cost measurement).

``model_cost(model, image_size, n_runs)`` -> dict, for any Detectron2-style model that takes
``[{"image": (3, H, W) tensor, "height", "width"}]`` (RetinaNet, R-CNN, SSD, ...).

GFLOPs are fvcore's count (detectron2.utils.analysis.FlopCountAnalysis): **one multiply-add =
one flop**, ops fvcore does not know (NMS, ...) are ignored. Latency is the median wall time of
``n_runs`` single-image forwards after ``warmup`` runs, in eval mode under ``torch.no_grad()``,
on the CPU with the current ``torch.get_num_threads()``; "net" is backbone + head only, "full"
adds decoding, NMS and postprocessing (with random weights nearly every prior passes the 0.01
score threshold, so "full" is a worst case for NMS).
"""
import statistics
import time
from typing import Callable, Dict

import torch
from detectron2.utils.analysis import FlopCountAnalysis

__all__ = ["count_gflops", "model_cost"]


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
