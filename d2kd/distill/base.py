"""The distiller interface: what a method needs, what it adds, and when it is on.

A distiller is an ``nn.Module`` (its adapters train with the student and live under
``distillers.<i>.`` in checkpoints, stripped at export). The meta-architecture:

1. calls ``bind(student, teacher)`` once, when the model is built, so the method can check
   shapes (an error names both) and create adapters sized from both models;
2. in every training step, calls ``before_step(iteration, model)`` (periodic work of the method's
   own, e.g. GKD's prototypes), runs the teacher parts in ``teacher_needs()`` and calls
   ``forward(student_record, teacher_record)``, which returns unweighted loss terms;
3. multiplies every term by ``weight × schedule(iteration)`` and logs it as
   ``loss_kd_<name>_<term>``. A scheduled-off term is multiplied by zero, not skipped, so every
   adapter takes part in every step and DDP needs no unused-parameter search.
"""
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn

from detectron2.utils.registry import Registry

from ..records import DetectorRecord

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

    def first_on(self, start: int, end: int) -> Optional[int]:
        """The first iteration in ``[start, end)`` at which the multiplier is > 0, or None."""
        first = max(start, self.warmup_iters)
        last = end if self.stop_after is None else min(end, self.stop_after)
        return first if first < last else None

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
        self.weight = self.check_weight("weight", weight)
        self.schedule = schedule if schedule is not None else KDSchedule()

    def check_weight(self, key: str, value) -> float:
        """``value`` of the loss multiplier argument ``key`` as a float; negative or non-finite
        values are refused here, when the model is built, instead of training on a loss that
        rewards moving away from the teacher (negative) or failing at the first step (nan)."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{type(self).__name__} ({kd_loss_key(self.name, '*')}): {key} must be a number, got {value!r}"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{type(self).__name__} ({kd_loss_key(self.name, '*')}): {key} must be finite and >= 0, got "
                f"{value}; a negative multiplier rewards the student for moving away from the "
                f"teacher (set {key}=0 to turn the term off)"
            )
        return value

    # ---- declared needs ---------------------------------------------------------------------
    def teacher_needs(self) -> Set[str]:
        """Teacher parts to run: a subset of ``{"features", "rpn", "roi", "head"}``."""
        return {"features"}

    def student_needs(self) -> Set[str]:
        """Student parts that must be recorded (the meta-architecture checks it can)."""
        return set()

    def paired_needs(self) -> Set[str]:
        """Parts whose student and teacher outputs the method compares element by element (e.g.
        ``"head"``: per-anchor class logits). The meta-architecture checks at build time that
        both sides lay them out the same way (same anchors per location, strides and cell
        anchors); none by default."""
        return set()

    def without(self, part: str) -> Optional[str]:
        """How to run this method without the teacher ``part`` (e.g. ``"use_soft_label=False"``),
        quoted when a teacher lacks it; None: the method cannot do without it."""
        return None

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student: nn.Module, teacher) -> None:
        """Check shapes and build adapters once both models exist. Raise with both shapes."""

    @classmethod
    def context_from_yacs(cls, cfg) -> Dict:
        """Keyword arguments a yacs config gives beyond ``MODEL.DISTILL.METHODS.<Name>`` (e.g.
        GKD's training set and length); the method's own keys there override them."""
        return {}

    # ---- periodic work ------------------------------------------------------------------------
    def before_step(self, iteration: int, model: nn.Module) -> None:
        """Work the method does itself between steps (e.g. GKD's prototypes): called by the
        meta-architecture at the start of every training forward, before any loss, on every
        process (collectives meet: every process runs the same forward), so the method runs as
        published under any trainer that calls ``model(batch)``. Its state belongs in buffers
        (saved with checkpoints). ``model`` is the distillation model (its
        ``inference_features`` gives backbone features of other images); nothing by default."""

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


def describe_shapes(shapes: Mapping) -> str:
    """``{p3: stride 8, 32 ch, ...}``: a model's feature shapes, for an error message."""
    return "{" + ", ".join(f"{f}: stride {s.stride}, {s.channels} ch" for f, s in shapes.items()) + "}"


def check_levels(method: str, levels: Iterable[str], student_shapes: Mapping, teacher_shapes: Mapping) -> None:
    """Every level exists on both sides with the same stride; the error names both shapes.
    (Levels of equal stride pair under the student's names: ``Teacher.align_levels``.)"""
    both = f"student {describe_shapes(student_shapes)}, teacher {describe_shapes(teacher_shapes)}"
    for level in levels:
        missing = [who for who, shapes in (("student", student_shapes), ("teacher", teacher_shapes)) if level not in shapes]
        if missing:
            raise ValueError(
                f"{method}: feature level '{level}' is missing from the {' and '.join(missing)} ({both}); "
                f"levels of equal stride pair under the student's name, so a level must have a stride "
                f"both backbones output"
            )
        s, t = student_shapes[level], teacher_shapes[level]
        if s.stride != t.stride:
            raise ValueError(
                f"{method}: level '{level}' has stride {s.stride} in the student but {t.stride} in the "
                f"teacher ({both}); imitation needs aligned maps: pick levels with equal strides"
            )


def feature_levels(method: str, in_features: Optional[Sequence[str]], student_shapes: Mapping,
                   teacher_shapes: Mapping) -> List[str]:
    """The levels a feature method compares: ``in_features`` (checked by :func:`check_levels`),
    or (None) every level both models output with the same stride, in the student's order (a
    RetinaNet teacher, P3-P7, and a Faster R-CNN student, P2-P6, share P3-P6); none is an error
    naming both models' shapes."""
    if in_features is not None:
        check_levels(method, in_features, student_shapes, teacher_shapes)
        return list(in_features)
    levels = [f for f, s in student_shapes.items() if f in teacher_shapes and teacher_shapes[f].stride == s.stride]
    if not levels:
        raise ValueError(
            f"{method}: the student and the teacher share no feature level with the same stride (student "
            f"{describe_shapes(student_shapes)}, teacher {describe_shapes(teacher_shapes)}); distil a teacher "
            f"whose backbone outputs some of the student's strides"
        )
    return levels


def channel_adapters(student_shapes: Mapping, teacher_shapes: Mapping, levels: Sequence[str]) -> nn.ModuleDict:
    """A 1×1 conv (student → teacher channels, PyTorch's default init) for each level whose
    channel counts differ: what PKD, CWD, MGD and FGD align channels with."""
    adapters = nn.ModuleDict()
    for level in levels:
        c_s, c_t = student_shapes[level].channels, teacher_shapes[level].channels
        if c_s != c_t:
            adapters[level] = nn.Conv2d(c_s, c_t, kernel_size=1)
    return adapters


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


# ---- loss keys ------------------------------------------------------------------------------
# The one place that writes and reads ``loss_kd_<name>_<term>``: the meta-architecture builds
# the keys it returns with ``kd_loss_key``; the trainer's non-finite guard finds the distiller
# behind a key with ``parse_kd_loss_key``.

#: Every KD term's key starts with this; the student's own detector losses do not.
KD_LOSS_PREFIX = "loss_kd_"


def kd_loss_key(name: str, term: str) -> str:
    """The key of term ``term`` of the distiller named ``name`` (``"*"``: all its terms, in
    messages)."""
    return f"{KD_LOSS_PREFIX}{name}_{term}"


def is_kd_loss_key(key: str) -> bool:
    return key.startswith(KD_LOSS_PREFIX)


def parse_kd_loss_key(key: str, names: Iterable[str]) -> Optional[Tuple[str, str]]:
    """``(name, term)`` such that ``kd_loss_key(name, term) == key`` for one of the distiller
    ``names``, else None. Names and terms may both hold underscores: the longest name that fits
    wins (``loss_kd_fgfi_x_p3`` is term ``p3`` of ``fgfi_x`` when both ``fgfi`` and ``fgfi_x``
    are there)."""
    if not is_kd_loss_key(key):
        return None
    rest = key[len(KD_LOSS_PREFIX):]
    fits = [n for n in names if n and rest.startswith(n + "_")]
    if not fits:
        return None
    name = max(fits, key=len)
    return name, rest[len(name) + 1:]
