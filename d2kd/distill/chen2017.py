"""Chen et al., NeurIPS 2017, "Learning Efficient Object Detection Models with Knowledge
Distillation" (docs/methods.md §1), on every softmax detection stage the student records
(:class:`d2kd.records.DetectionStageView`: d2kd's SSD head; Faster R-CNN's RPN and box head).

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

from ..records import record_layout
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
            variant: "ssd_repo" (the default for a student with one detection stage, an SSD) or
                "paper" (the default, and the only choice, for several stages: Faster R-CNN).
            mu: μ (the reference's u), share of the hard classification loss; 1−μ goes to L_soft.
            w_bg, w_obj: class weights of L_soft (background / objects).
            temperature: T of both softmaxes (no T² rescaling).
            nu: ν, weight of L_b. margin: m. lam: λ, weight of the regression losses (the
                detector's own regression loss is scaled by λ too when λ ≠ 1).
            gamma_hint: γ, weight of the hint (ssd_repo: logit MSE; paper: feature L2).
            student_hint, teacher_hint: paper variant: the guided/hint layer pair (default: the
                backbones' declared ``hint_feature``, "expand7" / "conv4_3" for d2kd's SSDs).
            hint_features: paper variant, backbones without a declared hint layer: levels for
                the hint (default: every level both backbones output with the same stride, e.g.
                res4 or p2..p6).
            rpn, roi: distil the ``rpn`` / ``roi`` stage where the student has it (Faster R-CNN).
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
        self._stages = []  # the student's StageLayouts distilled, from bind()
        self._prefix_terms = False
        self._hints = {}  # paper hint: adapter key -> (student level, teacher level), from bind()
        self.adapters = nn.ModuleDict()

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student, teacher) -> None:
        layout = record_layout(student)
        wanted = {"rpn": self.use_rpn, "roi": self.use_roi}
        self._stages = [st for st in layout.stages if wanted.get(st.part, True)]
        # terms of a detector with several stages are named by stage (rpn_soft, roi_soft, ...)
        self._prefix_terms = len(layout.stages) > 1
        if not self._stages:
            raise ValueError(
                f"Chen2017 distils softmax detection stages with their own classification and "
                f"regression losses (SSD's head, Faster R-CNN's RPN and box head); "
                f"{type(student).__name__} records {layout.parts} (rpn={self.use_rpn}, roi={self.use_roi})"
            )
        # The reference's loss (ssd_repo) is written for one stage (SSD's multibox loss).
        self.variant = self.variant or ("ssd_repo" if len(layout.stages) == 1 else "paper")
        if self.variant == "ssd_repo" and len(self._stages) != 1:
            raise ValueError(
                f"Chen2017: variant 'ssd_repo' is the SSD reference's single-stage loss; "
                f"{type(student).__name__} has the stages {[st.part for st in self._stages]}: use variant='paper'"
            )
        teacher_stages = {st.part: st for st in teacher.layout().stages}
        for st in self._stages:
            t_st = teacher_stages.get(st.part)
            if t_st is None:
                raise ValueError(
                    f"Chen2017: the teacher ({type(teacher.model).__name__}) has no {st.part} stage to "
                    f"distil (it has {sorted(teacher_stages)})"
                    + ("; pass rpn=False / roi=False to leave a stage out" if st.part in wanted else "")
                )
            if st.box_coder_weights != t_st.box_coder_weights:
                raise ValueError(
                    f"Chen2017: {st.part} box weights differ: student {st.box_coder_weights}, teacher "
                    f"{t_st.box_coder_weights}; the bounded regression compares their deltas"
                )
        if self.variant == "paper":
            self._bind_hint(student, teacher)

    def _bind_hint(self, student, teacher) -> None:
        """The paper's hint: one adapter per (student level, teacher level) pair: the given
        ``student_hint``/``teacher_hint`` pair, else the pair both backbones declare as their
        ``hint_feature`` (d2kd's SSD backbones: expand7 → conv4_3), else every common level of
        the same stride (``hint_features``)."""
        s_shapes, t_shapes = student.backbone.output_shape(), teacher.output_shape()
        declared = (getattr(student.backbone, "hint_feature", None), getattr(teacher.model.backbone, "hint_feature", None))
        if not (self.student_hint or self.teacher_hint or self.hint_features) and all(declared):
            self.student_hint, self.teacher_hint = declared
        if self.student_hint or self.teacher_hint:
            for who, level, shapes in (("student", self.student_hint, s_shapes),
                                       ("teacher", self.teacher_hint, t_shapes)):
                if level not in shapes:
                    raise ValueError(
                        f"Chen2017 (paper): the {who} backbone does not output '{level}' (it outputs "
                        f"{sorted(shapes)}); add it to the {who} backbone's out_features, or pass "
                        f"student_hint and teacher_hint")
            s, t = s_shapes[self.student_hint], t_shapes[self.teacher_hint]
            if s.stride != t.stride:
                raise ValueError(
                    f"Chen2017 (paper): student hint '{self.student_hint}' ({s.channels} ch, stride "
                    f"{s.stride}) and teacher hint '{self.teacher_hint}' ({t.channels} ch, stride "
                    f"{t.stride}) must have the same stride")
            self._hints = {"hint": (self.student_hint, self.teacher_hint)}
            self.adapters["hint"] = _adapter(s.channels, t.channels)
            return
        levels = self.hint_features or [k for k in s_shapes if k in t_shapes and s_shapes[k].stride == t_shapes[k].stride]
        if not levels:
            raise ValueError(
                f"Chen2017: no common hint level: student has {dict((k, v.stride) for k, v in s_shapes.items())}, "
                f"teacher {dict((k, v.stride) for k, v in t_shapes.items())} (name: stride); pass "
                f"hint_features, or student_hint and teacher_hint")
        check_levels("Chen2017", levels, s_shapes, t_shapes)
        self.hint_features = list(levels)
        self._hints = {level: (level, level) for level in levels}
        for level in levels:
            self.adapters[level] = _adapter(s_shapes[level].channels, t_shapes[level].channels)

    def teacher_needs(self):
        return {"features"} | {st.part for st in self._stages}

    def student_needs(self):
        return {st.part for st in self._stages}

    def paired_needs(self):
        # stages whose rows are anchors or priors compare row by row: they must coincide
        return {st.part for st in self._stages if st.pairing == "anchors"}

    def detector_loss_scales(self) -> Dict[str, float]:
        """μ on the stages' hard classification losses; λ on their regression losses when λ ≠ 1."""
        scales = {st.cls_loss: self.mu for st in self._stages}
        if self.lam != 1.0:
            scales.update({st.reg_loss: self.lam for st in self._stages})
        return scales

    # ---- computing --------------------------------------------------------------------------
    def forward(self, student, teacher) -> Dict[str, Tensor]:
        s_views, t_views = student.stage_views(), teacher.stage_views()
        losses = {}
        for st in self._stages:
            student.check_same_rows("Chen2017", st.part, teacher)
            s, t = s_views[st.part], t_views[st.part]
            if s.logits.shape != t.logits.shape:
                raise ValueError(
                    f"Chen2017: the student's {st.part} has {tuple(s.logits.shape)} rows x classes on this "
                    f"batch, the teacher's {tuple(t.logits.shape)}; the per-row terms need the same rows")
            prefix = f"{st.part}_" if self._prefix_terms else ""
            losses[prefix + "soft"], losses[prefix + "bounded"] = self._stage_terms(s, t)
        losses["hint"] = self.gamma_hint * self._hint(student, teacher, s_views, t_views)
        return losses

    def _stage_terms(self, s, t):
        """``(1−μ)·L_soft`` over the rows of the stage's classification loss and ``λ·L_b`` over
        its positives, both with the stage's own normaliser."""
        t_logits = t.logits.detach()
        soft = weighted_soft_ce(s.logits[s.cls_rows], t_logits[s.cls_rows], bg_index=s.bg_index,
                                w_bg=self.w_bg, w_obj=self.w_obj, temperature=self.temperature)
        soft = (1.0 - self.mu) * soft / s.normalizer
        pos = s.reg_rows
        if not bool(pos.any()):
            return soft, zero_loss(s.deltas)
        rs, rt, y = s.row_deltas(pos), t.row_deltas(pos).detach(), s.reg_targets
        if self.variant == "ssd_repo":
            bounded = bounded_regression_batch(rs, rt, y, self.margin, self.nu)
        else:
            bounded = self.nu * bounded_regression_per_box(rs, rt, y, self.margin).sum()
        return soft, self.lam * bounded / s.normalizer

    def _hint(self, student, teacher, s_views, t_views) -> Tensor:
        """ssd_repo: the MSE of the stage's class logits over every row; paper: Σ over hint
        pairs of mean((A(V) − Z)²)."""
        if self.variant == "ssd_repo":
            part = self._stages[0].part
            return F.mse_loss(float32(s_views[part].logits), float32(t_views[part].logits.detach()))
        hint = None
        for key, (s_level, t_level) in self._hints.items():
            sf, tf = student.features[s_level], teacher.features[t_level]
            check_same_spatial_size("Chen2017", s_level if s_level == t_level else f"{s_level}->{t_level}", sf, tf)
            term = ((float32(self.adapters[key](sf)) - float32(tf).detach()) ** 2).mean()
            hint = term if hint is None else hint + term
        return hint

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, stages={[st.part for st in self._stages]}, variant={self.variant}, "
                f"mu={self.mu}, w_bg={self.w_bg}, T={self.temperature}, nu={self.nu}, margin={self.margin}, "
                f"lam={self.lam}, gamma_hint={self.gamma_hint}")
