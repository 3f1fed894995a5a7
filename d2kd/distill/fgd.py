"""FGD: Focal and Global Knowledge Distillation for Detectors (Yang et al., CVPR 2022, docs/methods.md §12).

Reference: ``yzd-v/FGD`` ``mmdet/distillation/losses/fgd.py`` (``FeatureLoss``) and its released
configs ``configs/distillers/fgd/*.py``; PaddleDetection ``ppdet/slim/distill_loss.py``
(``FGDFeatureLoss``, a port of the same code) compared.

Per feature level (s = the student's map after the 1×1 align conv when the channels differ,
t = the teacher's; N images, C channels, H×W cells):

Focal masks from the GT boxes (paper Eqs. 2-4), per image: each box is mapped onto the H×W grid
(x·W/w, y·H/h), covers the cells ``[⌊y1⌋, ⌈y2⌉] × [⌊x1⌋, ⌈x2⌉]`` (inclusive, as the reference's
slices) with the value ``S = 1 / ((⌈y2⌉ + 1 − ⌊y1⌋)(⌈x2⌉ + 1 − ⌊x1⌋))``; a cell in several boxes
keeps the largest value (the smallest box, as the paper says). ``M_fg`` is that map; ``M_bg`` is
1 where ``M_fg = 0``, divided by its count (Eq. 4: ``1/N_bg``; all zero if no cell is background).
An image without GT has ``M_fg = 0`` and a uniform ``M_bg = 1/(H·W)``.

Attention with temperature T (Eqs. 5-7), of either map F:

    A^S(F) = H·W · softmax_{(i,j)}( mean_c |F| / T )       (N, H, W)
    A^C(F) = C · softmax_c( mean_{i,j} |F| / T )            (N, C)

Terms, each Σ over the batch divided by N (``MSELoss(reduction='sum') / len(...)``), summed over
the levels and multiplied by the reference's coefficient (the meta-architecture then applies
``weight × schedule``):

    fg        = α Σ M_fg · A^S(t) · A^C(t) · (s − t)² / N                               (Eq. 8)
    bg        = β Σ M_bg · A^S(t) · A^C(t) · (s − t)² / N                               (Eq. 8)
    attention = γ (Σ |A^C(s) − A^C(t)| + Σ |A^S(s) − A^S(t)|) / N                      (Eq. 9)
    relation  = λ Σ (R_s(s) − R_t(t))² / N                                               (Eq. 11)

with ``R(F) = F + W_v2(ReLU(LN(W_v1(Σ_j softmax_j(W_k F)_j F_j))))``, a GcBlock (GCNet's context
modelling: ``conv_mask`` W_k, ``channel_add_conv`` W_v1/LN/W_v2), one for the student side and one
for the teacher side per level, both trainable (the method's own modules, as the reference's
``conv_mask_s/t`` and ``channel_add_conv_s/t``): ``conv_mask`` kaiming-normal (fan_in, ReLU gain,
bias 0: mmcv's ``kaiming_init``), the last conv of ``channel_add_conv`` zero (``last_zero_init``), so
at the start ``R(F) = F``. The feature terms weight the student by the TEACHER's attention only
(Eq. 8); the student's attention enters through the attention term only.

Defaults: the released RetinaNet configs (``fgd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``,
``fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py``): T 0.5, α 1e-3, β 5e-4, γ 5e-4,
λ 5e-6 on P3-P7. The Faster R-CNN configs (``fgd_faster_rcnn_r101_fpn_2x_distill_faster_rcnn_r50_fpn_2x_coco.py``,
the Cascade Mask RX101 one) set T 0.5, α 5e-5, β 2.5e-5, γ 5e-5, λ 5e-7 on P2-P5: set them in the
config. (The loss class's own default γ is 1e-3; no released detection config uses it.)

Box frame (``box_frame``). The reference scales the boxes by the UNPADDED image size
(``img_metas['img_shape']``) onto a map that covers the PADDED image, so a box is stretched by
padded/unpadded (≤ 31 px of padding at mmdet's size_divisor 32): ``"image"`` (default) reproduces
that; ``"padded"`` maps the padded-image frame exactly (x·W/W_pad). Cells start at
``max(⌊·⌋, 0)`` (Detectron2's boxes lie inside the image, so this only guards a Python negative
slice; PaddleDetection clamps the same way).
"""
from typing import Dict, List, Optional, Sequence, Tuple

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

__all__ = ["FGD", "ContextBlock", "fgd_masks", "fgd_attention"]

BOX_FRAMES = ("image", "padded")


def fgd_masks(
    gt_boxes: Sequence[Tensor], frame_sizes: Sequence[Tuple[float, float]], height: int, width: int
) -> Tuple[Tensor, Tensor]:
    """FGD's foreground and background masks (Eqs. 2-4), each (N, H, W) float.

    Args:
        gt_boxes: per image, (G_i, 4) XYXY boxes (G_i may be 0).
        frame_sizes: per image, the (h, w) the boxes are scaled from onto the H×W grid
            (the reference: the unpadded image size).
    """
    n = len(gt_boxes)
    device = gt_boxes[0].device if n else torch.device("cpu")
    fg = torch.zeros((n, height, width), dtype=torch.float32, device=device)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    for i, (boxes, (fh, fw)) in enumerate(zip(gt_boxes, frame_sizes)):
        if boxes.shape[0] == 0:
            continue
        b = boxes.detach().float()
        wmin = torch.floor(b[:, 0] / fw * width).clamp(min=0)
        wmax = torch.ceil(b[:, 2] / fw * width)
        hmin = torch.floor(b[:, 1] / fh * height).clamp(min=0)
        hmax = torch.ceil(b[:, 3] / fh * height)
        area = 1.0 / (hmax + 1 - hmin) / (wmax + 1 - wmin)  # (G,)
        inside = (
            (rows >= hmin.view(-1, 1, 1)) & (rows <= hmax.view(-1, 1, 1))
            & (cols >= wmin.view(-1, 1, 1)) & (cols <= wmax.view(-1, 1, 1))
        )  # (G, H, W)
        fg[i] = torch.where(inside, area.view(-1, 1, 1), torch.zeros((), device=device)).amax(dim=0)
    bg = (fg == 0).float()
    count = bg.sum(dim=(1, 2), keepdim=True)
    bg = torch.where(count > 0, bg / count.clamp(min=1), bg)
    return fg, bg


def fgd_attention(x: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """``(A^S, A^C)`` of Eq. 7: spatial (N, H, W) = H·W·softmax over cells of mean_c|x| / T,
    channel (N, C) = C·softmax over channels of mean_{h,w}|x| / T."""
    n, c, h, w = x.shape
    value = x.abs()
    spatial = (h * w) * F.softmax((value.mean(dim=1) / temperature).view(n, -1), dim=1).view(n, h, w)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial, channel


class ContextBlock(nn.Module):
    """GCNet's global context block as FGD uses it (Eq. 11): ``x + channel_add(Σ_j p_j x_j)``
    with ``p = softmax_j(conv_mask(x))`` over the H·W cells; ``channel_add`` = 1×1 conv C → C/2,
    LayerNorm([C/2, 1, 1]), ReLU, 1×1 conv C/2 → C (the reference's init: ``conv_mask``
    kaiming-normal fan_in with bias 0, the last conv zero)."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError(f"FGD: the relation block needs >= 2 channels (C/2 hidden), got {channels}")
        hidden = channels // 2
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, a=0, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = F.softmax(self.conv_mask(x).view(n, 1, h * w), dim=2)  # (N, 1, HW)
        context = torch.bmm(x.view(n, c, h * w), p.transpose(1, 2)).view(n, c, 1, 1)  # (N, C, 1, 1)
        return x + self.channel_add(context)


@DISTILLER_REGISTRY.register()
class FGD(Distiller):
    name = "fgd"

    def __init__(
        self,
        *,
        in_features: Optional[Sequence[str]] = None,
        temperature: float = 0.5,
        alpha_fgd: float = 1e-3,
        beta_fgd: float = 5e-4,
        gamma_fgd: float = 5e-4,
        lambda_fgd: float = 5e-6,
        box_frame: str = "image",
        weight: float = 1.0,
        schedule: Optional[KDSchedule] = None,
    ):
        """
        Args:
            in_features: levels to distil; None = every level both models output with the same
                stride (the released configs: P3-P7 RetinaNet, P2-P5 Faster R-CNN).
            temperature: T of the attention (0.5).
            alpha_fgd, beta_fgd: foreground / background feature terms (RetinaNet 1e-3 / 5e-4,
                Faster R-CNN 5e-5 / 2.5e-5).
            gamma_fgd: attention term (RetinaNet 5e-4, Faster R-CNN 5e-5).
            lambda_fgd: global relation term (RetinaNet 5e-6, Faster R-CNN 5e-7).
            box_frame: ``"image"`` (reference: boxes scaled by the unpadded image size) or
                ``"padded"`` (the padded-image frame the map covers).
            weight: d2kd's multiplier of every term (1: the coefficients carry the reference's weighting).
        """
        super().__init__(weight=weight, schedule=schedule)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"FGD: temperature must be > 0, got {temperature}")
        self.alpha_fgd = self.check_weight("alpha_fgd", alpha_fgd)
        self.beta_fgd = self.check_weight("beta_fgd", beta_fgd)
        self.gamma_fgd = self.check_weight("gamma_fgd", gamma_fgd)
        self.lambda_fgd = self.check_weight("lambda_fgd", lambda_fgd)
        if box_frame not in BOX_FRAMES:
            raise ValueError(f"FGD: box_frame must be one of {BOX_FRAMES}, got {box_frame!r}")
        self.box_frame = box_frame
        if in_features is not None and not list(in_features):
            raise ValueError("FGD: in_features must name at least one level (or be None: the shared levels)")
        self.in_features = list(in_features) if in_features is not None else None
        self.align = nn.ModuleDict()  # only the levels whose channels differ (filled by bind)
        self.context_student = nn.ModuleDict()
        self.context_teacher = nn.ModuleDict()

    def bind(self, student, teacher) -> None:
        s_shapes, t_shapes = record_layout(student).feature_shapes, teacher.output_shape()
        self.in_features = feature_levels("FGD", self.in_features, s_shapes, t_shapes)
        self.align = channel_adapters(s_shapes, t_shapes, self.in_features)
        for level in self.in_features:
            c_t = t_shapes[level].channels
            self.context_student[level] = ContextBlock(c_t)
            self.context_teacher[level] = ContextBlock(c_t)

    def teacher_needs(self):
        return {"features"}

    def frame_sizes(self, student) -> List[Tuple[float, float]]:
        """Per image, the (h, w) the GT boxes are scaled from (``box_frame``)."""
        images = student.images
        if self.box_frame == "padded":
            h, w = images.tensor.shape[-2:]
            return [(float(h), float(w))] * len(images)
        return [(float(h), float(w)) for h, w in images.image_sizes]

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        boxes = [inst.gt_boxes.tensor for inst in student.gt_instances]
        if len(boxes) != len(student.images):
            raise ValueError(
                f"FGD needs the GT boxes of every image of the batch (record.gt_instances): got "
                f"{len(boxes)} for {len(student.images)} images"
            )
        frames = self.frame_sizes(student)
        terms = {"fg": [], "bg": [], "attention": [], "relation": []}
        for level in self.in_features:
            s, t = student.features[level], teacher.features[level]
            check_same_spatial_size("FGD", level, s, t)
            s, t = float32(s), float32(t).detach()
            if level in self.align:
                s = self.align[level](s)
            n, _, h, w = s.shape
            with torch.no_grad():
                fg, bg = fgd_masks(boxes, frames, h, w)
                att_s_t, att_c_t = fgd_attention(t, self.temperature)
            att_s_s, att_c_s = fgd_attention(s, self.temperature)
            # Eq. 8: (s − t)² weighted by the teacher's attention, Σ over channels, then by the masks
            sq = ((s - t) ** 2 * att_c_t[:, :, None, None]).sum(dim=1) * att_s_t  # (N, H, W)
            terms["fg"].append((sq * fg).sum() / n)
            terms["bg"].append((sq * bg).sum() / n)
            # Eq. 9: L1 between the attentions
            terms["attention"].append(((att_c_s - att_c_t).abs().sum() + (att_s_s - att_s_t).abs().sum()) / n)
            # Eq. 11: GcBlock outputs of both sides
            rel = self.context_student[level](s) - self.context_teacher[level](t)
            terms["relation"].append((rel**2).sum() / n)
        coef = {"fg": self.alpha_fgd, "bg": self.beta_fgd, "attention": self.gamma_fgd, "relation": self.lambda_fgd}
        return {k: coef[k] * torch.stack(v).sum() for k, v in terms.items()}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, T={self.temperature}, alpha={self.alpha_fgd}, beta={self.beta_fgd}, "
            f"gamma={self.gamma_fgd}, lambda={self.lambda_fgd}, box_frame={self.box_frame}, "
            f"in_features={self.in_features}"
        )
