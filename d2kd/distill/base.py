"""The distiller interface: what a method needs, what it adds, and when it is on.

A distiller is an ``nn.Module`` (its adapters train with the student and live under
``distillers.<i>.`` in checkpoints, stripped at export). The meta-architecture:

1. calls ``bind(student, teacher)`` once, when the model is built, so the method can check
   shapes (an error names both) and create adapters sized from both models;
2. in every training step, runs the teacher parts in ``teacher_needs()`` and calls
   ``forward(student_record, teacher_record)``, which returns unweighted loss terms;
3. multiplies every term by ``weight × schedule(iteration)`` and logs it as
   ``loss_kd_<name>_<term>``. A scheduled-off term is multiplied by zero, not skipped, so every
   adapter takes part in every step and DDP needs no unused-parameter search.
"""
from typing import Dict, Iterable, List, Optional, Set

import torch
from torch import Tensor, nn

from detectron2.utils.registry import Registry

from ..modeling.records import DetectorRecord

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = """
Registry for distillers (one per published method). A registered class is built with keyword
arguments from the config, e.g. ``L(FeatureImitation)(in_features=["p3"])`` in LazyConfig, or
``MODEL.DISTILL.METHODS.FeatureImitation.IN_FEATURES`` in yacs.
"""


class KDSchedule:
    """Multiplier of a distiller's losses as a function of the training iteration.

    0 before ``warmup_iters`` (the term is computed and multiplied by zero, as FGFI's
    reference does), then a linear ramp from 0 to 1 over ``ramp_iters``, then 1 until
    ``stop_after`` (exclusive; ``None`` = never stop).
    """

    def __init__(self, *, warmup_iters: int = 0, ramp_iters: int = 0, stop_after: Optional[int] = None):
        if warmup_iters < 0 or ramp_iters < 0:
            raise ValueError(f"KDSchedule: warmup_iters and ramp_iters must be >= 0, got {warmup_iters}, {ramp_iters}")
        if stop_after is not None and stop_after <= warmup_iters:
            raise ValueError(
                f"KDSchedule: stop_after ({stop_after}) must be after warmup_iters ({warmup_iters})"
            )
        self.warmup_iters = warmup_iters
        self.ramp_iters = ramp_iters
        self.stop_after = stop_after

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            return 0.0
        if self.stop_after is not None and iteration >= self.stop_after:
            return 0.0
        if self.ramp_iters > 0:
            return min(1.0, (iteration - self.warmup_iters + 1) / self.ramp_iters)
        return 1.0

    def __repr__(self):
        return (
            f"KDSchedule(warmup_iters={self.warmup_iters}, ramp_iters={self.ramp_iters}, "
            f"stop_after={self.stop_after})"
        )


class Distiller(nn.Module):
    """Base class of a distillation method. Subclasses set ``name`` and implement ``forward``."""

    #: Short method name used in loss keys: ``loss_kd_<name>_<term>``.
    name: str = "kd"

    def __init__(self, *, weight: float = 1.0, schedule: Optional[KDSchedule] = None):
        super().__init__()
        self.weight = float(weight)
        self.schedule = schedule if schedule is not None else KDSchedule()

    # ---- declared needs ---------------------------------------------------------------------
    def teacher_needs(self) -> Set[str]:
        """Teacher parts to run: a subset of ``{"features", "rpn", "roi", "head"}``."""
        return {"features"}

    def student_needs(self) -> Set[str]:
        """Student parts that must be recorded (the meta-architecture checks it can)."""
        return set()

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student: nn.Module, teacher) -> None:
        """Check shapes and build adapters once both models exist. Raise with both shapes."""

    def build_hooks(self, cfg) -> List:
        """Trainer hooks this method needs (e.g. a periodic state update); none by default."""
        return []

    def detector_loss_scales(self) -> Dict[str, float]:
        """``{detector loss key: factor}`` for the student's OWN losses (e.g. Chen et al.'s μ on
        the hard classification loss); none by default. The meta-architecture multiplies
        ``losses[key]`` by ``1 + schedule(iter) · (factor − 1)``: while the schedule has the
        method off, the detector losses are untouched (``weight`` is not involved)."""
        return {}

    # ---- computing --------------------------------------------------------------------------
    def forward(self, student: DetectorRecord, teacher: DetectorRecord) -> Dict[str, Tensor]:
        raise NotImplementedError

    def loss_factor(self, iteration: int) -> float:
        return self.weight * self.schedule(iteration)

    def extra_repr(self) -> str:
        return f"name={self.name}, weight={self.weight}, schedule={self.schedule}"


def check_levels(method: str, levels: Iterable[str], student_shapes: Dict, teacher_shapes: Dict) -> None:
    """Every level exists on both sides with the same stride; the error names both shapes."""
    for level in levels:
        missing = [who for who, shapes in (("student", student_shapes), ("teacher", teacher_shapes)) if level not in shapes]
        if missing:
            raise ValueError(
                f"{method}: feature level '{level}' is missing from the {' and '.join(missing)} "
                f"(student has {sorted(student_shapes)}, teacher has {sorted(teacher_shapes)})"
            )
        s, t = student_shapes[level], teacher_shapes[level]
        if s.stride != t.stride:
            raise ValueError(
                f"{method}: level '{level}' has stride {s.stride} in the student "
                f"({s.channels} ch) but {t.stride} in the teacher ({t.channels} ch); imitation "
                f"needs aligned maps: pick levels with equal strides"
            )


def check_same_spatial_size(method: str, level: str, s: Tensor, t: Tensor) -> None:
    if s.shape[-2:] != t.shape[-2:]:
        raise ValueError(
            f"{method}: level '{level}' is {tuple(s.shape)} in the student but {tuple(t.shape)} "
            f"in the teacher; student and teacher must see the same padded image size"
        )


def zero_loss(reference: Tensor) -> Tensor:
    """A zero that keeps ``reference``'s graph (so every adapter still takes part in the step)."""
    return reference.sum() * 0.0


def float32(x: Tensor) -> Tensor:
    """KD losses are computed in fp32 even under AMP (small differences, large logits)."""
    return x.float() if x.dtype != torch.float32 else x
