"""Stop (or, for KD terms, briefly skip) a training step whose losses are not finite.

Detectron2 notices a NaN only in the *sum* of the losses, after ``backward`` and only on the
main process, and says ``Loss became infinite or NaN at iteration=…`` with the whole dict. Here
a forward hook on the (unwrapped) model checks every loss term as soon as the model returns
them, before ``backward`` and before the optimizer step, so a NaN never reaches the weights,
and names what went wrong:

* the term (``loss_kd_fitnet_p3``), its value and the iteration;
* for KD terms ``loss_kd_<method>_<term>``, the distiller (name, class, position in
  ``model.distillers``) and the term/level — found from the model's distillers, so the
  meta-architecture needs to know nothing about any method;
* the last good checkpoint (which the trainer then leaves alone: no checkpoint, evaluation or
  export runs after the failure), and what to change.

``skip_kd_steps=N`` (``train.skip_nonfinite_kd_steps``) replaces non-finite KD terms by a zero
that keeps the distillers' adapters in the graph (DDP still sees every parameter used) for at
most N steps in the whole run (the count is saved with the trainer and survives ``--resume``),
with a warning each time; the next one fails. A non-finite detector loss is never skipped.

With several processes the per-term flags are all-reduced first, so every rank makes the same
decision (all raise, or all skip) instead of one rank waiting forever in ``backward``.
"""
import logging
import math
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..checkpoint import last_checkpoint
from ..distill.base import is_kd_loss_key, parse_kd_loss_key
from ..runtime import current_iteration, put_scalar, unwrap_model

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN or infinite; the message names it, the iteration and the fix."""


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:.4g}"


def find_distiller(model: nn.Module, key: str) -> Optional[Tuple[int, nn.Module, str]]:
    """``(index, distiller, term)`` for a KD loss key (:func:`d2kd.distill.base.kd_loss_key`),
    else None."""
    distillers = list(getattr(unwrap_model(model), "distillers", None) or [])
    names = [getattr(d, "name", None) for d in distillers]
    parsed = parse_kd_loss_key(key, names)
    if parsed is None:
        return None
    name, term = parsed
    i = names.index(name)
    return i, distillers[i], term


def describe_term(model: nn.Module, key: str, value: float) -> str:
    found = find_distiller(model, key)
    if found is not None:
        i, d, term = found
        return (
            f"{key} = {_fmt(value)} (KD method '{d.name}' [{type(d).__name__}, distillers.{i}], "
            f"term/level '{term}')"
        )
    if is_kd_loss_key(key):
        return f"{key} = {_fmt(value)} (a KD term)"
    return f"{key} = {_fmt(value)} (the student's detector loss)"


def graph_zero(model: nn.Module, key: str, like: Tensor) -> Tensor:
    """A zero in the graph of the term's distiller parameters (its adapters), else a constant."""
    found = find_distiller(model, key)
    params = [p for p in found[1].parameters() if p.requires_grad] if found else []
    if params:
        return sum(p.float().sum() for p in params) * 0.0
    return torch.zeros((), device=like.device, dtype=torch.float32)


class NonFiniteGuard:
    """Checks the loss dict a model returns in training (see the module docstring)."""

    def __init__(self, model: nn.Module, *, skip_kd_steps: int = 0, output_dir: Optional[str] = None):
        if isinstance(skip_kd_steps, bool) or not isinstance(skip_kd_steps, int) or skip_kd_steps < 0:
            raise ValueError(f"train.skip_nonfinite_kd_steps must be an integer >= 0, got {skip_kd_steps!r}")
        self.model = unwrap_model(model)
        self.skip_kd_steps = int(skip_kd_steps)
        self.output_dir = output_dir
        self.skipped = 0  # steps whose KD terms were replaced, over the whole run
        self._handle = self.model.register_forward_hook(self._hook)

    def remove(self) -> None:
        self._handle.remove()

    # ---- state (saved with the trainer) ------------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        return {"skipped": int(self.skipped)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))

    # ---- the check ---------------------------------------------------------------------------
    def _hook(self, module, inputs, output):
        if not module.training or not isinstance(output, dict) or not output:
            return None
        if not all(isinstance(v, Tensor) for v in output.values()):
            return None
        return self.check(output, current_iteration())

    def _bad_keys(self, losses: Dict[str, Tensor]) -> List[str]:
        keys = sorted(losses)
        flags = torch.stack([~torch.isfinite(losses[k].detach()).all() for k in keys]).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(flags)  # same decision on every rank
        return [k for k, f in zip(keys, flags.tolist()) if f > 0]

    def check(self, losses: Dict[str, Tensor], iteration: int) -> Dict[str, Tensor]:
        bad = self._bad_keys(losses)
        if not bad:
            return losses
        values = {}
        for k in bad:
            v = losses[k].detach().float()
            bad_v = v[~torch.isfinite(v)] if v.numel() > 1 else v.reshape(1)
            values[k] = float(bad_v[0]) if bad_v.numel() else float("nan")  # another rank's
        # detector losses first: they are the usual root cause when both are bad
        bad.sort(key=lambda k: (is_kd_loss_key(k), k))
        described = "; ".join(describe_term(self.model, k, values[k]) for k in bad)
        only_kd = all(is_kd_loss_key(k) for k in bad)
        if only_kd and self.skipped < self.skip_kd_steps:
            self.skipped += 1
            logger.warning(
                "iteration %d: non-finite %s replaced by zero (skipped KD step %d of at most %d, "
                "train.skip_nonfinite_kd_steps)",
                iteration, described, self.skipped, self.skip_kd_steps,
            )
            put_scalar("nonfinite_kd_skipped", self.skipped, smoothing_hint=False)
            out = dict(losses)
            for k in bad:
                out[k] = graph_zero(self.model, k, losses[k])
            return out
        ckpt = last_checkpoint(self.output_dir)
        where = (
            f"the last good checkpoint {ckpt} is intact (continue from it with --resume)"
            if ckpt
            else "no checkpoint had been written yet"
        )
        if only_kd:
            if self.skip_kd_steps:
                fix = (
                    f"already skipped {self.skipped} steps with non-finite KD terms, the limit "
                    f"train.skip_nonfinite_kd_steps={self.skip_kd_steps}: check the teacher weights, "
                    f"the method's settings (temperature, normaliser) or lower the KD weight"
                )
            else:
                fix = (
                    "check the teacher weights, the method's settings or lower the KD weight; or set "
                    "train.skip_nonfinite_kd_steps=N to skip up to N such steps with a warning"
                )
        else:
            fix = (
                "lower the learning rate or lengthen the warm-up, check the data for degenerate "
                "boxes, and check the init weights"
            )
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration}: {described}. Training stopped before this "
            f"step's update; {where}. Fix: {fix}"
        )
