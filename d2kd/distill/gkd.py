"""GKD: Tang et al., ECCV 2022, "Distilling Object Detectors with Global Knowledge" — the Robust
Distilling Module (RDM); docs/methods.md §4.2. The prototypes come from the PGM
(:mod:`d2kd.distill.gkd_prototypes`), which the distiller runs itself from the training forward
(:meth:`GKD.before_step`), so any trainer that calls ``model(batch)`` gets it.

Reference: ``hikvision-research/DAVAR-Lab-ML``, ``ECCV22_Distilling_Object_Detectors_with_Global_
Knowledge/ObjectPerceptron/mmdetection/third_party/kd``: ``mmdet/strategy/kd_one_stage_strategy.py``
(``get_gt_mask``, ``r2i_om_loss``, ``_map_roi_levels``, ``soft_weight``),
``kd_two_stage_strategy.py`` (``r2i_soft_weight``), ``mmdet/models/losses/kd_loss.py``
(``KDLoss``) and ``configs/faster_rcnn_coco_kd_config.py`` (the released settings, the defaults
here).

For an instance i of class c_i (box ``x1 y1 x2 y2``):

* level ``ℓ_i = clip(⌊log2(√((w+1)(h+1))/56 + 1e-6)⌋, 0, L−1)`` (``_map_roi_levels``; 56 =
  ``canonical_size``, configurable for small images);
* ``f_i`` = mean of the raw FPN map of level ℓ_i over the cells ``⌊y1/s⌋ … ⌊y2/s⌋`` ×
  ``⌊x1/s⌋ … ⌊x2/s⌋`` (inclusive; s = stride), in the student and the teacher;
* global representation ``φ_i = cos(f_i, P_{c_i,ℓ_i})`` over the class's prototypes, per space;
* robustness weight (detached) ``w_i = 1 − |max φ^S_i − max φ^T_i|``.

Losses (each term is returned unweighted by the meta-arch's ``weight × schedule``):

* ``point_fg``, ``point_bg`` — DeFeat-style decoupled feature imitation per level ℓ, with the
  weighted mask ``M_ℓ`` (``w_i`` on cells ``[⌊y1/s⌋, ⌊y2/s⌋) × [⌊x1/s⌋, ⌊x2/s⌋)`` of each
  instance of level ℓ, end-exclusive, later instances overwrite; a degenerate box sets the
  single cell ``(⌊y1/s⌋, ⌊x1/s⌋)`` to ``max(cell, w_i)``), ``B_ℓ = 1 − 1[M_ℓ > 0]``, the
  adapted student ``ŝ = A_ℓ(s)`` (3×3 conv, pad 1, no activation, PyTorch default init):
  ``L_fg,ℓ = Σ M (ŝ − t)² / max(1, 2·C·ΣM)``, ``L_bg,ℓ = Σ B (ŝ − t)² / max(1, 2·C·ΣB)``
  (sums over the whole batch), ``point_fg = fg_weight · (1/L) Σ_ℓ L_fg,ℓ · att``,
  ``point_bg = bg_weight · (1/L) Σ_ℓ L_bg,ℓ · att`` with ``att = 1 − iter/max_iter``
  (the reference's ``1 − epoch/max_epochs``; ``attenuation="epoch"`` steps it per PGM period).
* ``soft`` — ``soft_weight · mean_i [w_i · T² · mean_c KL(softmax(z_t/T) ‖ softmax(z_s/T))_c]``
  on the positive instances (``knowledge_distillation_kl_div_loss``: ``kl_div(...,
  reduction='none').mean(1) · T² · w``, then the mean), T = 2, not attenuated. Faster R-CNN: the
  student's positive sampled proposals (student and teacher ROI logits on the same boxes), with
  ``w_i`` from the 7×7 RoIAlign features average-pooled (level of the ROI pooler).
  RetinaNet: the positive anchors' K class logits (see "RetinaNet" below).
* ``global`` (``global_loss=True``; off in the released config, the code's
  ``pair_wise='use_r2i'``): per level ℓ, ``SmoothL1(w_ℓ ⊙ Φ^S_ℓ, w_ℓ ⊙ Φ^T_ℓ)`` (mean), Φ_ℓ =
  cosine similarities of every instance's crop at level ℓ to all prototypes of all classes at
  ℓ, ``w_ℓ,i`` the robustness weight recomputed at ℓ (crops and prototypes of ℓ), summed over
  levels, × ``global_weight`` (5 in the config) × att.

Instances (``proposal_replace_gt=True``, the released config): the positive sampled proposals
(``add_gt_as_proposals``) with their assigned classes replace the GT boxes for masks and weights
(RetinaNet: the positive anchors with their assigned classes, as mmdet's sampling result
``pos_bboxes`` are the anchors); ``False``: the GT boxes.

Before the PGM has produced prototypes (``proto_period < 0``) every ``w_i`` is 1 (logged once);
a (class, level) without prototypes gives ``w_i = 1`` too.

RetinaNet (only a two-stage config is released; ``kd_one_stage_strategy.py`` is the partial
specification): same point loss on P3–P7 with the same level rule; the soft-label loss on the
positive anchors with ``w_i`` from the raw FPN crops of the anchor boxes (``soft_weight``), by
default the reference's ``KDLoss`` as written (softmax over the K sigmoid logits,
``retina_soft="softmax"``), or a per-class binary KL averaged over classes
(``retina_soft="sigmoid"``). The one-stage reference sums the per-level point losses instead of
averaging them (``level_reduction="sum"``; the RetinaNet config uses it).
"""
import logging
from collections.abc import Mapping
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.structures import Boxes

from ..records import BoxPooling, ClassifierLayout, record_layout
from .base import DISTILLER_REGISTRY, Distiller, check_levels, check_same_spatial_size, float32, zero_loss
from .gkd_prototypes import PGMData, PrototypeGenerator

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def assign_levels(boxes: Tensor, num_levels: int, canonical_size: float = 56.0) -> Tensor:
    """``clip(⌊log2(√((x2−x1+1)(y2−y1+1))/canonical + 1e-6)⌋, 0, num_levels−1)`` (``_map_roi_levels``)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.float()
    scale = torch.sqrt((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1))
    levels = torch.floor(torch.log2(scale / canonical_size + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def _cells(v: float, stride: float) -> int:
    return int(abs(v) / stride)


def pool_boxes(feature: Tensor, boxes: Tensor, image_idx: Tensor, stride: float) -> Tensor:
    """Mean of ``feature[b, :, ⌊y1/s⌋ : ⌊y2/s⌋+1, ⌊x1/s⌋ : ⌊x2/s⌋+1]`` per box (the reference's
    ``r2i_om_loss`` crop: ``int(abs(y)/s)``, inclusive end). Differentiable; (n, C).
    A crop starting beyond the map is clamped to its last cell."""
    N, C, H, W = feature.shape
    if boxes.shape[0] == 0:
        return feature.new_zeros((0, C))
    out = []
    for (x1, y1, x2, y2), b in zip(boxes.detach().cpu().tolist(), image_idx.cpu().tolist()):
        ly, lx = min(_cells(y1, stride), H - 1), min(_cells(x1, stride), W - 1)
        hy, hx = max(_cells(y2, stride) + 1, ly + 1), max(_cells(x2, stride) + 1, lx + 1)
        out.append(feature[b, :, ly:hy, lx:hx].mean(dim=(1, 2)))
    return torch.stack(out)


def robustness_weights(
    f_s: Tensor,
    f_t: Tensor,
    classes: Tensor,
    levels: Tensor,
    proto_s: Tensor,
    proto_t: Tensor,
    valid: Tensor,
) -> Tensor:
    """``w_i = 1 − |max_k cos(f^S_i, P^S_{c_i,ℓ_i,k}) − max_k cos(f^T_i, P^T_{c_i,ℓ_i,k})|``, detached.

    ``proto_*``: (L, num_classes, K, C); ``valid``: (L, num_classes) bool. An instance whose
    (class, level) has no prototypes gets 1.
    """
    n = f_s.shape[0]
    if n == 0:
        return f_s.new_ones(0)
    with torch.no_grad():
        levels, classes = levels.long(), classes.long()
        ps = proto_s[levels, classes].float()  # (n, K, Cs)
        pt = proto_t[levels, classes].float()
        cos_s = torch.einsum("nc,nkc->nk", F.normalize(f_s.float(), dim=1), F.normalize(ps, dim=2))
        cos_t = torch.einsum("nc,nkc->nk", F.normalize(f_t.float(), dim=1), F.normalize(pt, dim=2))
        w = 1.0 - (cos_s.max(dim=1).values - cos_t.max(dim=1).values).abs()
        return torch.where(valid[levels, classes], w, torch.ones_like(w))


def weighted_mask(
    boxes: Tensor, image_idx: Tensor, weights: Tensor, num_images: int, height: int, width: int, stride: float
) -> Tensor:
    """``M`` (num_images, H, W) of ``get_gt_mask`` with weights: for each box in order,
    ``lx = max(⌊x1/s⌋, 0)``, ``rx = min(⌊x2/s⌋, W)`` (same for y); ``M[ly:ry, lx:rx] = w``
    (end-exclusive, later boxes overwrite), or, if ``lx == rx`` or ``ly == ry``,
    ``M[ly, lx] = max(M[ly, lx], w)``."""
    # Built on the CPU (many small writes), then moved to the weights' device.
    mask = torch.zeros((num_images, height, width), dtype=torch.float32)
    for (x1, y1, x2, y2), b, w in zip(
        boxes.detach().cpu().tolist(), image_idx.cpu().tolist(), weights.detach().float().cpu().tolist()
    ):
        lx, rx = max(int(x1 / stride), 0), min(int(x2 / stride), width)
        ly, ry = max(int(y1 / stride), 0), min(int(y2 / stride), height)
        if lx == rx or ly == ry:
            cy, cx = min(ly, height - 1), min(lx, width - 1)
            mask[b, cy, cx] = max(float(mask[b, cy, cx]), w)
        else:
            mask[b, ly:ry, lx:rx] = w
    return mask.to(weights.device)


def decoupled_feature_loss(adapted: Tensor, target: Tensor, mask: Tensor):
    """``(Σ M (ŝ−t)² / max(1, 2·C·ΣM), Σ B (ŝ−t)² / max(1, 2·C·ΣB))`` with ``B = 1 − 1[M > 0]``
    (``KDLoss``, ``p_str='decouple'``; M is (N, H, W), broadcast over the C channels)."""
    diff = (float32(adapted) - float32(target)) ** 2
    C = diff.shape[1]
    fg_mask = mask.to(diff.dtype)
    bg_mask = (mask <= 0).to(diff.dtype)
    fg = (diff * fg_mask[:, None]).sum() / torch.clamp(2.0 * C * fg_mask.sum(), min=1.0)
    bg = (diff * bg_mask[:, None]).sum() / torch.clamp(2.0 * C * bg_mask.sum(), min=1.0)
    return fg, bg


def weighted_softmax_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, weights: Tensor) -> Tensor:
    """``mean_i [w_i · T² · mean_c p_t,c (log p_t,c − log p_s,c)]``, softmax over dim 1."""
    if student_logits.shape[0] == 0:
        return zero_loss(student_logits)
    T = temperature
    log_p_s = F.log_softmax(float32(student_logits) / T, dim=1)
    p_t = F.softmax(float32(teacher_logits) / T, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="none").mean(dim=1) * (T * T)
    return (kl * weights.to(kl.dtype)).mean()


def weighted_sigmoid_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, weights: Tensor) -> Tensor:
    """``mean_i [w_i · T² · mean_c KL(Bern(σ(z_t,c/T)) ‖ Bern(σ(z_s,c/T)))]``."""
    if student_logits.shape[0] == 0:
        return zero_loss(student_logits)
    T = temperature
    s, t = float32(student_logits) / T, float32(teacher_logits) / T
    q = torch.sigmoid(t)
    kl = F.binary_cross_entropy_with_logits(s, q, reduction="none") - F.binary_cross_entropy_with_logits(
        t, q, reduction="none"
    )
    return (kl.mean(dim=1) * (T * T) * weights.to(kl.dtype)).mean()


# ---------------------------------------------------------------------------------------------
# The distiller
# ---------------------------------------------------------------------------------------------
@DISTILLER_REGISTRY.register()
class GKD(Distiller):
    name = "gkd"

    def __init__(
        self,
        *,
        in_features: Optional[Sequence[str]] = None,
        use_point: bool = True,
        fg_weight: float = 1.0,
        bg_weight: float = 4.0,
        level_reduction: str = "mean",
        use_soft_label: bool = True,
        soft_weight: float = 1.0,
        temperature: float = 2.0,
        retina_soft: str = "softmax",
        use_robust_weights: bool = True,
        proposal_replace_gt: bool = True,
        canonical_size: float = 56.0,
        global_loss: bool = False,
        global_weight: float = 5.0,
        attenuation: str = "linear",
        max_iter: Optional[int] = None,
        num_prototypes: int = 10,
        alpha: float = 10.0,
        density_sigma: float = 0.1,
        density_quantile: float = 0.4,
        pgm_min_box_size: float = 30.0,
        pgm_max_images_per_class: int = 800,
        pgm_min_instances: int = 1,
        pgm_period: Optional[int] = None,
        pgm_seed: int = 1,
        pgm_enabled: bool = True,
        pgm_data=None,
        weight: float = 1.0,
        schedule=None,
    ):
        """
        Args:
            in_features: FPN levels (default: the RPN's levels for Faster R-CNN, P2–P6; the
                head's for RetinaNet, P3–P7).
            use_point, fg_weight, bg_weight: the decoupled feature loss and its weights (1, 4).
            level_reduction: "mean" (the two-stage reference, ``(1/L) Σ_ℓ``) or "sum" (the
                one-stage reference).
            use_soft_label, soft_weight, temperature: the weighted soft-label loss (1, T = 2).
            retina_soft: RetinaNet soft labels: "softmax" (the reference ``KDLoss``) or "sigmoid".
            use_robust_weights: weight instances by ``w_i`` (``use_pair_kd``); False gives a
                binary mask and unweighted soft labels.
            proposal_replace_gt: instances are the positive proposals/anchors (True) or the GT.
            canonical_size: 56 in the level rule (smaller for small images).
            global_loss, global_weight: the optional global (``use_r2i``) loss, × 5.
            attenuation: "linear" (``1 − iter/max_iter``), "epoch" (``1 − ⌊iter/period⌋·period/
                max_iter``, the reference's per-epoch step) or "none".
            max_iter: the run's length, for the attenuation (LazyConfig: ``"${train.max_iter}"``;
                yacs: ``SOLVER.MAX_ITER``); needed unless ``attenuation="none"``.
            num_prototypes, alpha, density_sigma, density_quantile: PGM (10, 10, 0.1, 0.4).
            pgm_min_box_size, pgm_max_images_per_class: PGM instance filter (30 px, 800 images).
            pgm_min_instances: a class with fewer instances keeps its previous prototypes.
            pgm_period: iterations between PGM runs (default: one epoch of the training set).
            pgm_seed: seed of the PGM's image sampling.
            pgm_enabled: run the PGM (False: prototypes only from a checkpoint).
            pgm_data: the images the PGM reads: a :class:`~d2kd.distill.gkd_prototypes.PGMData`
                or a LazyConfig ``dataloader`` section (``pgm_data="${dataloader}"``, as d2kd's
                configs write it); yacs: ``DATASETS.TRAIN`` and the test-time resize.
        """
        super().__init__(weight=weight, schedule=schedule)
        if level_reduction not in ("mean", "sum"):
            raise ValueError(f"GKD: level_reduction must be 'mean' or 'sum', got {level_reduction!r}")
        if retina_soft not in ("softmax", "sigmoid"):
            raise ValueError(f"GKD: retina_soft must be 'softmax' or 'sigmoid', got {retina_soft!r}")
        if attenuation in (None, False):
            attenuation = "none"
        if attenuation is True:
            attenuation = "linear"
        if attenuation not in ("linear", "epoch", "none"):
            raise ValueError(f"GKD: attenuation must be 'linear', 'epoch' or 'none', got {attenuation!r}")
        if temperature <= 0:
            raise ValueError(f"GKD: temperature must be > 0, got {temperature}")
        if num_prototypes < 1:
            raise ValueError(f"GKD: num_prototypes must be >= 1, got {num_prototypes}")
        self.in_features = list(in_features) if in_features else None
        self.use_point = bool(use_point)
        self.fg_weight, self.bg_weight = self.check_weight("fg_weight", fg_weight), self.check_weight("bg_weight", bg_weight)
        self.level_reduction = level_reduction
        self.use_soft_label, self.soft_weight = bool(use_soft_label), self.check_weight("soft_weight", soft_weight)
        self.temperature, self.retina_soft = float(temperature), retina_soft
        self.use_robust_weights = bool(use_robust_weights)
        self.proposal_replace_gt = bool(proposal_replace_gt)
        self.canonical_size = float(canonical_size)
        self.global_loss, self.global_weight = bool(global_loss), self.check_weight("global_weight", global_weight)
        self.attenuation, self.period = attenuation, None
        self.max_iter = None if max_iter is None else int(max_iter)
        self.num_prototypes, self.alpha = int(num_prototypes), float(alpha)
        self.density_sigma, self.density_quantile = float(density_sigma), float(density_quantile)
        self.pgm_min_box_size = float(pgm_min_box_size)
        self.pgm_max_images_per_class = int(pgm_max_images_per_class)
        self.pgm_min_instances = int(pgm_min_instances)
        self.pgm_period, self.pgm_seed, self.pgm_enabled = pgm_period, int(pgm_seed), bool(pgm_enabled)
        if isinstance(pgm_data, Mapping):  # a LazyConfig dataloader section
            pgm_data = PGMData.from_dataloader_config(pgm_data)
        if pgm_data is not None and not isinstance(pgm_data, PGMData):
            raise ValueError(
                f"GKD: pgm_data must be a PGMData or a LazyConfig dataloader section (pgm_data="
                f"\"${{dataloader}}\"), got {type(pgm_data).__name__}"
            )
        self.pgm_data = pgm_data
        self._pgm: Optional[PrototypeGenerator] = None
        self._iteration = 0  # the training iteration of the current step (before_step)
        self.adapters = nn.ModuleDict()
        self._classifier: Optional[ClassifierLayout] = None  # the student's, from bind()
        self._poolings: Optional[Tuple[BoxPooling, BoxPooling]] = None  # (student, teacher)
        self.num_classes = None
        self._warned_no_prototypes = False

    # ---- building -----------------------------------------------------------------------------
    def bind(self, student, teacher) -> None:
        layout = record_layout(student)
        if layout.classifier is None or layout.anchors is None:
            raise ValueError(
                f"GKD needs anchors and a final classifier (Faster R-CNN, RetinaNet); "
                f"{type(student).__name__} records {layout.parts}"
            )
        self._classifier = layout.classifier
        if self.in_features is None:
            self.in_features = list(layout.anchors.levels)
        s_shapes, t_shapes = student.backbone.output_shape(), teacher.output_shape()
        check_levels("GKD", self.in_features, s_shapes, t_shapes)
        self.strides = [s_shapes[f].stride for f in self.in_features]
        for level in self.in_features:
            # 3×3, pad 1, no activation, PyTorch default init (the two-stage reference).
            self.adapters[level] = nn.Conv2d(s_shapes[level].channels, t_shapes[level].channels, 3, padding=1)
        self.num_classes = layout.classifier.num_classes
        L, K = len(self.in_features), self.num_prototypes
        cs, ct = s_shapes[self.in_features[0]].channels, t_shapes[self.in_features[0]].channels
        for f in self.in_features:
            if s_shapes[f].channels != cs or t_shapes[f].channels != ct:
                raise ValueError(
                    f"GKD: every level must have the same channels (prototype buffers); student "
                    f"{ {f: s_shapes[f].channels for f in self.in_features} }, teacher "
                    f"{ {f: t_shapes[f].channels for f in self.in_features} }"
                )
        self.register_buffer("proto_student", torch.zeros(L, self.num_classes, K, cs))
        self.register_buffer("proto_teacher", torch.zeros(L, self.num_classes, K, ct))
        self.register_buffer("proto_valid", torch.zeros(L, self.num_classes, dtype=torch.bool))
        self.register_buffer("proto_period", torch.tensor(-1, dtype=torch.long))
        if self.attenuation != "none" and not self.max_iter:
            raise ValueError(
                f"GKD: attenuation='{self.attenuation}' (1 - iter/max_iter) needs max_iter, the run's "
                f"length: pass max_iter (LazyConfig: max_iter=\"${{train.max_iter}}\", as d2kd's "
                f"configs do), or attenuation='none'"
            )
        if self.pgm_enabled:
            if self.pgm_data is None:
                raise ValueError(
                    "GKD: the PGM (pgm_enabled=True) needs the training images to build its "
                    "prototypes from: pass pgm_data (LazyConfig: pgm_data=\"${dataloader}\", as "
                    "d2kd's configs do; the yacs route passes DATASETS.TRAIN itself), or "
                    "pgm_enabled=False to use prototypes from a checkpoint only"
                )
            if not self.pgm_period and not self.pgm_data.total_batch_size:
                raise ValueError(
                    "GKD: pgm_period=None (one epoch) needs the training batch size: give "
                    "pgm_period, or pgm_data with total_batch_size"
                )
            self._pgm = PrototypeGenerator(self, self.pgm_data)
        t_classifier = teacher.layout().classifier
        if (self.use_soft_label and self._classifier.pooling is not None
                and t_classifier is not None and t_classifier.pooling is not None):
            # A classifier on pooled box features (R-CNN): the soft labels' weights come from
            # both models' own poolers (r2i_soft_weight). A teacher without that classifier is
            # refused by the meta-architecture (teacher needs), naming the fix.
            self._poolings = (self._classifier.pooling, t_classifier.pooling)

    def teacher_needs(self):
        needs = {"features"}
        if self.use_soft_label and self._classifier is not None:
            needs.add(self._classifier.part)
        return needs

    def student_needs(self):
        return {self._classifier.part} if self._classifier is not None else set()

    def paired_needs(self):
        # soft labels compare the positive rows' logits; rows that are anchors must coincide
        return self._classifier.paired_parts() if self.use_soft_label and self._classifier is not None else set()

    def without(self, part: str):
        if part in ("roi", "head"):
            return "use_soft_label=False (feature imitation only, no soft-label term)"
        return None

    @classmethod
    def context_from_yacs(cls, cfg) -> Dict:
        """The training set and length of a yacs config (``DATASETS.TRAIN``, ``SOLVER``)."""
        return {"pgm_data": PGMData.from_yacs(cfg), "max_iter": cfg.SOLVER.MAX_ITER}

    def before_step(self, iteration: int, model) -> None:
        """The PGM at the first step and at the start of every period (prototypes already in a
        resumed checkpoint for the current period are kept)."""
        self._iteration = iteration
        if self._pgm is not None:
            self._pgm.maybe_update(iteration, model)

    # ---- prototypes ---------------------------------------------------------------------------
    def set_prototypes(self, level: int, cls: int, proto_s: Tensor, proto_t: Tensor) -> None:
        self.proto_student[level, cls] = proto_s.to(self.proto_student)
        self.proto_teacher[level, cls] = proto_t.to(self.proto_teacher)
        self.proto_valid[level, cls] = True

    def has_prototypes(self) -> bool:
        return int(self.proto_period) >= 0 and bool(self.proto_valid.any())

    def set_training_length(self, *, period: int, max_iter: Optional[int] = None) -> None:
        """The PGM period (for ``attenuation="epoch"``) and, if not given, the run's length."""
        if self.max_iter is None and max_iter is not None:
            self.max_iter = int(max_iter)
        self.period = int(period)

    def attenuation_factor(self, iteration: int) -> float:
        if self.attenuation == "none" or not self.max_iter:
            return 1.0
        if self.attenuation == "epoch" and self.period:
            iteration = (iteration // self.period) * self.period
        return max(0.0, 1.0 - iteration / float(self.max_iter))

    # ---- instances ----------------------------------------------------------------------------
    def _instances(self, student):
        """(boxes (n, 4), classes (n,), image index (n,)) of the instances the RDM weighs: the
        classifier's foreground rows (positive proposals or anchors, in row order) or the GT."""
        if self.proposal_replace_gt:
            view = student.classifier_view()
            pos = view.foreground()
            return view.boxes[pos].detach().float(), view.labels[pos].long(), view.image_index[pos]
        boxes, classes, index = [], [], []
        for i, inst in enumerate(student.gt_instances):
            boxes.append(inst.gt_boxes.tensor)
            classes.append(inst.gt_classes)
            index.append(torch.full((len(inst),), i, dtype=torch.long, device=inst.gt_classes.device))
        device = student.features[self.in_features[0]].device
        if not boxes:
            return torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device), torch.zeros(
                0, dtype=torch.long, device=device
            )
        return torch.cat(boxes).detach().float(), torch.cat(classes).long(), torch.cat(index)

    def _map_weights(self, s_feats, t_feats, boxes, classes, index, levels) -> Tensor:
        """``w_i`` from the raw FPN crops of each instance at its own level."""
        w = torch.ones(boxes.shape[0], device=boxes.device)
        if not self.use_robust_weights or boxes.shape[0] == 0:
            return w
        if not self.has_prototypes():
            if not self._warned_no_prototypes:
                logger.warning("GKD: no prototypes yet (the PGM has not run): robustness weights are 1")
                self._warned_no_prototypes = True
            return w
        with torch.no_grad():
            for lvl in range(len(self.in_features)):
                sel = torch.nonzero(levels == lvl, as_tuple=False).flatten()
                if sel.numel() == 0:
                    continue
                stride = self.strides[lvl]
                fs = pool_boxes(s_feats[lvl].detach(), boxes[sel], index[sel], stride)
                ft = pool_boxes(t_feats[lvl], boxes[sel], index[sel], stride)
                w[sel] = robustness_weights(
                    fs, ft, classes[sel], levels[sel], self.proto_student, self.proto_teacher, self.proto_valid
                ).to(w.dtype)
        return w

    # ---- losses -------------------------------------------------------------------------------
    def forward(self, student, teacher) -> Dict[str, Tensor]:
        att = self.attenuation_factor(self._iteration)
        s_feats = [student.features[f] for f in self.in_features]
        # fp32 teacher maps (a teacher under autocast records bf16/fp16; the losses are fp32)
        t_feats = [float32(teacher.features[f]) for f in self.in_features]
        for f, s, t in zip(self.in_features, s_feats, t_feats):
            check_same_spatial_size("GKD", f, s, t)
        boxes, classes, index = self._instances(student)
        levels = assign_levels(boxes, len(self.in_features), self.canonical_size)
        w = self._map_weights(s_feats, t_feats, boxes, classes, index, levels)
        losses = {}
        if self.use_point:
            fg_terms, bg_terms = [], []
            for lvl, (f, s, t) in enumerate(zip(self.in_features, s_feats, t_feats)):
                sel = levels == lvl
                N, _, H, W = t.shape
                mask = weighted_mask(boxes[sel], index[sel], w[sel], N, H, W, self.strides[lvl])
                fg, bg = decoupled_feature_loss(self.adapters[f](s), t, mask)
                fg_terms.append(fg)
                bg_terms.append(bg)
            reduce = (lambda x: sum(x) / len(x)) if self.level_reduction == "mean" else sum
            losses["point_fg"] = self.fg_weight * reduce(fg_terms) * att
            losses["point_bg"] = self.bg_weight * reduce(bg_terms) * att
        if self.use_soft_label:
            losses["soft"] = self.soft_weight * self._soft_loss(student, teacher, s_feats, t_feats, w)
        if self.global_loss:
            losses["global"] = self.global_weight * self._global_loss(s_feats, t_feats, boxes, classes, index) * att
        return losses

    def _soft_loss(self, student, teacher, s_feats, t_feats, instance_weights) -> Tensor:
        s, t = student.classifier_view(), teacher.classifier_view()
        pos = s.foreground()
        if not bool(pos.any()):
            return zero_loss(s.logits)
        if self._poolings is not None:
            w = self._pooled_weights(student, teacher, s, pos)
        elif self.proposal_replace_gt:
            w = instance_weights  # the instances ARE the foreground rows, in the same order
        else:
            boxes, index, classes = s.boxes[pos], s.image_index[pos], s.labels[pos].long()
            levels = assign_levels(boxes, len(self.in_features), self.canonical_size)
            w = self._map_weights(s_feats, t_feats, boxes, classes, index, levels)
        # a softmax classifier's rows are distributions already; sigmoid rows: retina_soft
        kd = weighted_sigmoid_kd if s.probability == "sigmoid" and self.retina_soft == "sigmoid" else weighted_softmax_kd
        return kd(s.logits[pos], t.logits[pos], self.temperature, w)

    def _pooled_weights(self, student, teacher, view, pos) -> Tensor:
        """``w_i`` of the foreground rows from the classifier's own pooled features (7×7
        RoIAlign, average-pooled: ``r2i_soft_weight``), at the level its pooler assigns them."""
        classes = view.labels[pos].long()
        n = len(classes)
        w = torch.ones(n, device=classes.device)
        if not self.use_robust_weights:
            return w
        if not self.has_prototypes():
            if not self._warned_no_prototypes:
                logger.warning("GKD: no prototypes yet (the PGM has not run): robustness weights are 1")
                self._warned_no_prototypes = True
            return w
        s_pool, t_pool = self._poolings
        rows, index = view.boxes[pos], view.image_index[pos]
        pos_boxes = [Boxes(rows[index == i]) for i in range(len(student.images))]
        with torch.no_grad():
            fs = s_pool.pool({f: student.features[f].detach() for f in s_pool.in_features}, pos_boxes).mean(dim=(2, 3))
            # fp32: torchvision's CPU RoIAlign has no bfloat16 kernel (autocast teachers record bf16)
            ft = t_pool.pool({f: float32(teacher.features[f]) for f in t_pool.in_features}, pos_boxes).mean(dim=(2, 3))
            to_proto = torch.tensor(
                [self.in_features.index(f) if f in self.in_features else -1 for f in s_pool.in_features],
                device=classes.device,
            )
            proto_levels = to_proto[s_pool.levels(pos_boxes)]
            ok = proto_levels >= 0
            if bool(ok.any()):
                w[ok] = robustness_weights(
                    fs[ok], ft[ok], classes[ok], proto_levels[ok],
                    self.proto_student, self.proto_teacher, self.proto_valid,
                ).to(w.dtype)
        return w

    def _global_loss(self, s_feats, t_feats, boxes, classes, index) -> Tensor:
        """Σ_ℓ SmoothL1(w_ℓ ⊙ Φ^S_ℓ, w_ℓ ⊙ Φ^T_ℓ) over every instance at every level
        (``r2i_om_loss``). The robustness weight ``w_ℓ,i`` is recomputed at each level from
        that level's crops and prototypes, as the reference does (not the instance's own
        level's weight)."""
        total = zero_loss(s_feats[0])
        if boxes.shape[0] == 0 or not self.has_prototypes():
            return total
        for lvl in range(len(self.in_features)):
            valid = self.proto_valid[lvl]
            if not bool(valid.any()):
                continue
            ps = self.proto_student[lvl][valid].flatten(0, 1)  # (classes × K, Cs)
            pt = self.proto_teacher[lvl][valid].flatten(0, 1)
            fs = pool_boxes(s_feats[lvl], boxes, index, self.strides[lvl])  # with the student's graph
            with torch.no_grad():
                ft = pool_boxes(t_feats[lvl], boxes, index, self.strides[lvl])
                if self.use_robust_weights:
                    w = robustness_weights(
                        fs.detach(), ft, classes, torch.full_like(classes, lvl),
                        self.proto_student, self.proto_teacher, self.proto_valid,
                    )
                else:
                    w = torch.ones(boxes.shape[0], device=boxes.device)
            phi_s = F.normalize(float32(fs), dim=1) @ F.normalize(ps.float(), dim=1).t()
            phi_t = F.normalize(float32(ft), dim=1) @ F.normalize(pt.float(), dim=1).t()
            ww = w.float()[:, None]
            total = total + F.smooth_l1_loss(phi_s * ww, phi_t * ww, reduction="mean")
        return total

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, classifier={self._classifier.part if self._classifier else None}, levels={self.in_features}, fg={self.fg_weight}, "
            f"bg={self.bg_weight}, T={self.temperature}, replace_gt={self.proposal_replace_gt}, "
            f"K={self.num_prototypes}, alpha={self.alpha}, attenuation={self.attenuation}, "
            f"global={self.global_loss}"
        )
