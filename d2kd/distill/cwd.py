"""CWD: channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for
Dense Prediction", docs/methods.md §10).

References: open-mmlab/mmrazor ``mmrazor/models/losses/cwd.py`` (``ChannelWiseDivergence``) and its
released detection configs ``configs/distill/mmdet/cwd/cwd_fpn_{frcnn,retina}_r101_*_r50_1x_coco.py``;
PaddleDetection ``ppdet/slim/distill_loss.py`` (``CWDFeatureLoss``) with
``configs/slim/distill/retinanet_resnet101_coco_distill_cwd.yml`` and ``ppdet/slim/distill_model.py``
(``CWDDistillModel``: the loss on every neck output, P3-P7 of RetinaNet).

Per feature level ℓ (paper Sec. 3.2): each channel's map becomes a distribution over its H·W
locations with a temperature τ, and the student's is pulled to the teacher's by KL(teacher‖student):

    φ(y)_{c,i} = exp(y_{c,i} / τ) / Σ_j exp(y_{c,j} / τ)                 (spatial softmax)
    L_ℓ = τ² / (N·C) · Σ_{n,c} Σ_i φ(t)_{n,c,i} · (log φ(t)_{n,c,i} − log φ(s)_{n,c,i})

i.e. the sum over channels, images and locations divided by N·C (the number of channel
distributions), as mmrazor: ``sum(p_T·log_softmax(T/τ) − p_T·log_softmax(S/τ))·τ² / (C·N)``.
One term per level (``loss_kd_cwd_<level>``), each multiplied by ``weight`` (the reference's
``loss_weight``). Released defaults: τ = 1 on every FPN level; mmrazor weight 10 (Faster R-CNN
P2-P6 and RetinaNet P3-P7: five ``loss_cwd_fpn<i>``), PaddleDetection weight 5 (RetinaNet P3-P7).

PaddleDetection's variant, selectable: ``log_eps`` = 1e-5 computes ``log(ε + softmax)`` on both
sides instead of the exact log-softmax (None, mmrazor's, the default); ``normalize=True`` first
standardises both maps per channel as PKD does (``feature_norm``; off in the released configs).

Channels. mmrazor's loss needs equal channels (no adapter). PaddleDetection's ``CWDFeatureLoss``
builds ``align``, a 1×1 conv student → teacher channels, where ``student_channels !=
teacher_channels``: d2kd does the same (PyTorch's default init; trained with the student, stripped
at export under ``self.adapters``). PaddleDetection divides by the student's channel count read
*before* the align; d2kd divides by the number of channel distributions compared (the teacher's
channels, the paper's C); the two agree whenever no adapter is needed. Strides must agree at build
time; the maps must then have the same size (no resize: neither reference resizes).
"""
from typing import Dict, Optional, Sequence

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
from .pkd import pkd_standardize

__all__ = ["CWD", "cwd_loss"]


def cwd_loss(student: Tensor, teacher: Tensor, *, tau: float = 1.0, log_eps: Optional[float] = None) -> Tensor:
    """τ²/(N·C) · Σ KL(φ(t/τ) ‖ φ(s/τ)) over the N·C channel maps of (N, C, H, W) ``student`` and
    ``teacher``, φ the softmax over H·W (mmrazor ``ChannelWiseDivergence``, loss_weight 1).
    ``log_eps``: PaddleDetection's ``log(ε + φ)`` in place of the exact log-softmax."""
    if student.shape != teacher.shape:
        raise ValueError(f"CWD: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ")
    n, c, h, w = student.shape
    s = student.reshape(n * c, h * w) / tau
    t = teacher.reshape(n * c, h * w) / tau
    p_t = F.softmax(t, dim=1)
    if log_eps is None:
        log_p_t, log_p_s = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
    else:
        log_p_t, log_p_s = torch.log(p_t + log_eps), torch.log(F.softmax(s, dim=1) + log_eps)
    return (p_t * (log_p_t - log_p_s)).sum() * tau**2 / (n * c)


@DISTILLER_REGISTRY.register()
class CWD(Distiller):
    name = "cwd"

    def __init__(
        self,
        *,
        in_features: Optional[Sequence[str]] = None,
        tau: float = 1.0,
        log_eps: Optional[float] = None,
        normalize: bool = False,
        weight: float = 1.0,
        schedule: Optional[KDSchedule] = None,
    ):
        """
        Args:
            in_features: levels to distil; None = every level both models output with the same
                stride (the released configs distil every FPN output).
            tau: the softmax temperature τ (1 in every released detection config).
            log_eps: None: exact log-softmax (mmrazor); 1e-5: PaddleDetection's ``log(ε + φ)``.
            normalize: standardise both maps per channel first (PaddleDetection's option, off).
            weight: multiplier of every level's term (the reference's ``loss_weight``: mmrazor 10,
                PaddleDetection 5; ``ChannelWiseDivergence``'s own default is 1).
        """
        super().__init__(weight=weight, schedule=schedule)
        tau = float(tau)
        if not tau > 0 or tau == float("inf"):
            raise ValueError(f"CWD: tau must be a finite number > 0, got {tau}")
        if log_eps is not None and not float(log_eps) > 0:
            raise ValueError(f"CWD: log_eps must be > 0 or None (exact log-softmax), got {log_eps}")
        if in_features is not None and not list(in_features):
            raise ValueError("CWD: in_features must name at least one level (or be None: the shared levels)")
        self.in_features = list(in_features) if in_features is not None else None
        self.tau = tau
        self.log_eps = None if log_eps is None else float(log_eps)
        self.normalize = bool(normalize)
        self.adapters = nn.ModuleDict()  # only the levels whose channels differ

    def bind(self, student, teacher) -> None:
        s_shapes, t_shapes = record_layout(student).feature_shapes, teacher.output_shape()
        self.in_features = feature_levels("CWD", self.in_features, s_shapes, t_shapes)
        self.adapters = channel_adapters(s_shapes, t_shapes, self.in_features)

    def teacher_needs(self):
        return {"features"}

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        losses = {}
        for level in self.in_features:
            s = float32(student.features[level])
            t = float32(teacher.features[level]).detach()
            check_same_spatial_size("CWD", level, s, t)
            if level in self.adapters:
                s = self.adapters[level](s)
            if self.normalize:
                s, t = pkd_standardize(s), pkd_standardize(t)
            losses[level] = cwd_loss(s, t, tau=self.tau, log_eps=self.log_eps)
        return losses

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, in_features={self.in_features}, tau={self.tau}, "
                f"log_eps={self.log_eps}, normalize={self.normalize}")
