"""Where a d2kd computation runs: the trainer's iteration and event storage, the model inside a
DDP wrapper, and whether the device computes bfloat16 natively.

Foundation layer: models, methods, the teacher and the engine all use these, so this module
imports nothing of d2kd.
"""
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from detectron2.utils.events import EventStorage, get_event_storage

__all__ = ["current_iteration", "event_storage", "put_scalar", "unwrap_model", "native_bfloat16"]


def event_storage() -> Optional[EventStorage]:
    """The trainer's ``EventStorage``, or None outside a trainer (e.g. a unit test)."""
    try:
        return get_event_storage()
    except AssertionError:  # Detectron2 asserts that a storage is open
        return None


def current_iteration(default: int = 0) -> int:
    """The trainer's iteration, or ``default`` outside a trainer (schedules then see iteration 0)."""
    storage = event_storage()
    return default if storage is None else storage.iter


def put_scalar(name: str, value: float, **kwargs) -> None:
    """``EventStorage.put_scalar`` inside a trainer; nothing outside one."""
    storage = event_storage()
    if storage is not None:
        storage.put_scalar(name, value, **kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel``/``DataParallel`` wrapper, else ``model``."""
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        return model.module
    return model


def native_bfloat16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX (elsewhere CPU bfloat16 is emulated and slower than fp32; measured in
    docs/results.md)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)  # private probes: absent in some builds -> not native
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    return False
