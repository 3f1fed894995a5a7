"""Mixed-precision training on the model's own device: ``train.amp``.

Detectron2's ``AMPTrainer`` is CUDA-only (it asserts CUDA and uses ``torch.cuda.amp``). On a CPU
that computes bfloat16 natively (AVX512-BF16 / AMX) a bfloat16 autocast forward makes a
convolution-bound training step (the shapes teachers) markedly faster and a small student's step
(dominated by RoIAlign's backward, NMS and Python) barely; the figures are in docs/results.md.
Where bfloat16 is emulated it is slower than fp32, hence "auto".

``train.amp.enabled``: ``False`` | ``True`` | ``"auto"`` (on where the device computes bfloat16
natively, see :func:`d2kd.runtime.native_bfloat16`; then in bfloat16).
``train.amp.native_bfloat16`` (d2kd only, default ``False``): ``True`` does what
``enabled="auto"`` does while ``enabled`` stays ``False``. Detectron2's own
``tools/lazyconfig_train_net.py`` reads ``train.amp.enabled`` as a bool and runs its CUDA-only
``AMPTrainer`` for any true value, ``"auto"`` included, so a config meant to run under that script
too (``configs/shapes/faster_rcnn_teacher.py``) says ``enabled=False, native_bfloat16=True``:
fp32 there, bfloat16 where native under d2kd's ``train_net.py``.
``train.amp.precision`` (optional): ``"float16"`` (Detectron2's default, CUDA only) or
``"bfloat16"``; default ``"float16"`` on CUDA, ``"bfloat16"`` on CPU.

CUDA runs Detectron2's ``AMPTrainer`` (with its grad scaler); CPU runs :class:`AutocastTrainer`:
only the forward is autocast, as PyTorch's AMP recipe prescribes (backward ops run in the dtype
their forward op used), and no grad scaler, which bfloat16 (fp32's exponent range) does not need.
"""
import contextlib
from typing import Optional

import torch
from detectron2.engine import SimpleTrainer

from ..runtime import native_bfloat16

PRECISIONS = ("float16", "bfloat16")


def resolve_amp_dtype(amp_cfg, device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype ``train.amp`` asks for on ``device_type``, or None for fp32."""
    enabled = amp_cfg.get("enabled", False)
    native = amp_cfg.get("native_bfloat16", False)
    precision = amp_cfg.get("precision", None)
    if enabled not in (True, False, "auto"):
        raise ValueError(f"train.amp.enabled must be True, False or \"auto\", got {enabled!r}")
    if native not in (True, False):
        raise ValueError(f"train.amp.native_bfloat16 must be True or False, got {native!r}")
    auto_key = "train.amp.enabled=\"auto\""
    if enabled is False and native:
        enabled, auto_key = "auto", "train.amp.native_bfloat16=True"
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"train.amp.precision must be one of {PRECISIONS} (or unset), got {precision!r}")
    if enabled is False:
        return None
    if enabled == "auto":
        if not native_bfloat16(device_type):
            return None
        if precision not in (None, "bfloat16"):
            raise ValueError(
                f"{auto_key} trains in bfloat16 where the device computes it natively, but "
                f"train.amp.precision={precision!r}; drop the precision or set "
                f"train.amp.enabled=True"
            )
        return torch.bfloat16
    if precision is None:
        precision = "float16" if device_type == "cuda" else "bfloat16"
    if device_type != "cuda" and precision == "float16":
        raise ValueError(
            f"train.amp.precision='float16' needs CUDA (the model is on {device_type}); set "
            f"train.amp.precision=bfloat16 or train.amp.enabled=False"
        )
    return getattr(torch, precision)


@contextlib.contextmanager
def autocast_forward(module: torch.nn.Module, device_type: str, dtype: torch.dtype):
    """Within the block, every call of ``module`` runs under ``torch.autocast(device_type, dtype)``
    and nothing else does (not the backward, not the optimizer step)."""
    entered = []

    def enter(mod, args):
        ctx = torch.autocast(device_type, dtype=dtype)
        ctx.__enter__()
        entered.append(ctx)

    def leave(mod, args, output):
        entered.pop().__exit__(None, None, None)

    handles = [
        module.register_forward_pre_hook(enter),
        module.register_forward_hook(leave, always_call=True),  # also when forward raises
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while entered:  # a pre-hook ran but the forward hook did not (an error in between)
            entered.pop().__exit__(None, None, None)


class AutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose model forward runs under ``torch.autocast`` (the CPU counterpart
    of Detectron2's ``AMPTrainer``, see the module docstring)."""

    def __init__(self, model, data_loader, optimizer, *, device_type: str, dtype: torch.dtype, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.device_type = device_type
        self.precision = dtype

    def run_step(self):
        with autocast_forward(self.model, self.device_type, self.precision):
            super().run_step()
