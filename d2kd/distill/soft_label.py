"""Soft-label distillation on class logits (Hinton et al., 2015, "Distilling the Knowledge in a
Neural Network"), with temperature T and the customary T² rescaling of the gradient, on the
detector's final classifier (``DetectorRecord.classifier_view``: rows that student and teacher
score on the same boxes).

- Softmax classifiers (R-CNN's ROI logits over K+1 classes: the student's sampled proposals,
  with the teacher's box head run on the same boxes):
  ``L = T² · mean_r KL(softmax(z_t,r/T) ‖ softmax(z_s,r/T))``.
- Sigmoid classifiers (dense heads, RetinaNet: one row per anchor): every (row, class) logit is a
  Bernoulli; the binary KL is summed over non-ignored rows and classes and divided by the number
  of foreground rows (RetinaNet's own normaliser, without its EMA):
  ``L = T² · Σ_{a,k} [BCE(z_s/T, σ(z_t/T)) − H(σ(z_t/T))] / max(1, N_fg)``.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..records import ClassifierLayout, record_layout
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
        self._classifier: Optional[ClassifierLayout] = None  # the student's classifier (bind)

    def bind(self, student, teacher) -> None:
        layout = record_layout(student)
        if layout.classifier is None:
            raise ValueError(
                f"SoftLabelKD needs ROI or dense-head logits; {type(student).__name__} records {layout.parts}"
            )
        self._classifier = layout.classifier

    def teacher_needs(self):
        return {"features", self._classifier.part} if self._classifier else {"features"}

    def student_needs(self):
        return {self._classifier.part} if self._classifier else set()

    def paired_needs(self):
        # rows that are anchors line up only if the teacher's anchors are the student's
        return self._classifier.paired_parts() if self._classifier else set()

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        s, t = student.classifier_view(), teacher.classifier_view()
        if s.probability == "softmax":  # every row (R-CNN: the sampled ROIs, none ignored)
            return {"cls": softmax_kd_loss(s.logits, t.logits, self.temperature)}
        valid = s.valid()  # sigmoid rows: non-ignored anchors, normalised by the foreground count
        num_fg = s.foreground().sum().clamp(min=1)
        loss = sigmoid_kd_loss(s.logits[valid], t.logits[valid], self.temperature).sum() / num_fg
        return {"cls": loss}
