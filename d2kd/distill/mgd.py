"""MGD: Masked Generative Distillation (Yang et al., ECCV 2022, docs/methods.md §11).

References: ``yzd-v/MGD`` ``det/mmdet/distillation/losses/mgd.py`` (``FeatureLoss``) and its
released detection configs ``det/configs/distillers/mgd/*.py``; mmrazor
``mmrazor/models/architectures/connectors/mgd_connector.py`` (``MGDConnector``) +
``mmrazor/models/losses/mgd_loss.py`` (``MGDLoss``), the same computation split in two.

Per feature level ℓ (paper Sec. 3, Eqs. 1-4; the paper writes Eq. 1 as "0 if R < λ", the code as
"0 if R > 1 − λ": the same distribution, the code's form here):

    s' = f_align(s)                           1×1 conv when the channels differ (else s)
    M_{i,j} = 0 if R_{i,j} > 1 − λ else 1      R ~ U(0, 1), one draw per (image, i, j)  (Eq. 1)
    G(F) = W_l2(ReLU(W_l1(F)))                two 3×3 convs, C_t → C_t                (Eq. 2)
    L_dis,ℓ = Σ_{n,c,i,j} (t − G(s' · M))² / N                                        (Eq. 3)

and the method's term is ``α · L_dis,ℓ`` per level (Eq. 4: the student's own loss + α Σ_ℓ L_dis,ℓ).
The reference normalises by the batch size N only (``MSELoss(reduction='sum') / N``), not by
C·H·W: α is tiny for that reason (2e-5 RetinaNet, 5e-7 Faster R-CNN).

Defaults are the released RetinaNet config's (``retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``:
α = 2e-5, λ = 0.65, P3-P7 = ``neck.fpn_convs.0-4``); the Faster R-CNN / Mask R-CNN configs use
α = 5e-7, λ = 0.45 on P2-P5 (``neck.fpn_convs.0-3``: mmdet's P6 is a max-pool, not distilled):
set them in the config (the method never asks which detector it is on).

The mask. ``torch.rand`` on the CPU's global generator, then moved to the features' device, as
the reference (``torch.rand((N,1,H,W)).to(device)``): reproducible under the training seed on any
device, one draw per level in ``in_features`` order per step. Drawn by :func:`mgd_keep_mask`
(a module-level function: a test patches it to fix the mask). The generation block and the
align convs keep PyTorch's default init (the reference's ``FeatureLoss`` sets none); they belong
to the distiller and are stripped at export.
"""
from typing import Dict, List, Optional, Sequence

import torch
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

__all__ = ["MGD", "mgd_keep_mask"]


def mgd_keep_mask(n: int, height: int, width: int, ratio: float, device) -> Tensor:
    """MGD's random spatial mask (Eq. 1), (N, 1, H, W) float: 0 at the masked cells
    (``U(0,1) > 1 − ratio``, a fraction ``ratio`` of them on average), 1 elsewhere; drawn on the
    CPU's global generator as the reference, then moved to ``device``."""
    r = torch.rand((n, 1, height, width))
    return torch.where(r > 1 - ratio, 0.0, 1.0).to(device)


class GenerationBlock(nn.Sequential):
    """MGD's generation block (Eq. 2): 3×3 conv, ReLU, 3×3 conv, ``channels`` → ``channels``."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )


@DISTILLER_REGISTRY.register()
class MGD(Distiller):
    name = "mgd"

    def __init__(
        self,
        *,
        in_features: Optional[Sequence[str]] = None,
        alpha_mgd: float = 2e-5,
        lambda_mgd: float = 0.65,
        weight: float = 1.0,
        schedule: Optional[KDSchedule] = None,
    ):
        """
        Args:
            in_features: levels to distil; None = every level both models output with the same
                stride (the released configs: P3-P7 RetinaNet, P2-P5 Faster R-CNN).
            alpha_mgd: α of Eq. 4, multiplies each level's term (2e-5 RetinaNet, 5e-7 Faster R-CNN).
            lambda_mgd: λ, the masked fraction (0.65 RetinaNet, 0.45 Faster R-CNN).
            weight: d2kd's multiplier of every term (1: α carries the reference's weighting).
        """
        super().__init__(weight=weight, schedule=schedule)
        self.alpha_mgd = self.check_weight("alpha_mgd", alpha_mgd)
        if not 0.0 <= float(lambda_mgd) < 1.0:
            raise ValueError(f"MGD: lambda_mgd (the masked fraction) must be in [0, 1), got {lambda_mgd}")
        self.lambda_mgd = float(lambda_mgd)
        if in_features is not None and not list(in_features):
            raise ValueError("MGD: in_features must name at least one level (or be None: the shared levels)")
        self.in_features = list(in_features) if in_features is not None else None
        self.align = nn.ModuleDict()  # only the levels whose channels differ (filled by bind)
        self.generation = nn.ModuleDict()

    def bind(self, student, teacher) -> None:
        s_shapes, t_shapes = record_layout(student).feature_shapes, teacher.output_shape()
        self.in_features = feature_levels("MGD", self.in_features, s_shapes, t_shapes)
        self.align = channel_adapters(s_shapes, t_shapes, self.in_features)
        for level in self.in_features:
            c_t = t_shapes[level].channels
            self.generation[level] = GenerationBlock(c_t)

    def teacher_needs(self):
        return {"features"}

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        losses = {}
        for level in self.in_features:
            s, t = student.features[level], teacher.features[level]
            check_same_spatial_size("MGD", level, s, t)
            s = float32(s)
            if level in self.align:
                s = self.align[level](s)
            n, _, h, w = s.shape
            keep = mgd_keep_mask(n, h, w, self.lambda_mgd, s.device).to(s.dtype)
            generated = float32(self.generation[level](s * keep))
            losses[level] = self.alpha_mgd * ((generated - float32(t).detach()) ** 2).sum() / n  # Eqs. 3-4
        return losses

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, alpha_mgd={self.alpha_mgd}, lambda_mgd={self.lambda_mgd}, "
            f"in_features={self.in_features}"
        )
