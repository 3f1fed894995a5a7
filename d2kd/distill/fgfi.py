"""FGFI: fine-grained feature imitation near objects (Wang et al., CVPR 2019, METHODS.md §2).

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
count over levels. Two-stage students use the RPN's anchors, RetinaNet students the head's.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from detectron2.structures import Boxes, pairwise_iou

from .base import DISTILLER_REGISTRY, Distiller, KDSchedule, check_levels, check_same_spatial_size, float32, zero_loss

__all__ = ["FGFI", "fgfi_masks", "pairwise_iou_plus_one", "init_adapter_weight"]


def pairwise_iou_plus_one(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU (M, N) with the "+1" pixel convention of faster-rcnn.pytorch's ``bbox_overlaps_batch``:
    widths/heights are ``x2 − x1 + 1``; a GT of size 1×1 (i.e. a zero box) gets IoU 0 everywhere,
    an anchor of size 1×1 gets −1 (as in the reference)."""
    a, b = boxes1, boxes2
    aw, ah = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    bw, bh = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    iw = (torch.min(a[:, None, 2], b[None, :, 2]) - torch.max(a[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    ih = (torch.min(a[:, None, 3], b[None, :, 3]) - torch.max(a[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    inter = iw * ih
    iou = inter / ((aw * ah)[:, None] + (bw * bh)[None, :] - inter)
    iou = iou.masked_fill(((bw == 1) & (bh == 1))[None, :], 0.0)
    iou = iou.masked_fill(((aw == 1) & (ah == 1))[:, None], -1.0)
    return iou


def fgfi_masks(
    anchors: Sequence[Boxes],
    grid_sizes: Sequence[Sequence[int]],
    gt_boxes: Tensor,
    *,
    psi: float = 0.5,
    iou_plus_one: bool = True,
    max_over: str = "all_levels",
) -> List[Tensor]:
    """FGFI imitation masks of one image (§2.1), one boolean (H, W) map per level.

    Args:
        anchors: per level, the H*W*A anchors in Detectron2's order (location-major, then A).
        grid_sizes: per level, (H, W) of the feature map the anchors belong to.
        gt_boxes: (G, 4) XYXY GT boxes of the image (G may be 0: all-False masks).
        psi: ψ, the fraction of the GT's best IoU an anchor must exceed (strictly).
        iou_plus_one: "+1" pixel IoU (reference parity) or Detectron2's ``pairwise_iou``.
        max_over: ``"all_levels"`` (threshold from the max over the anchors of every given level)
            or ``"per_level"`` (each level's own max).
    """
    if max_over not in ("all_levels", "per_level"):
        raise ValueError(f"FGFI: max_over must be 'all_levels' or 'per_level', got {max_over!r}")
    if len(anchors) != len(grid_sizes):
        raise ValueError(f"FGFI: {len(anchors)} anchor levels but {len(grid_sizes)} grid sizes")
    device = gt_boxes.device
    if gt_boxes.numel() == 0:
        return [torch.zeros(tuple(hw), dtype=torch.bool, device=device) for hw in grid_sizes]
    gt = gt_boxes.float()
    ious = []
    for a, (h, w) in zip(anchors, grid_sizes):
        at = a.tensor if isinstance(a, Boxes) else a
        if at.shape[0] % (h * w) != 0:
            raise ValueError(f"FGFI: {at.shape[0]} anchors do not tile a {h}x{w} feature map")
        iou = pairwise_iou_plus_one(at.float(), gt) if iou_plus_one else pairwise_iou(Boxes(at.float()), Boxes(gt))
        ious.append(iou.view(h, w, -1, gt.shape[0]))  # (H, W, A, G)
    if max_over == "all_levels":
        best = torch.stack([iou.flatten(0, 2).max(dim=0).values for iou in ious]).max(dim=0).values
        thresholds = [psi * best] * len(ious)
    else:
        thresholds = [psi * iou.flatten(0, 2).max(dim=0).values for iou in ious]
    # any anchor at the location, any GT
    return [(iou > thr).any(dim=3).any(dim=2) for iou, thr in zip(ious, thresholds)]


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
            in_features: levels to imitate, a subset of the anchor source's levels (the RPN's
                ``in_features`` or RetinaNet's ``head_in_features``); None = all of them.
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
        self.source = None  # "rpn" or "head"
        self._anchor_levels: List[str] = []
        self._last_mask_counts: Dict[str, int] = {}

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student, teacher) -> None:
        parts = getattr(student, "student_parts", ())
        if "rpn" in parts and getattr(student, "proposal_generator", None) is not None:
            self.source, self._anchor_levels = "rpn", list(student.proposal_generator.in_features)
        elif "head" in parts and hasattr(student, "head_in_features"):
            self.source, self._anchor_levels = "head", list(student.head_in_features)
        else:
            raise ValueError(
                f"FGFI needs anchors from an RPN or a dense head; {type(student).__name__} records {list(parts)}"
            )
        if self.in_features is None:
            self.in_features = list(self._anchor_levels)
        if not self.in_features:
            raise ValueError("FGFI: in_features must name at least one level")
        unknown = [f for f in self.in_features if f not in self._anchor_levels]
        if unknown:
            raise ValueError(
                f"FGFI: levels {unknown} have no anchors: the student's {self.source} uses {self._anchor_levels}"
            )
        s_shapes, t_shapes = student.backbone.output_shape(), teacher.output_shape()
        check_levels("FGFI", self.in_features, s_shapes, t_shapes)
        for level in self.in_features:
            conv = nn.Conv2d(s_shapes[level].channels, t_shapes[level].channels, kernel_size=3, padding=1)
            init_adapter_weight(conv.weight, self.adapter_init_std, self.adapter_init)
            self.adapters[level] = nn.Sequential(conv, nn.ReLU()) if self.adapter_relu else nn.Sequential(conv)

    def teacher_needs(self):
        return {"features"}

    def student_needs(self):
        return {self.source} if self.source else set()

    # ---- computing --------------------------------------------------------------------------
    def anchors_of(self, student_record) -> Dict[str, Boxes]:
        anchors = (student_record.rpn if self.source == "rpn" else student_record.head).anchors
        return {level: anchors[self._anchor_levels.index(level)] for level in self.in_features}

    def masks(self, student_record) -> List[List[Tensor]]:
        """Per image, per level of ``in_features``: the boolean (H, W) imitation mask."""
        anchors = self.anchors_of(student_record)
        levels = self.in_features
        grids = [tuple(student_record.features[f].shape[-2:]) for f in levels]
        return [
            fgfi_masks(
                [anchors[f] for f in levels],
                grids,
                inst.gt_boxes.tensor,
                psi=self.psi,
                iou_plus_one=self.iou_plus_one,
                max_over=self.max_over,
            )
            for inst in student_record.gt_instances
        ]

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        with torch.no_grad():
            per_image = self.masks(student)
        total, adapted_all = None, []
        count, counts = 0, {}
        for k, level in enumerate(self.in_features):
            s, t = student.features[level], teacher.features[level]
            check_same_spatial_size("FGFI", level, s, t)
            adapted = float32(self.adapters[level](s))
            adapted_all.append(adapted)
            mask = torch.stack([m[k] for m in per_image]).to(adapted.dtype)  # (N, H, W)
            counts[level] = mask.sum()
            count = count + counts[level]
            term = (((adapted - float32(t)) ** 2).sum(dim=1) * mask).sum()
            total = term if total is None else total + term
        # mask cells per level in the last batch (diagnostics, tests)
        self._last_mask_counts = {k: int(v) for k, v in counts.items()}
        if float(count) == 0:  # no GT in the batch: nothing to imitate, a graph-keeping zero
            return {"imitation": sum(zero_loss(a) for a in adapted_all)}
        return {"imitation": total / (2.0 * count)}
