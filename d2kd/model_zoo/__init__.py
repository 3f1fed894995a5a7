"""Checkpoints shipped with d2kd, trained on the embedded shapes set.

The benchmark's quick mode continues its students from them (``tools/benchmark.py --quick``):
the RetinaNet teacher's 12000 iterations take over an hour on 2 CPU cores, the quick mode a
quarter of that in all. Each ``shapes/<name>.pth`` holds only ``{"model": state_dict}`` with its
floating tensors in float16 (half the size; loading into a float32 model casts them back), and
``shapes/<name>.json`` its card: the command that trained it, its iterations, training dtype and
AP, and :func:`tensor_digest` of its tensors. ``d2kd/model_zoo/README.md`` lists them with the
commands that make them again.
"""
import hashlib
import json
import os
from typing import Dict, Mapping, Optional

import torch

#: Where the shapes checkpoints live (package data).
SHAPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes")


def shapes_checkpoint(name: str) -> Optional[str]:
    """The shipped ``shapes/<name>.pth`` (e.g. ``retinanet_teacher_12000``), or None."""
    path = os.path.join(SHAPES_DIR, f"{name}.pth")
    return path if os.path.isfile(path) else None


def checkpoint_card(path: str) -> Dict:
    """The card next to a shipped checkpoint (``<name>.json``); {} for any other file."""
    card = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(card):
        return {}
    with open(card) as f:
        return json.load(f)


def tensor_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order: equal for two
    checkpoints with the same weights however ``torch.save`` laid out the file."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def half_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The floating tensors in float16, the others (BatchNorm's counters) as they are."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()) for k, v in state_dict.items()}
