"""SSD records: per-prior outputs of an SSD on a batch, and the checks that two SSDs' priors
coincide (the SSD-KD reference, docs/methods.md §1.2, compares teacher and student row by row).

The functions read an SSD model by its interface (``predict``, ``get_priors``,
``prior_generator``, ``head_in_features``, ``backbone``): this module does not import the model
(:class:`d2kd.modeling.meta_arch.ssd.SSD`), which builds its own training record with
:func:`ssd_outputs`.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .views import DetectionStageView, RecordLayout, StageLayout

__all__ = ["SSDRecord", "ssd_outputs", "check_ssd_prior_layout", "check_same_priors", "ssd_layout"]


@dataclass
class SSDRecord:
    """Per-prior outputs of an SSD on one batch (SSD conventions: column 0 = background)."""

    logits: Tensor  # (N, P, K+1)
    deltas: Tensor  # (N, P, 4) variance-encoded
    priors: Tensor  # (P, 4) cxcywh, normalised
    level_sizes: List[Tuple[int, int]]  # (H, W) of each SSD source, in head order
    num_priors_per_location: List[int]
    # student only (the GT matching and hard-negative mining of the step):
    labels: Optional[Tensor] = None  # (N, P) int64, 0 = background, c+1 = Detectron2 class c
    targets: Optional[Tensor] = None  # (N, P, 4) encoded GT boxes (meaningful where labels > 0)
    pos_mask: Optional[Tensor] = None  # (N, P) bool
    neg_mask: Optional[Tensor] = None  # (N, P) bool, mined negatives
    num_pos: int = 0

    def stage_view(self) -> DetectionStageView:
        """The per-prior softmax (background column 0) and deltas, one row per prior of every
        image; with the step's GT matching (the student's record): the positives and mined
        negatives classified, the positives regressed towards their encoded GT boxes, the SSD
        loss's normaliser (positives in the batch, at least 1)."""
        view = DetectionStageView(
            part="ssd", logits=self.logits.flatten(0, 1), bg_index=0, deltas=self.deltas.flatten(0, 1)
        )
        if self.pos_mask is not None:
            view.cls_rows = (self.pos_mask | self.neg_mask).flatten()
            view.reg_rows = self.pos_mask.flatten()
            view.reg_targets = self.targets.flatten(0, 1)[view.reg_rows]
            view.normalizer = float(max(self.num_pos, 1))
        return view

    def check_same_rows(self, method: str, teacher: "SSDRecord") -> None:
        """Per batch: the teacher's priors are the student's."""
        check_same_priors(method, self, teacher)

    def layout(self) -> str:
        return (f"{self.priors.shape[0]} priors, levels {self.level_sizes} x "
                f"{self.num_priors_per_location} priors/location")


def is_ssd(model) -> bool:
    """Whether ``model`` has an SSD's per-prior head (what :func:`ssd_outputs` reads)."""
    return hasattr(model, "prior_generator") and hasattr(model, "predict")


def ssd_outputs(model, features: Dict[str, Tensor]) -> SSDRecord:
    """Head outputs and priors of an SSD for already computed backbone ``features``."""
    logits, deltas = model.predict(features)
    priors = model.get_priors(features)
    sources = [features[f] for f in model.head_in_features]
    return SSDRecord(
        logits=logits, deltas=deltas, priors=priors,
        level_sizes=[tuple(int(s) for s in x.shape[-2:]) for x in sources],
        num_priors_per_location=list(model.prior_generator.num_priors_per_location),
    )


def ssd_layout(model) -> Optional[RecordLayout]:
    """The record layout of an SSD (:func:`is_ssd`), else None: its per-prior outputs in the
    ``ssd`` slot, one softmax detection stage whose rows pair prior by prior. No anchors or
    classifier view: the priors are normalised cxcywh boxes and the classifier's rows are the
    mined priors, which the methods reading those views do not expect."""
    if not is_ssd(model):
        return None
    return RecordLayout(
        parts=["features", "ssd"],
        feature_shapes=dict(model.backbone.output_shape()),
        stages=[StageLayout("ssd", "loss_cls", "loss_box_reg", tuple(getattr(model, "box_variances", ())), "anchors")],
    )


def _generator_layout(model) -> Dict:
    g = model.prior_generator
    shapes = model.backbone.output_shape()
    return dict(
        image_size=g.image_size, min_sizes=g.min_sizes, max_sizes=g.max_sizes,
        aspect_ratios=g.aspect_ratios, steps=g.steps, clip=g.clip, offset=g.offset,
        source_strides=[shapes[f].stride for f in model.head_in_features],
    )


def check_ssd_prior_layout(method: str, student, teacher_model) -> None:
    """Build-time check: the teacher is an SSD with the student's prior layout (same generator
    settings, same number of sources, same nominal source strides). The error names both."""
    if not is_ssd(teacher_model):
        raise ValueError(f"{method}: per-prior SSD distillation needs an SSD teacher, got "
                         f"{type(teacher_model).__name__}")
    s, t = _generator_layout(student), _generator_layout(teacher_model)
    if s != t:
        diff = {k: (s[k], t[k]) for k in s if s[k] != t[k]}
        raise ValueError(
            f"{method}: teacher and student SSDs must share the prior layout (per-prior "
            f"distillation compares row by row); differing (student, teacher): {diff}. "
            f"Re-head the teacher to the student's layout (VGG16SSD(layout='aligned') with the "
            f"student's prior generator), as the SSD-KD reference does.")


def check_same_priors(method: str, student: SSDRecord, teacher: SSDRecord) -> None:
    """Per-batch check: identical per-level feature sizes, prior counts and priors."""
    if (student.level_sizes != teacher.level_sizes
            or student.num_priors_per_location != teacher.num_priors_per_location
            or student.logits.shape[:2] != teacher.logits.shape[:2]
            or not torch.equal(student.priors, teacher.priors)):
        raise ValueError(
            f"{method}: the student's priors ({student.layout()}) differ from the teacher's "
            f"({teacher.layout()}) on this batch; both backbones must give the same source sizes "
            f"(feed square inputs of the size the layout was made for)")
