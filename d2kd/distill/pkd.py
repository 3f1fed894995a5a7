"""PKD: feature imitation through the Pearson correlation coefficient (Cao et al., NeurIPS 2022,
"PKD: General Distillation Framework for Object Detectors via Pearson Correlation Coefficient",
docs/methods.md §9).

References: open-mmlab/mmrazor ``mmrazor/models/losses/pkd_loss.py`` (``PKDLoss``) and its released
detection configs ``configs/distill/mmdet/pkd/*.py``; PaddleDetection
``ppdet/slim/distill_loss.py`` (``PKDFeatureLoss`` + ``feature_norm``, the same computation).

Per feature level ℓ (paper Sec. 3: imitating standardised features is imitating with the Pearson
correlation coefficient r, since ½·mean((ŝ − t̂)²) = 1 − r for two standardised vectors):

    ŝ_c = (s_c − μ_c) / (σ_c + ε)       per channel c over all N·H·W values of the batch
    t̂_c = (t_c − μ_c) / (σ_c + ε)       (μ, σ of the teacher's channel c)
    L_ℓ = ½ · mean_{n,c,h,w} (ŝ − t̂)²                         (``F.mse_loss(ŝ, t̂) / 2``)

with σ the unbiased standard deviation (``Tensor.std``) and ε = 1e-6, as the reference's ``norm``.
One term per level (``loss_kd_pkd_<level>``), each multiplied by ``weight`` (mmrazor's
``loss_weight``: 6 for Faster R-CNN on P2-P5, 10 for RetinaNet on P3-P6, its released configs).

Spatial size. Where a level's maps differ in size, the reference resizes the student to the
teacher's size (``resize_stu=True``, bilinear) or the teacher to the student's: ``resize`` here,
``"student"`` by default; ``None`` refuses different sizes. The reference tests only the heights
(``size_S[0] != size_T[0]``); d2kd compares height and width. Strides must agree at build time
(a level with different strides is refused, naming both shapes): the resize only absorbs the
padding difference of two models that see the same image.

Channels. Neither reference adapts channels (mmrazor's and PaddleDetection's PKD losses need equal
shapes; PaddleDetection's ``PKDFeatureLoss`` takes ``student_channels``/``teacher_channels`` and
builds nothing). Where a level's channels differ d2kd puts a 1×1 conv (student → teacher
channels, PyTorch's default init) before the standardisation, as PaddleDetection's
``CWDFeatureLoss``/``MGDFeatureLoss`` ``align`` does; it trains with the student and is stripped at
export (``self.adapters``). Equal channels: no adapter, the reference's computation exactly.

A constant channel (σ = 0) standardises to 0, as the reference: ε keeps the division finite and
``Tensor.std``'s backward is 0 where σ = 0 (tests/test_pkd.py checks value and gradient). A
channel of a single value (N·H·W = 1, e.g. one image's 1×1 P7) has no unbiased σ (the reference
gives NaN): d2kd takes σ = 0 there, so it standardises to 0 and the term is 0.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..records import record_layout
from .base import (
    DISTILLER_REGISTRY,
    Distiller,
    KDSchedule,
    channel_adapters,
    check_same_spatial_size,
    feature_levels,
    float32,
)

__all__ = ["PKD", "pkd_standardize", "pkd_loss"]

#: PKD's ε in ``(x − μ) / (σ + ε)`` (mmrazor ``PKDLoss.norm``, PaddleDetection ``feature_norm``).
PKD_EPS = 1e-6
RESIZE = ("student", "teacher", None)


# ---- levels (shared by the feature methods that compare maps level by level) ------------------
# ---- the loss -------------------------------------------------------------------------------
def pkd_standardize(x: Tensor, eps: float = PKD_EPS) -> Tensor:
    """(N, C, H, W) → each channel standardised over its N·H·W values: ``(x − μ_c) / (σ_c + ε)``,
    σ unbiased (mmrazor ``PKDLoss.norm``)."""
    if x.dim() != 4:
        raise ValueError(f"PKD: expected an (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    flat = x.transpose(0, 1).reshape(c, -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=1 if flat.shape[1] > 1 else 0)
    return ((flat - mean) / (std + eps)).reshape(c, n, h, w).transpose(0, 1)


def pkd_loss(student: Tensor, teacher: Tensor, *, resize: Optional[str] = "student", eps: float = PKD_EPS) -> Tensor:
    """½ · MSE of the standardised maps (mmrazor ``PKDLoss.forward`` for one level, loss_weight 1).
    Maps of different spatial sizes: the student (``resize="student"``) or the teacher is resized
    bilinearly to the other's size; ``None``: an error."""
    if student.shape[-2:] != teacher.shape[-2:]:
        if resize == "student":
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear")
        elif resize == "teacher":
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear")
    if student.shape != teacher.shape:
        raise ValueError(f"PKD: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ")
    return F.mse_loss(pkd_standardize(student, eps), pkd_standardize(teacher, eps)) / 2


@DISTILLER_REGISTRY.register()
class PKD(Distiller):
    name = "pkd"

    def __init__(
        self,
        *,
        in_features: Optional[Sequence[str]] = None,
        resize: Optional[str] = "student",
        weight: float = 1.0,
        schedule: Optional[KDSchedule] = None,
    ):
        """
        Args:
            in_features: levels to distil; None = every level both models output with the same
                stride. The released configs: P2-P5 for Faster R-CNN, P3-P6 for RetinaNet (mmdet's
                first four FPN outputs).
            resize: where a level's maps differ in size, resize the ``"student"`` (the
                reference's default) or the ``"teacher"`` map bilinearly; None: refuse.
            weight: multiplier of every level's term (mmrazor's ``loss_weight``: 6 Faster R-CNN,
                10 RetinaNet; ``PKDLoss``'s own default is 1).
        """
        super().__init__(weight=weight, schedule=schedule)
        if resize not in RESIZE:
            raise ValueError(f"PKD: resize must be one of {RESIZE}, got {resize!r}")
        if in_features is not None and not list(in_features):
            raise ValueError("PKD: in_features must name at least one level (or be None: the shared levels)")
        self.in_features = list(in_features) if in_features is not None else None
        self.resize = resize
        self.adapters = nn.ModuleDict()  # only the levels whose channels differ

    def bind(self, student, teacher) -> None:
        s_shapes, t_shapes = record_layout(student).feature_shapes, teacher.output_shape()
        self.in_features = feature_levels("PKD", self.in_features, s_shapes, t_shapes)
        self.adapters = channel_adapters(s_shapes, t_shapes, self.in_features)

    def teacher_needs(self):
        return {"features"}

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        losses = {}
        for level in self.in_features:
            s = float32(student.features[level])
            if level in self.adapters:
                s = self.adapters[level](s)
            t = float32(teacher.features[level]).detach()
            if self.resize is None:
                check_same_spatial_size("PKD", level, s, t)
            losses[level] = pkd_loss(s, t, resize=self.resize)
        return losses

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, in_features={self.in_features}, resize={self.resize}"
