"""FGFI: fine-grained feature imitation near objects (Wang et al., CVPR 2019, docs/methods.md §2).

Reference: ``twangnh/Distilling-Object-Detectors`` (``lib/model/rpn/anchor_target_layer.py`` for
the mask, ``trainval_net_sup.py`` for the loss, ``lib/model/faster_rcnn/vgg11.py`` for the
adapter).

Imitation mask (§2.1), per image and per GT box g, over the anchors of the imitated level(s)
(all anchors, including those crossing the image border):

    m_g = IoU(g, anchors)                      (H×W×A per level; "+1" pixel convention by default)
    F_g = ψ · max(m_g)                         ψ = 0.5
    I_g(i, j) = 1 if any anchor a at (i, j) has m_g(i, j, a) > F_g     (strict)
    I = OR_g I_g                               (the reference sums counts, then uses count > 0)

Loss (§2.2): ``L_imit = Σ_{ℓ,b,i,j} I_ℓbij Σ_c (f_adap(s)_ℓbijc − t_ℓbijc)² / (2·N_p)`` with
``N_p = Σ_{ℓ,b,i,j} I`` (a spatial count, NOT × C), weight λ = 0.01, imitation multiplied by 0
for the first 400 iterations (``KDSchedule(warmup_iters=400)``).

Adapter ``f_adap`` (§2.2): 3×3 conv (pad 1) + ReLU; weights "N(0, 1e-4) truncated at ±2σ".
The reference calls ``normal_init(m, 0, 0.0001, truncated=True)``, i.e.
``weight.normal_().fmod_(2).mul_(0.0001)``: 1e-4 is the **standard deviation** (the variance is
1e-8) and "truncation" folds values into (−2σ, 2σ) with ``fmod`` (not a resampling truncated
normal). ``adapter_init="fmod"`` reproduces that; ``"trunc_normal"`` uses
``nn.init.trunc_normal_`` (resampling, same ±2σ bounds). The bias keeps PyTorch's default init
(the reference's truncated branch does not zero it).

Levels: the faithful setting imitates one stride-16 map (``res4`` / VGG ``conv5``) with the RPN's
anchors. d2kd extension (§2.3): several FPN levels, each with its own anchors; the threshold is
ψ · max IoU over the anchors of **all** imitated levels (``max_over="all_levels"``, faithful to
"max over all anchors") or of each level alone (``"per_level"``); the normaliser is the total mask
count over levels. The anchors are the student's first-stage dense predictor's
(``DetectorRecord.anchors_view``): an R-CNN's RPN, a RetinaNet's head.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.structures import Boxes, pairwise_iou

from ..records import AnchorsLayout, record_layout
from .base import DISTILLER_REGISTRY, Distiller, KDSchedule, check_levels, check_same_spatial_size, float32, zero_loss

__all__ = ["FGFI", "fgfi_masks", "fgfi_masks_batch", "pairwise_iou_plus_one", "init_adapter_weight"]


def pairwise_iou_plus_one(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU (M, N) with the "+1" pixel convention of faster-rcnn.pytorch's ``bbox_overlaps_batch``:
    widths/heights are ``x2 − x1 + 1``; a GT of size 1×1 (i.e. a zero box) gets IoU 0 everywhere,
    an anchor of size 1×1 gets −1 (as in the reference)."""
    return _iou_to_batched_gt(boxes1, boxes2[None], plus_one=True)[0]


def _iou_to_batched_gt(anchors: Tensor, gt: Tensor, plus_one: bool) -> Tensor:
    """IoU (N, A, G) of ``anchors`` (A, 4) with each image's GT boxes ``gt`` (N, G, 4): the
    broadcast form of :func:`pairwise_iou_plus_one` (``plus_one``) or of Detectron2's
    ``pairwise_iou`` (0 where boxes do not overlap)."""
    a, b = anchors[None, :, None, :], gt[:, None, :, :]
    one = 1.0 if plus_one else 0.0
    aw, ah = a[..., 2] - a[..., 0] + one, a[..., 3] - a[..., 1] + one
    bw, bh = b[..., 2] - b[..., 0] + one, b[..., 3] - b[..., 1] + one
    iw = (torch.min(a[..., 2], b[..., 2]) - torch.max(a[..., 0], b[..., 0]) + one).clamp(min=0)
    ih = (torch.min(a[..., 3], b[..., 3]) - torch.max(a[..., 1], b[..., 1]) + one).clamp(min=0)
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    if not plus_one:
        return torch.where(inter > 0, inter / union, torch.zeros_like(inter))
    iou = inter / union
    iou = iou.masked_fill((bw == 1) & (bh == 1), 0.0)
    return iou.masked_fill((aw == 1) & (ah == 1), -1.0)


def fgfi_masks_batch(
    anchors: Sequence[Boxes],
    grid_sizes: Sequence[Sequence[int]],
    gt_boxes: Sequence[Tensor],
    *,
    psi: float = 0.5,
    iou_plus_one: bool = True,
    max_over: str = "all_levels",
) -> List[Tensor]:
    """FGFI imitation masks (§2.1) of a batch: per level, a boolean (N, H, W) map.

    Args:
        anchors: per level, the H*W*A anchors in Detectron2's order (location-major, then A),
            the same for every image.
        grid_sizes: per level, (H, W) of the feature map the anchors belong to.
        gt_boxes: per image, (G_i, 4) XYXY GT boxes (G_i may be 0: all-False masks).
        psi: ψ, the fraction of the GT's best IoU an anchor must exceed (strictly).
        iou_plus_one: "+1" pixel IoU (reference parity) or Detectron2's ``pairwise_iou``.
        max_over: ``"all_levels"`` (threshold from the max over the anchors of every given level)
            or ``"per_level"`` (each level's own max).

    One IoU over all levels' anchors and the batch's GT (padded to the largest count): a few
    tensor ops per batch instead of a few per image and level.
    """
    if max_over not in ("all_levels", "per_level"):
        raise ValueError(f"FGFI: max_over must be 'all_levels' or 'per_level', got {max_over!r}")
    if len(anchors) != len(grid_sizes):
        raise ValueError(f"FGFI: {len(anchors)} anchor levels but {len(grid_sizes)} grid sizes")
    level_anchors = [a.tensor if isinstance(a, Boxes) else a for a in anchors]
    per_location = []
    for at, (h, w) in zip(level_anchors, grid_sizes):
        if at.shape[0] % (h * w) != 0:
            raise ValueError(f"FGFI: {at.shape[0]} anchors do not tile a {h}x{w} feature map")
        per_location.append(at.shape[0] // (h * w))
    n = len(gt_boxes)
    device = level_anchors[0].device if level_anchors else torch.device("cpu")
    g_max = max((int(g.shape[0]) for g in gt_boxes), default=0)
    if g_max == 0:
        return [torch.zeros((n, *tuple(hw)), dtype=torch.bool, device=device) for hw in grid_sizes]
    gt = torch.zeros((n, g_max, 4), dtype=torch.float32, device=device)
    valid = torch.zeros((n, g_max), dtype=torch.bool, device=device)
    for i, g in enumerate(gt_boxes):
        gt[i, : g.shape[0]] = g.float()
        valid[i, : g.shape[0]] = True
    iou = _iou_to_batched_gt(torch.cat(level_anchors).float(), gt, iou_plus_one)  # (N, A, G)
    # padding GT: below any threshold (ψ·best ≥ −ψ > −2 for real GT; −2 > ψ·(−2) is False)
    iou = iou.masked_fill(~valid[:, None, :], -2.0)
    ious = iou.split([a.shape[0] for a in level_anchors], dim=1)
    if max_over == "all_levels":
        thresholds = [psi * iou.max(dim=1, keepdim=True).values] * len(ious)
    else:
        thresholds = [psi * level.max(dim=1, keepdim=True).values for level in ious]
    # any anchor at the location, any GT
    return [
        (level > thr).any(dim=2).view(n, h, w, k).any(dim=3)
        for level, thr, (h, w), k in zip(ious, thresholds, grid_sizes, per_location)
    ]


def fgfi_masks(
    anchors: Sequence[Boxes],
    grid_sizes: Sequence[Sequence[int]],
    gt_boxes: Tensor,
    *,
    psi: float = 0.5,
    iou_plus_one: bool = True,
    max_over: str = "all_levels",
) -> List[Tensor]:
    """FGFI imitation masks of one image (§2.1), one boolean (H, W) map per level
    (:func:`fgfi_masks_batch` for a batch of one; same arguments, ``gt_boxes`` (G, 4))."""
    masks = fgfi_masks_batch(anchors, grid_sizes, [gt_boxes], psi=psi, iou_plus_one=iou_plus_one,
                             max_over=max_over)
    return [m[0] for m in masks]


def init_adapter_weight(weight: Tensor, std: float, method: str = "fmod") -> None:
    """The reference's ``normal_().fmod_(2).mul_(std)`` or a resampling truncated normal at ±2σ."""
    with torch.no_grad():
        if method == "fmod":
            weight.normal_().fmod_(2).mul_(std)
        elif method == "trunc_normal":
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        else:
            raise ValueError(f"FGFI: adapter_init must be 'fmod' or 'trunc_normal', got {method!r}")


@DISTILLER_REGISTRY.register()
class FGFI(Distiller):
    name = "fgfi"

    def __init__(
        self,
        *,
        in_features: Optional[Sequence[str]] = None,
        psi: float = 0.5,
        iou_plus_one: bool = True,
        max_over: str = "all_levels",
        adapter_relu: bool = True,
        adapter_init: str = "fmod",
        adapter_init_std: float = 1e-4,
        weight: float = 0.01,
        schedule: Optional[KDSchedule] = None,
    ):
        """
        Args:
            in_features: levels to imitate, a subset of the levels of the student's anchors
                (``record_layout(student).anchors.levels``: an RPN's or a dense head's
                ``in_features``); None = all of them.
                Faithful: one stride-16 map (``["res4"]``/``["conv5"]``).
            psi: ψ (0.5).
            iou_plus_one: "+1" pixel IoU as the reference (True) or ``pairwise_iou``.
            max_over: ``"all_levels"`` (default) | ``"per_level"`` (FPN extension only).
            adapter_relu: 3×3 conv followed by ReLU (reference). FPN maps are signed, so a ReLU
                adapter cannot match their negative part; False drops it (d2kd option).
            adapter_init / adapter_init_std: ``"fmod"`` (reference) or ``"trunc_normal"``, σ = 1e-4.
            weight: λ (``--ilw``, 0.01).
            schedule: default ``KDSchedule(warmup_iters=400)`` (``--ws``).
        """
        if schedule is None:
            schedule = KDSchedule(warmup_iters=400)
        super().__init__(weight=weight, schedule=schedule)
        if not 0.0 <= psi <= 1.0:
            raise ValueError(f"FGFI: psi must be in [0, 1], got {psi}")
        if max_over not in ("all_levels", "per_level"):
            raise ValueError(f"FGFI: max_over must be 'all_levels' or 'per_level', got {max_over!r}")
        if adapter_init not in ("fmod", "trunc_normal"):
            raise ValueError(f"FGFI: adapter_init must be 'fmod' or 'trunc_normal', got {adapter_init!r}")
        self.in_features = list(in_features) if in_features is not None else None
        self.psi = float(psi)
        self.iou_plus_one = bool(iou_plus_one)
        self.max_over = max_over
        self.adapter_relu = bool(adapter_relu)
        self.adapter_init = adapter_init
        self.adapter_init_std = float(adapter_init_std)
        self.adapters = nn.ModuleDict()
        self._anchors: Optional[AnchorsLayout] = None  # where the student's anchors come from (bind)

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student, teacher) -> None:
        layout = record_layout(student)
        if layout.anchors is None:
            raise ValueError(
                f"FGFI needs anchors from an RPN or a dense head; {type(student).__name__} records {layout.parts}"
            )
        self._anchors = layout.anchors
        levels = list(layout.anchors.levels)
        if self.in_features is None:
            self.in_features = list(levels)
        if not self.in_features:
            raise ValueError("FGFI: in_features must name at least one level")
        unknown = [f for f in self.in_features if f not in levels]
        if unknown:
            raise ValueError(
                f"FGFI: levels {unknown} have no anchors: the student's {layout.anchors.part} uses {levels}"
            )
        s_shapes, t_shapes = layout.feature_shapes, teacher.output_shape()
        check_levels("FGFI", self.in_features, s_shapes, t_shapes)
        for level in self.in_features:
            conv = nn.Conv2d(s_shapes[level].channels, t_shapes[level].channels, kernel_size=3, padding=1)
            init_adapter_weight(conv.weight, self.adapter_init_std, self.adapter_init)
            self.adapters[level] = nn.Sequential(conv, nn.ReLU()) if self.adapter_relu else nn.Sequential(conv)

    def teacher_needs(self):
        return {"features"}

    def student_needs(self):
        return {self._anchors.part} if self._anchors else set()

    # ---- computing --------------------------------------------------------------------------
    def anchors_of(self, student_record) -> Dict[str, Boxes]:
        view = student_record.anchors_view()
        levels = view.levels or list(self._anchors.levels)  # a record built by hand may not name them
        return {level: view.anchors[levels.index(level)] for level in self.in_features}

    def masks(self, student_record) -> List[Tensor]:
        """Per level of ``in_features``: the boolean (N, H, W) imitation masks of the batch."""
        anchors = self.anchors_of(student_record)
        levels = self.in_features
        return fgfi_masks_batch(
            [anchors[f] for f in levels],
            [tuple(student_record.features[f].shape[-2:]) for f in levels],
            [inst.gt_boxes.tensor for inst in student_record.gt_instances],
            psi=self.psi,
            iou_plus_one=self.iou_plus_one,
            max_over=self.max_over,
        )

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        with torch.no_grad():
            masks = self.masks(student)
        total, count = None, 0
        for k, level in enumerate(self.in_features):
            s, t = student.features[level], teacher.features[level]
            check_same_spatial_size("FGFI", level, s, t)
            mask = masks[k]  # (N, H, W)
            count = count + mask.sum()
            diff = self.adapt_at(level, s, mask) - float32(t).permute(0, 2, 3, 1)[mask]  # (M, C_t)
            # Σ over the M mask cells and the channels (the spatial normaliser is applied below)
            term = (diff**2).sum()
            total = term if total is None else total + term
        if float(count) == 0:  # no GT in the batch: nothing to imitate, a graph-keeping zero
            return {"imitation": sum(zero_loss(p) for p in self.adapters.parameters())}
        return {"imitation": total / (2.0 * count)}

    def adapt_at(self, level: str, features: Tensor, mask: Tensor) -> Tensor:
        """``f_adap(features)`` at the cells of ``mask`` only: (M, C_t) for the M True cells of
        the boolean (N, H, W) ``mask``, in ``mask.nonzero()`` order, equal to
        ``self.adapters[level](features).permute(0, 2, 3, 1)[mask]``.

        The loss only reads the adapter at mask cells (typically 10-30 % of a map), so the 3×3
        conv is evaluated there alone: each cell's 3×3 neighbourhood is gathered from the
        zero-padded map (the conv's padding) and multiplied by the conv weight: a dense adapter on
        every level costs about as much as a small student's own forward/backward. Gathering
        by index rather than ``F.unfold`` keeps the backward a scatter onto the M·9 gathered rows
        instead of a ``col2im`` over every cell of the map."""
        conv = self.adapters[level][0]
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        x = F.pad(float32(features), (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # (N, H+2p, W+2p, C)
        _, hp, wp, c = x.shape
        cells = mask.nonzero()  # (M, 3) = (image, y, x), the order of boolean-mask indexing
        dy = torch.arange(kh, device=cells.device).view(1, kh, 1)
        dx = torch.arange(kw, device=cells.device).view(1, 1, kw)
        rows = (cells[:, 0].view(-1, 1, 1) * hp + cells[:, 1].view(-1, 1, 1) + dy) * wp
        index = (rows + cells[:, 2].view(-1, 1, 1) + dx).reshape(-1)  # (M·kh·kw,) into the padded map
        patches = x.reshape(-1, c)[index].reshape(len(cells), kh * kw * c)  # (M, kh·kw·C), C fastest
        weight = float32(conv.weight).permute(0, 2, 3, 1).reshape(conv.out_channels, kh * kw * c)
        out = torch.addmm(float32(conv.bias), patches, weight.t())
        return torch.relu(out) if self.adapter_relu else out
