"""FitNet-style feature imitation: L2 between adapted student and teacher feature maps.

Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), applied per detector feature
level: ``L_ℓ = mean_{n,c,h,w} (A_ℓ(s_ℓ) − t_ℓ)²`` with ``A_ℓ`` a 1×1 convolution from the
student's channels to the teacher's, one term per level (``loss_kd_fitnet_<level>``).
"""
from typing import Dict, Sequence

from torch import Tensor, nn

from .base import DISTILLER_REGISTRY, Distiller, check_levels, check_same_spatial_size, float32


@DISTILLER_REGISTRY.register()
class FeatureImitation(Distiller):
    name = "fitnet"

    def __init__(self, *, in_features: Sequence[str], weight: float = 1.0, schedule=None):
        """
        Args:
            in_features: backbone/FPN levels to imitate (e.g. ``["p3", "p4", "p5"]``).
            weight: multiplier of every level's term.
        """
        super().__init__(weight=weight, schedule=schedule)
        if not in_features:
            raise ValueError("FeatureImitation: in_features must name at least one level")
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict()

    def bind(self, student, teacher) -> None:
        s_shapes, t_shapes = student.backbone.output_shape(), teacher.output_shape()
        check_levels("FeatureImitation", self.in_features, s_shapes, t_shapes)
        for level in self.in_features:
            adapter = nn.Conv2d(s_shapes[level].channels, t_shapes[level].channels, kernel_size=1)
            nn.init.kaiming_uniform_(adapter.weight, a=1)
            nn.init.zeros_(adapter.bias)
            self.adapters[level] = adapter

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        losses = {}
        for level in self.in_features:
            s, t = student.features[level], teacher.features[level]
            check_same_spatial_size("FeatureImitation", level, s, t)
            adapted = float32(self.adapters[level](s))
            losses[level] = ((adapted - float32(t)) ** 2).mean()
        return losses
