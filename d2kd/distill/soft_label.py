"""Soft-label distillation on class logits (Hinton et al., 2015, "Distilling the Knowledge in a
Neural Network"), with temperature T and the customary T² rescaling of the gradient.

- Two-stage (ROI logits, softmax over K+1 classes, background last): on the student's sampled
  proposals, with the teacher's box head run on the same boxes:
  ``L = T² · mean_r KL(softmax(z_t,r/T) ‖ softmax(z_s,r/T))``.
- One-stage sigmoid heads (RetinaNet): every (anchor, class) logit is a Bernoulli; the binary
  KL is summed over non-ignored anchors and classes and divided by the number of foreground
  anchors (RetinaNet's own normaliser, without its EMA):
  ``L = T² · Σ_{a,k} [BCE(z_s/T, σ(z_t/T)) − H(σ(z_t/T))] / max(1, N_fg)``.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DISTILLER_REGISTRY, Distiller, float32, zero_loss


def softmax_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · mean over rows of KL(softmax(t/T) ‖ softmax(s/T))``."""
    if student_logits.numel() == 0:
        return zero_loss(student_logits)
    T = temperature
    log_p_s = F.log_softmax(float32(student_logits) / T, dim=1)
    log_p_t = F.log_softmax(float32(teacher_logits) / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * T * T


def sigmoid_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Element-wise binary KL(σ(t/T) ‖ σ(s/T)) · T², unreduced."""
    T = temperature
    s, t = float32(student_logits) / T, float32(teacher_logits) / T
    q = torch.sigmoid(t)
    # BCE(s, q) − BCE(t, q) = KL(q ‖ σ(s)); both terms are stable in logit form.
    kl = F.binary_cross_entropy_with_logits(s, q, reduction="none") - F.binary_cross_entropy_with_logits(
        t, q, reduction="none"
    )
    return kl * T * T


@DISTILLER_REGISTRY.register()
class SoftLabelKD(Distiller):
    name = "softlabel"

    def __init__(self, *, temperature: float = 1.0, weight: float = 1.0, schedule=None):
        super().__init__(weight=weight, schedule=schedule)
        if temperature <= 0:
            raise ValueError(f"SoftLabelKD: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.on = None  # "roi" (two-stage) or "head" (one-stage), decided by bind()

    def bind(self, student, teacher) -> None:
        parts = getattr(student, "student_parts", ())
        self.on = "roi" if "roi" in parts else "head" if "head" in parts else None
        if self.on is None:
            raise ValueError(
                f"SoftLabelKD needs ROI or dense-head logits; {type(student).__name__} records {list(parts)}"
            )

    def teacher_needs(self):
        return {"features", self.on} if self.on else {"features"}

    def student_needs(self):
        return {self.on} if self.on else set()

    def paired_needs(self):
        return {"head"} if self.on == "head" else set()  # per-anchor logits, anchor by anchor

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        if self.on == "roi":
            return {"cls": softmax_kd_loss(student.roi.scores, teacher.roi.scores, self.temperature)}
        s = torch.cat(student.head.cls_logits, dim=1)  # (N, R, K)
        t = torch.cat(teacher.head.cls_logits, dim=1)
        labels = student.head.gt_labels  # (N, R), K = background, -1 = ignored
        valid = labels >= 0
        num_fg = ((labels >= 0) & (labels != s.shape[-1])).sum().clamp(min=1)
        loss = sigmoid_kd_loss(s[valid], t[valid], self.temperature).sum() / num_fg
        return {"cls": loss}
