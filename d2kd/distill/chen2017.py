"""Chen et al., NeurIPS 2017, "Learning Efficient Object Detection Models with Knowledge
Distillation" (docs/methods.md §1), on d2kd's SSD and on Detectron2's Faster R-CNN.

Three signals added to the student's own detection losses:

* soft labels (§1.1): ``L_cls = μ·L_hard + (1−μ)·L_soft``, ``L_soft = −Σ_c w_c·P_t,c·log P_s,c``,
  ``P = softmax(z/T)``, ``w_bg = 1.5``, ``w_obj = 1``. The hard term is the detector's own
  classification loss; this distiller scales it by μ through ``detector_loss_scales()`` (applied
  by the meta-architecture, see ``DistillationMixin.scale_detector_losses``) and returns the soft
  term ``(1−μ)·L_soft`` (with the hard loss's normaliser). As in the reference
  (``weighted_KL_div``) ``1e-10`` is added to both probabilities: ``−Σ w_c (p_t+ε) log(p_s+ε)``.
  Temperature: both distributions are ``softmax(z/T)`` and nothing is rescaled (no ×T²), as in
  the reference; T > 1 flattens both and shrinks the soft term's gradient by roughly 1/T²
  against the hard loss (docs/methods.md §1.5: the paper uses T = 1).
* teacher-bounded regression ``L_b`` (only active while the student regresses worse than the
  teacher, margin m), weight ν, inside the regression loss ``λ·(L_reg + L_b)``;
* a hint (L2, weight γ).

Variants (``variant=``):

``"ssd_repo"`` (default on SSD; SsisyphusTao/SSD-Knowledge-Distillation ``nets/multibox_loss.py``)
    ``L = [u·CE_hard + (1−u)·L_soft + λ·(SmoothL1_sum + L_b)] / N_pos + γ·MSE(z_s, z_t)``:
    L_soft summed over the positives + mined negatives (the student's mining); L_b decided once
    per batch on means over the positive priors×4: ``ν·ℓ_s`` if ``ℓ_s + m > ℓ_t`` else 0 with
    ``ℓ = mean((R − y)²)`` (``bounded_regression_loss``); the "hint" is the MSE between the
    student's and the teacher's class logits, mean over all priors×(K+1), γ = 0.5.
    Terms: ``soft`` = (1−u)·L_soft/N_pos, ``bounded`` = λ·L_b/N_pos, ``hint`` = γ·MSE.
``"paper"`` (SSD and Faster R-CNN; §1.1)
    per-box ``L_b = ||R_s − y||²`` if ``||R_s − y||² + m > ||R_t − y||²`` else 0, weighted ν,
    summed over positives with the hard regression loss's normaliser; a true feature hint
    ``γ·mean((A(V) − Z)²)`` through 1×1 conv adapters A (used even when channels match).
    SSD: Z = teacher ``conv4_3`` (ReLU output, stride 8), V = student ``expand7`` (MobileNetV2
    block-7 expansion, stride 8); both must be in the backbones' ``out_features``.
    Faster R-CNN (§1.3): soft CE on RPN objectness as the 2-class distribution ``[1−σ(z), σ(z)]``
    (background = index 0, w_bg) over the sampled anchors (normaliser: RPN batch size per image
    × images, Detectron2's), and on the ROI logits of the student's sampled proposals
    (background LAST, index K; mean over proposals, like Detectron2's CE; the teacher's box head
    runs on the same boxes); L_b on positive anchors and on positive proposals with the
    GT-class deltas (normalisers of Detectron2's loss_rpn_loc / loss_box_reg); hint on every
    common backbone level (C4 ``res4`` or FPN ``p2..p6``), the sum of per-level means.

Teacher tensors are detached (the reference does not detach them, docs/methods.md §1.5).
Hyper-parameters (docs/methods.md §7): mu 0.5, w_bg 1.5, w_obj 1, T 1, nu 0.5, margin 0, lam 1,
gamma_hint 0.5.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..records import check_same_priors, check_ssd_prior_layout
from .base import DISTILLER_REGISTRY, Distiller, check_levels, check_same_spatial_size, float32, zero_loss

__all__ = ["Chen2017", "weighted_soft_ce", "bounded_regression_batch", "bounded_regression_per_box"]

EPS = 1e-10  # the reference's weighted_KL_div epsilon


def class_weights(num_classes: int, bg_index: int, w_bg: float, w_obj: float, ref: Tensor) -> Tensor:
    w = torch.full((num_classes,), float(w_obj), dtype=torch.float32, device=ref.device)
    w[bg_index] = float(w_bg)
    return w


def weighted_soft_ce(student_logits: Tensor, teacher_logits: Tensor, *, bg_index: int,
                     w_bg: float = 1.5, w_obj: float = 1.0, temperature: float = 1.0) -> Tensor:
    """``−Σ_rows Σ_c w_c·(p_t,c + ε)·log(p_s,c + ε)``, ``p = softmax(z/T)`` over the last dim,
    ``w_bg`` on column ``bg_index`` (0 for SSD, K for Detectron2's ROI heads), ``w_obj`` elsewhere.
    A SUM over rows (the caller normalises); 0 (with graph) for no rows."""
    if student_logits.numel() == 0:
        return zero_loss(student_logits)
    T = float(temperature)
    p_s = F.softmax(float32(student_logits) / T, dim=-1)
    p_t = F.softmax(float32(teacher_logits).detach() / T, dim=-1)
    w = class_weights(p_s.shape[-1], bg_index, w_bg, w_obj, p_s)
    return -((p_t + EPS) * torch.log(p_s + EPS) * w).sum()


def bounded_regression_batch(rs: Tensor, rt: Tensor, y: Tensor, margin: float = 0.0, nu: float = 0.5) -> Tensor:
    """The reference's ``bounded_regression_loss``: ``ℓ_s = mean((R_s − y)²)`` over all rows×4,
    ``ν·ℓ_s`` if ``ℓ_s + m > mean((R_t − y)²)`` else 0 (decided once for the batch)."""
    if rs.numel() == 0:
        return zero_loss(rs)
    ls = F.mse_loss(float32(rs), float32(y))
    lt = F.mse_loss(float32(rt).detach(), float32(y))
    return ls * nu if bool(ls + margin > lt) else ls * 0.0


def bounded_regression_per_box(rs: Tensor, rt: Tensor, y: Tensor, margin: float = 0.0) -> Tensor:
    """Paper ``L_b`` per row: ``||R_s − y||²`` if ``||R_s − y||² + m > ||R_t − y||²`` else 0,
    unreduced (R,)."""
    es = ((float32(rs) - float32(y)) ** 2).sum(dim=-1)
    et = ((float32(rt).detach() - float32(y)) ** 2).sum(dim=-1)
    return es * (es + margin > et).to(es.dtype)


def _adapter(c_in: int, c_out: int) -> nn.Conv2d:
    a = nn.Conv2d(c_in, c_out, kernel_size=1)
    nn.init.kaiming_uniform_(a.weight, a=1)
    nn.init.zeros_(a.bias)
    return a


@DISTILLER_REGISTRY.register()
class Chen2017(Distiller):
    """See the module docstring. Loss keys ``loss_kd_chen2017_<term>``: SSD ``soft``,
    ``bounded``, ``hint``; Faster R-CNN ``rpn_soft``, ``rpn_bounded``, ``roi_soft``,
    ``roi_bounded``, ``hint``."""

    name = "chen2017"

    def __init__(
        self,
        *,
        variant: Optional[str] = None,
        mu: float = 0.5,
        w_bg: float = 1.5,
        w_obj: float = 1.0,
        temperature: float = 1.0,
        nu: float = 0.5,
        margin: float = 0.0,
        lam: float = 1.0,
        gamma_hint: float = 0.5,
        student_hint: Optional[str] = None,
        teacher_hint: Optional[str] = None,
        hint_features: Optional[Sequence[str]] = None,
        rpn: bool = True,
        roi: bool = True,
        weight: float = 1.0,
        schedule=None,
    ):
        """
        Args:
            variant: "ssd_repo" (default for an SSD student) or "paper" (default and only choice
                for Faster R-CNN).
            mu: μ (the reference's u), share of the hard classification loss; 1−μ goes to L_soft.
            w_bg, w_obj: class weights of L_soft (background / objects).
            temperature: T of both softmaxes (no T² rescaling).
            nu: ν, weight of L_b. margin: m. lam: λ, weight of the regression losses (the
                detector's own regression loss is scaled by λ too when λ ≠ 1).
            gamma_hint: γ, weight of the hint (ssd_repo: logit MSE; paper: feature L2).
            student_hint, teacher_hint: SSD paper variant: guided/hint layers (default
                "expand7" / "conv4_3").
            hint_features: Faster R-CNN: levels for the hint (default: every level both
                backbones output with the same stride, e.g. res4 or p2..p6).
            rpn, roi: Faster R-CNN: distil the RPN / the ROI head.
        """
        super().__init__(weight=weight, schedule=schedule)
        if variant not in (None, "ssd_repo", "paper"):
            raise ValueError(f"Chen2017: variant must be 'ssd_repo' or 'paper', got {variant!r}")
        if not 0.0 <= mu <= 1.0:
            raise ValueError(f"Chen2017: mu must be in [0, 1], got {mu}")
        if temperature <= 0:
            raise ValueError(f"Chen2017: temperature must be > 0, got {temperature}")
        self.variant = variant
        self.mu, self.w_bg, self.w_obj, self.temperature = float(mu), float(w_bg), float(w_obj), float(temperature)
        self.nu, self.margin = self.check_weight("nu", nu), float(margin)
        self.lam, self.gamma_hint = self.check_weight("lam", lam), self.check_weight("gamma_hint", gamma_hint)
        self.student_hint, self.teacher_hint = student_hint, teacher_hint
        self.hint_features = list(hint_features) if hint_features else None
        self.use_rpn, self.use_roi = bool(rpn), bool(roi)
        self.on = None  # "ssd" or "rcnn", set by bind()
        self.adapters = nn.ModuleDict()

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student, teacher) -> None:
        parts = set(getattr(student, "student_parts", ()))
        if "ssd" in parts:
            self._bind_ssd(student, teacher)
        elif {"rpn", "roi"} <= parts:
            self._bind_rcnn(student, teacher)
        else:
            raise ValueError(
                f"Chen2017 distils SSD (DistillationSSD) and Faster R-CNN (DistillationRCNN) "
                f"students; {type(student).__name__} records {sorted(parts)}")

    def _bind_ssd(self, student, teacher) -> None:
        self.on = "ssd"
        self.variant = self.variant or "ssd_repo"
        check_ssd_prior_layout("Chen2017", student, teacher.model)
        if self.variant == "paper":
            self.student_hint = self.student_hint or "expand7"
            self.teacher_hint = self.teacher_hint or "conv4_3"
            s_shapes, t_shapes = student.backbone.output_shape(), teacher.output_shape()
            for who, level, shapes in (("student", self.student_hint, s_shapes),
                                       ("teacher", self.teacher_hint, t_shapes)):
                if level not in shapes:
                    raise ValueError(
                        f"Chen2017 (paper): the {who} backbone does not output '{level}' (it outputs "
                        f"{sorted(shapes)}); add it to the {who} backbone's out_features")
            s, t = s_shapes[self.student_hint], t_shapes[self.teacher_hint]
            if s.stride != t.stride:
                raise ValueError(
                    f"Chen2017 (paper): student hint '{self.student_hint}' ({s.channels} ch, stride "
                    f"{s.stride}) and teacher hint '{self.teacher_hint}' ({t.channels} ch, stride "
                    f"{t.stride}) must have the same stride")
            self.adapters["hint"] = _adapter(s.channels, t.channels)

    def _bind_rcnn(self, student, teacher) -> None:
        self.on = "rcnn"
        if self.variant == "ssd_repo":
            raise ValueError("Chen2017: variant 'ssd_repo' is the SSD reference's loss; Faster R-CNN "
                             "students use variant='paper'")
        self.variant = "paper"
        tm = teacher.model
        if self.use_rpn:
            s_rpn, t_rpn = student.proposal_generator, getattr(tm, "proposal_generator", None)
            if t_rpn is None:
                raise ValueError(f"Chen2017: the teacher ({type(tm).__name__}) has no RPN to distil")
            s_ag, t_ag = s_rpn.anchor_generator, t_rpn.anchor_generator
            s_lay = (list(s_ag.strides), list(s_ag.num_cell_anchors), [a.tolist() for a in s_ag.cell_anchors])
            t_lay = (list(t_ag.strides), list(t_ag.num_cell_anchors), [a.tolist() for a in t_ag.cell_anchors])
            if s_lay[:2] != t_lay[:2] or not all(
                    torch.allclose(torch.tensor(a), torch.tensor(b)) for a, b in zip(s_lay[2], t_lay[2])):
                raise ValueError(
                    f"Chen2017: RPN anchors differ: student strides {s_lay[0]} x {s_lay[1]} anchors, "
                    f"teacher strides {t_lay[0]} x {t_lay[1]} anchors (or different sizes); the "
                    f"per-anchor terms need the same anchors")
            if tuple(s_rpn.box2box_transform.weights) != tuple(t_rpn.box2box_transform.weights):
                raise ValueError(f"Chen2017: RPN box weights differ: student "
                                 f"{s_rpn.box2box_transform.weights}, teacher {t_rpn.box2box_transform.weights}")
        if self.use_roi:
            if getattr(tm, "roi_heads", None) is None:
                raise ValueError(f"Chen2017: the teacher ({type(tm).__name__}) has no ROI heads to distil")
            s_bt = student.roi_heads.box_predictor.box2box_transform.weights
            t_bt = tm.roi_heads.box_predictor.box2box_transform.weights
            if tuple(s_bt) != tuple(t_bt):
                raise ValueError(f"Chen2017: ROI box weights differ: student {s_bt}, teacher {t_bt}")
        # the students' own target coders and RPN normaliser (checked equal to the teacher's above)
        self._rpn_box2box = student.proposal_generator.box2box_transform
        self._rpn_batch_size = student.proposal_generator.batch_size_per_image
        self._roi_box2box = student.roi_heads.box_predictor.box2box_transform
        s_shapes, t_shapes = student.backbone.output_shape(), teacher.output_shape()
        levels = self.hint_features or [k for k in s_shapes if k in t_shapes and s_shapes[k].stride == t_shapes[k].stride]
        if not levels:
            raise ValueError(f"Chen2017: no common hint level: student has {dict((k, v.stride) for k, v in s_shapes.items())}, "
                             f"teacher {dict((k, v.stride) for k, v in t_shapes.items())} (name: stride)")
        check_levels("Chen2017", levels, s_shapes, t_shapes)
        self.hint_features = list(levels)
        for level in levels:
            self.adapters[level] = _adapter(s_shapes[level].channels, t_shapes[level].channels)

    def teacher_needs(self):
        if self.on == "ssd":
            return {"features", "ssd"}
        if self.on == "rcnn":
            return {"features"} | ({"rpn"} if self.use_rpn else set()) | ({"roi"} if self.use_roi else set())
        return {"features"}

    def student_needs(self):
        return self.teacher_needs() - {"features"}

    def detector_loss_scales(self) -> Dict[str, float]:
        """μ on the hard classification loss(es); λ on the regression loss(es) when λ ≠ 1."""
        if self.on == "ssd":
            cls_keys, reg_keys = ["loss_cls"], ["loss_box_reg"]
        elif self.on == "rcnn":
            cls_keys = (["loss_rpn_cls"] if self.use_rpn else []) + (["loss_cls"] if self.use_roi else [])
            reg_keys = (["loss_rpn_loc"] if self.use_rpn else []) + (["loss_box_reg"] if self.use_roi else [])
        else:
            return {}
        scales = {k: self.mu for k in cls_keys}
        if self.lam != 1.0:
            scales.update({k: self.lam for k in reg_keys})
        return scales

    # ---- computing --------------------------------------------------------------------------
    def forward(self, student, teacher) -> Dict[str, Tensor]:
        return self._forward_ssd(student, teacher) if self.on == "ssd" else self._forward_rcnn(student, teacher)

    def _soft(self, s: Tensor, t: Tensor, bg_index: int) -> Tensor:
        return weighted_soft_ce(s, t, bg_index=bg_index, w_bg=self.w_bg, w_obj=self.w_obj,
                                temperature=self.temperature)

    def _forward_ssd(self, student, teacher) -> Dict[str, Tensor]:
        s, t = student.ssd, teacher.ssd
        check_same_priors("Chen2017", s, t)
        t_logits, t_deltas = t.logits.detach(), t.deltas.detach()
        pos, sel = s.pos_mask, s.pos_mask | s.neg_mask
        n_pos = float(max(s.num_pos, 1))  # the SSD loss's normaliser (clamped like multibox_loss)
        soft = (1.0 - self.mu) * self._soft(s.logits[sel], t_logits[sel], bg_index=0) / n_pos
        rs, rt, y = s.deltas[pos], t_deltas[pos], s.targets[pos]
        if self.variant == "ssd_repo":
            bounded = bounded_regression_batch(rs, rt, y, self.margin, self.nu)
            hint = F.mse_loss(float32(s.logits), float32(t_logits))
        else:
            bounded = self.nu * bounded_regression_per_box(rs, rt, y, self.margin).sum() if rs.numel() else zero_loss(rs)
            sf, tf = student.features[self.student_hint], teacher.features[self.teacher_hint]
            check_same_spatial_size("Chen2017", f"{self.student_hint}->{self.teacher_hint}", sf, tf)
            hint = ((float32(self.adapters["hint"](sf)) - float32(tf).detach()) ** 2).mean()
        return {"soft": soft, "bounded": self.lam * bounded / n_pos, "hint": self.gamma_hint * hint}

    def _forward_rcnn(self, student, teacher) -> Dict[str, Tensor]:
        losses = {}
        if self.use_rpn:
            losses.update(self._rpn_terms(student, teacher))
        if self.use_roi:
            losses.update(self._roi_terms(student, teacher))
        hint = None
        for level in self.hint_features:
            sf, tf = student.features[level], teacher.features[level]
            check_same_spatial_size("Chen2017", level, sf, tf)
            term = ((float32(self.adapters[level](sf)) - float32(tf).detach()) ** 2).mean()
            hint = term if hint is None else hint + term
        losses["hint"] = self.gamma_hint * hint
        return losses

    def _rpn_terms(self, student, teacher) -> Dict[str, Tensor]:
        s, t = student.rpn, teacher.rpn
        s_logits = torch.cat(s.objectness_logits, dim=1)  # (N, R)
        t_logits = torch.cat(t.objectness_logits, dim=1).detach()
        if s_logits.shape != t_logits.shape:
            raise ValueError(f"Chen2017: student RPN has {tuple(s_logits.shape)} anchor logits, teacher "
                             f"{tuple(t_logits.shape)}; the anchors must coincide")
        s_deltas = torch.cat(s.anchor_deltas, dim=1)  # (N, R, 4)
        t_deltas = torch.cat(t.anchor_deltas, dim=1).detach()
        labels = torch.stack(s.gt_labels)  # (N, R): 1 fg, 0 bg, -1 not sampled
        sampled, pos = labels >= 0, labels == 1
        # 2-class distribution [1 − σ(z), σ(z)] = softmax([0, z]); background = index 0
        two = lambda z: torch.stack([torch.zeros_like(z), z], dim=-1)  # noqa: E731
        normalizer = float(self._rpn_batch_size * labels.shape[0])  # Detectron2's RPN normaliser
        soft = (1.0 - self.mu) * self._soft(two(s_logits[sampled]), two(t_logits[sampled]), bg_index=0) / normalizer
        anchors = torch.cat([a.tensor for a in s.anchors], dim=0)  # (R, 4)
        gt_boxes = torch.stack(s.gt_boxes)  # (N, R, 4)
        if pos.any():
            idx = pos.nonzero(as_tuple=True)
            y = self._rpn_box2box.get_deltas(anchors[idx[1]], gt_boxes[idx])
            lb = bounded_regression_per_box(s_deltas[idx], t_deltas[idx], y, self.margin).sum()
        else:
            lb = zero_loss(s_deltas)
        return {"rpn_soft": soft, "rpn_bounded": self.lam * self.nu * lb / normalizer}

    def _roi_terms(self, student, teacher) -> Dict[str, Tensor]:
        s, t = student.roi, teacher.roi
        K = s.scores.shape[1] - 1
        gt_classes = torch.cat([p.gt_classes for p in s.proposals])
        R = max(gt_classes.numel(), 1)  # Detectron2's CE mean / box-loss normaliser
        soft = (1.0 - self.mu) * self._soft(s.scores, t.scores.detach(), bg_index=K) / R
        pos = ((gt_classes >= 0) & (gt_classes < K)).nonzero(as_tuple=True)[0]
        if pos.numel() == 0:
            return {"roi_soft": soft, "roi_bounded": zero_loss(s.deltas)}
        boxes = torch.cat([p.proposal_boxes.tensor for p in s.proposals])[pos]
        gt_boxes = torch.cat([p.gt_boxes.tensor for p in s.proposals])[pos]
        y = self._roi_box2box.get_deltas(boxes, gt_boxes)
        rs = self._gt_class_deltas(s.deltas[pos], gt_classes[pos])
        rt = self._gt_class_deltas(t.deltas.detach()[pos], gt_classes[pos])
        lb = bounded_regression_per_box(rs, rt, y, self.margin).sum()
        return {"roi_soft": soft, "roi_bounded": self.lam * self.nu * lb / R}

    @staticmethod
    def _gt_class_deltas(deltas: Tensor, classes: Tensor) -> Tensor:
        if deltas.shape[1] == 4:  # class-agnostic
            return deltas
        cols = classes[:, None] * 4 + torch.arange(4, device=deltas.device)
        return deltas.gather(1, cols)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, on={self.on}, variant={self.variant}, mu={self.mu}, w_bg={self.w_bg}, "
                f"T={self.temperature}, nu={self.nu}, margin={self.margin}, lam={self.lam}, "
                f"gamma_hint={self.gamma_hint}")
