"""Adaptive Distillation Loss (ADL) of Tang et al., 2019, "Learning Efficient Detector with
Semi-supervised Adaptive Distillation" (docs/methods.md §5), on per-class sigmoid logits of a dense
head (RetinaNet: every anchor of every FPN level, every class).

Notation (§5.1), element-wise over (image, anchor, class): ``x`` student logit, ``p = σ(x)``,
``q = σ(z_T)`` teacher probability, ``H(q) = −q log q − (1−q) log(1−q)``,
``CE(q,p) = −q log p − (1−q) log(1−p)``, ``KL = CE − H(q)``.

Reference op (``sigmoid_adaptive_distillation_loss_op.cu``; the d2kd default, ``form="reference"``)::

    D   = CE(q,p) + β_c·(q log q + (1−q) log(1−q))            (= KL + (1−β_c)·H(q))
    ADL = −(1 − e^{−D})^γ · [α·q·log p + (1−α)(1−q)·log(1−p)] / N_p · T²

Paper form (``form="paper"``): ``ADL = (1 − e^{−(KL + β·H(q))})^γ · KL / N_p · T²`` with
``β = 1 − β_c``: the same adaptive weight (same ``D``), multiplied by ``KL`` instead of the
α-weighted cross-entropy.

* The weight ``(1 − e^{−D})^γ`` is **not** detached: the reference CUDA backward differentiates
  through it (§5.1), and so does autograd here.
* Elements of ignored anchors (anchor label −1) contribute zero (§5.1). Nothing else is masked:
  background anchors and every class of foreground anchors are distilled.
* ``N_p`` (§5.1): ``normalizer="adaptive"`` (reference ``ADAPTIVE_NORMALIZER=True``, default):
  ``max(1, Σ q^θ)`` with θ = 1.8 over ALL elements of the batch (every anchor — ignored ones too,
  as the reference ``PowSum`` runs on the whole teacher probability blobs —, class, level and
  image of the per-process batch; no all-reduce, as the reference is per GPU);
  ``normalizer="num_fg"``: ``max(1, number of foreground anchors)``. Detectron2's EMA
  normaliser of the focal loss is unrelated (§5.5).
* The loss is a plain sum over all (anchor, class) elements divided only by ``N_p`` (§5.5).
* ``T`` only multiplies the loss by ``T²`` (reference: ``scale = T·T``; the teacher
  probabilities are the plain sigmoid of its logits, no temperature inside).
* Deviation (§5.5): the reference evaluates ``q·log q`` unclamped, which is NaN for q exactly 0
  or 1 in fp32 (even with β_c = 0, as 0·NaN = NaN). d2kd clamps q to ``[1e-6, 1 − 1e-6]`` in the
  loss (not in ``N_p``). ``log p`` and ``log(1−p)`` are computed as ``logsigmoid(±x)`` (exact),
  where the reference clamps ``p`` at ``FLT_MIN``; this only differs for |x| > ~87.
"""
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..records import ClassifierLayout, record_layout
from .base import DISTILLER_REGISTRY, Distiller, float32, zero_loss

__all__ = ["ADL", "adl_elementwise", "adaptive_normalizer", "adaptive_distillation_loss"]

#: Clamp of the teacher probability (documented deviation, docs/methods.md §5.5).
Q_EPS = 1e-6


def adl_elementwise(
    student_logits: Tensor,
    teacher_probs: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float = 0.5,
    beta_code: float = 0.0,
    form: str = "reference",
    eps: float = Q_EPS,
) -> Tensor:
    """Unnormalised, unmasked ADL per element (same shape as the inputs), §5.1.

    ``teacher_probs`` is clamped to ``[eps, 1 − eps]`` here (§5.5 deviation).
    """
    if form not in ("reference", "paper"):
        raise ValueError(f"ADL: form must be 'reference' or 'paper', got {form!r}")
    x = student_logits
    q = teacher_probs.clamp(eps, 1.0 - eps)
    log_p = F.logsigmoid(x)  # log σ(x)
    log_1mp = F.logsigmoid(-x)  # log(1 − σ(x))
    ce = -(q * log_p + (1.0 - q) * log_1mp)  # CE(q, p)
    neg_entropy = q * torch.log(q) + (1.0 - q) * torch.log1p(-q)  # q log q + (1−q) log(1−q) = −H(q)
    d = ce + beta_code * neg_entropy  # D = CE + β_c(q log q + (1−q) log(1−q)) = KL + (1−β_c)H
    # 1 − e^{−D}, via expm1 for precision at small D; D ≥ 0 mathematically for β_c ≤ 1 (CE ≥ KL ≥ 0),
    # the clamp only removes rounding below 0 (a negative base of a fractional power is NaN).
    adaptive = (-torch.expm1(-d)).clamp(min=0.0)
    weight = adaptive.pow(gamma)  # NOT detached (the reference backward differentiates through it)
    if form == "reference":
        term = -(alpha * q * log_p + (1.0 - alpha) * (1.0 - q) * log_1mp)
    else:  # paper: (1 − e^{−(KL + βH)})^γ · KL
        term = ce + neg_entropy  # KL = CE − H(q)
    return weight * term


def _upcast(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 (KD losses in fp32 under AMP); fp64 stays fp64 (gradcheck)."""
    return x if x.dtype == torch.float64 else float32(x)


def adaptive_normalizer(teacher_probs: Tensor, theta: float = 1.8) -> Tensor:
    """``N_p = max(1, Σ q^θ)`` over every element given (reference ``PowSum`` + ``max(·, 1)``)."""
    return _upcast(teacher_probs).pow(theta).sum().clamp(min=1.0)


def adaptive_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    valid: Optional[Tensor] = None,
    *,
    gamma: float = 2.0,
    alpha: float = 0.5,
    beta_code: float = 0.0,
    theta: float = 1.8,
    normalizer: Union[str, float, Tensor] = "adaptive",
    num_fg: Optional[Union[int, Tensor]] = None,
    temperature: float = 1.0,
    form: str = "reference",
    eps: float = Q_EPS,
) -> Tensor:
    """ADL summed over elements and normalised (§5.1): tensors in, scalar out.

    Works on any dense sigmoid head (RetinaNet, SSD with sigmoid scores, FCOS ...).

    Args:
        student_logits, teacher_logits: same shape, e.g. (N, R, K) sigmoid logits of all anchors.
        valid: boolean mask broadcastable to the logits, e.g. (N, R, 1) = anchor label != −1;
            False elements contribute zero to the sum (but still count in the adaptive ``N_p``).
            ``None``: every element counts.
        normalizer: ``"adaptive"`` (``max(1, Σ q^θ)`` over all elements), ``"num_fg"``
            (``max(1, num_fg)``; ``num_fg`` required) or a number/tensor used as given.
        temperature: the loss is multiplied by ``T²`` (reference behaviour; no T inside).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"ADL: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    x = _upcast(student_logits)
    q = torch.sigmoid(_upcast(teacher_logits).detach()).to(x.dtype)
    if isinstance(normalizer, str):
        if normalizer == "adaptive":
            n_p = adaptive_normalizer(q, theta)
        elif normalizer == "num_fg":
            if num_fg is None:
                raise ValueError("ADL: normalizer='num_fg' needs num_fg")
            n_p = torch.as_tensor(num_fg, dtype=x.dtype, device=x.device).clamp(min=1.0)
        else:
            raise ValueError(f"ADL: normalizer must be 'adaptive', 'num_fg' or a number, got {normalizer!r}")
    else:
        n_p = torch.as_tensor(normalizer, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return zero_loss(student_logits)
    loss = adl_elementwise(x, q, gamma=gamma, alpha=alpha, beta_code=beta_code, form=form, eps=eps)
    if valid is not None:
        # where(), not multiplication: an ignored element never propagates a NaN/inf.
        loss = torch.where(valid.expand_as(loss), loss, torch.zeros_like(loss))
    return loss.sum() / n_p * (temperature * temperature)


@DISTILLER_REGISTRY.register()
class ADL(Distiller):
    """ADL on a dense sigmoid classifier (RetinaNet's class logits over all head levels, §5.1),
    read as one row per anchor of every image (``DetectorRecord.classifier_view``).

    Defaults are the released config (§5.1, §7): γ = 2, α = 0.5, β_c = 0, θ = 1.8, adaptive
    normaliser, T = 1, weight 1. Loss key: ``loss_kd_adl_cls``.
    """

    name = "adl"

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float = 0.5,
        beta_code: float = 0.0,
        theta: float = 1.8,
        normalizer: str = "adaptive",
        temperature: float = 1.0,
        form: str = "reference",
        weight: float = 1.0,
        schedule=None,
    ):
        super().__init__(weight=weight, schedule=schedule)
        if normalizer not in ("adaptive", "num_fg"):
            raise ValueError(f"ADL: normalizer must be 'adaptive' or 'num_fg', got {normalizer!r}")
        if form not in ("reference", "paper"):
            raise ValueError(f"ADL: form must be 'reference' or 'paper', got {form!r}")
        if temperature <= 0 or gamma < 0 or theta <= 0:
            raise ValueError(f"ADL: need temperature > 0, gamma >= 0, theta > 0 "
                             f"(got {temperature}, {gamma}, {theta})")
        self.gamma, self.alpha, self.beta_code, self.theta = float(gamma), float(alpha), float(beta_code), float(theta)
        self.normalizer, self.temperature, self.form = normalizer, float(temperature), form
        self._classifier: Optional[ClassifierLayout] = None  # the student's dense sigmoid classifier (bind)

    def teacher_needs(self):
        return {"features", self._classifier.part} if self._classifier else {"features"}

    def student_needs(self):
        return {self._classifier.part} if self._classifier else set()

    def paired_needs(self):
        # the teacher's anchors must be the student's (checked at build time)
        return self._classifier.paired_parts() if self._classifier else set()

    def bind(self, student, teacher) -> None:
        layout = record_layout(student)
        c = layout.classifier
        if c is None or c.probability != "sigmoid" or c.pairing != "anchors":
            what = (
                "" if c is None else f" (its classifier '{c.part}' is {c.probability} on {c.pairing.replace('_', ' ')})"
            )
            raise ValueError(
                f"ADL needs a dense sigmoid head (RetinaNet); {type(student).__name__} records {layout.parts}{what}"
            )
        self._classifier = c

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        s, t = student.classifier_view(), teacher.classifier_view()  # one row per anchor of every image
        if s.logits.shape != t.logits.shape:
            raise ValueError(
                f"ADL: student logits {tuple(s.logits.shape)} vs teacher logits {tuple(t.logits.shape)}; "
                f"the two heads must have the same anchors and classes"
            )
        valid = s.valid().unsqueeze(-1)  # ignored anchors (label −1) contribute zero
        num_fg = s.foreground().sum()
        loss = adaptive_distillation_loss(
            s.logits, t.logits, valid,
            gamma=self.gamma, alpha=self.alpha, beta_code=self.beta_code, theta=self.theta,
            normalizer=self.normalizer, num_fg=num_fg, temperature=self.temperature, form=self.form,
        )
        return {"cls": loss}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, gamma={self.gamma}, alpha={self.alpha}, beta_code={self.beta_code}, "
            f"theta={self.theta}, normalizer={self.normalizer}, T={self.temperature}, form={self.form}"
        )
