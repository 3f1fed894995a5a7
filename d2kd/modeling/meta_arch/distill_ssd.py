"""``DistillationSSD``: a d2kd ``SSD`` student taught by a frozen SSD teacher.

The SSD-KD reference (docs/methods.md §1.2) distils per prior: the teacher (VGG16-SSD300 re-headed to
the student's 3000-prior layout, ``VGG16SSD(layout="aligned")``) and the student
(MobileNetV2-SSDLite) predict on the *same* priors, so their logits/deltas are compared row by
row. This file provides

* :class:`SSDRecord`: what an SSD computed on a batch (per-prior logits with background in
  column 0, deltas, priors, and for the student the matching and mining masks). It lives in
  ``DetectorRecord.extras["ssd"]`` of both the student and the teacher record;
* :func:`ssd_outputs`: the teacher side (``Teacher.record`` calls it for the part ``"ssd"``);
* :func:`check_ssd_prior_layout` / :func:`check_same_priors`: the bind-time and per-batch checks
  that teacher and student priors coincide (errors name both layouts);
* :class:`DistillationSSD`: the meta-architecture (training: SSD multibox loss + distillers;
  inference: the plain student ``SSD``; the teacher is never run in eval).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import move_device_like
from detectron2.modeling import META_ARCH_REGISTRY

from ...teacher import Teacher
from ..records import DetectorRecord
from .distillation import DistillationMixin
from .ssd import SSD

__all__ = ["SSDRecord", "ssd_outputs", "check_ssd_prior_layout", "check_same_priors", "DistillationSSD"]


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

    def layout(self) -> str:
        return (f"{self.priors.shape[0]} priors, levels {self.level_sizes} x "
                f"{self.num_priors_per_location} priors/location")


def ssd_outputs(model: SSD, features: Dict[str, Tensor]) -> SSDRecord:
    """Head outputs and priors of an SSD for already computed backbone ``features``."""
    logits, deltas = model.predict(features)
    priors = model.get_priors(features)
    sources = [features[f] for f in model.head_in_features]
    return SSDRecord(
        logits=logits, deltas=deltas, priors=priors,
        level_sizes=[tuple(int(s) for s in x.shape[-2:]) for x in sources],
        num_priors_per_location=list(model.prior_generator.num_priors_per_location),
    )


def _generator_layout(model) -> Dict:
    g = model.prior_generator
    shapes = model.backbone.output_shape()
    return dict(
        image_size=g.image_size, min_sizes=g.min_sizes, max_sizes=g.max_sizes,
        aspect_ratios=g.aspect_ratios, steps=g.steps, clip=g.clip, offset=g.offset,
        source_strides=[shapes[f].stride for f in model.head_in_features],
    )


def check_ssd_prior_layout(method: str, student: SSD, teacher_model) -> None:
    """Build-time check: the teacher is an SSD with the student's prior layout (same generator
    settings, same number of sources, same nominal source strides). The error names both."""
    if not (hasattr(teacher_model, "prior_generator") and hasattr(teacher_model, "predict")):
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


@META_ARCH_REGISTRY.register()
class DistillationSSD(DistillationMixin, SSD):
    """Training: the SSD multibox loss (matching, 3:1 hard-negative mining) of the student plus
    every distiller's losses. Inference: ``SSD.forward`` of the student alone; the teacher is not
    run. The student record's ``extras["ssd"]`` is an :class:`SSDRecord`; the teacher's record
    gets one too when a distiller asks for the part ``"ssd"``.

    An exported checkpoint (``distillers.`` stripped) loads into the stock :class:`SSD`."""

    student_class = SSD
    student_parts = ("features", "ssd")

    @configurable
    def __init__(self, *, teacher: Teacher, distillers: Sequence = (), **kwargs):
        """
        Args:
            teacher: the frozen teacher (:func:`d2kd.teacher.build_teacher`).
            distillers: :class:`d2kd.distill.Distiller` instances, composed in one run.
            kwargs: the student's ``SSD`` arguments.
        """
        super().__init__(**kwargs)
        self._init_distillation(teacher, distillers)

    def _move_to_current_device(self, x: Tensor) -> Tensor:  # used by preprocess_pair
        return move_device_like(x, self.pixel_mean)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        if not all("instances" in x for x in batched_inputs):
            raise ValueError("DistillationSSD training needs 'instances' in every input")
        # SSD.forward_training, step by step, on the student's half of the paired images.
        self.before_distillation_step()
        images, teacher_images = self.preprocess_pair(batched_inputs)
        features = self.extract_features(images)
        ssd = ssd_outputs(self, features)
        if ssd.logits.shape[1] != ssd.priors.shape[0]:
            raise RuntimeError(f"SSD: head predicts {ssd.logits.shape[1]} priors, generator made "
                               f"{ssd.priors.shape[0]}")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        ssd.labels, ssd.targets = self.match(gt_instances, ssd.priors, tuple(images.tensor.shape[-2:]))
        ssd.neg_mask = self.mine_hard_negatives(ssd.logits, ssd.labels)
        ssd.pos_mask = ssd.labels > 0
        ssd.num_pos = int(ssd.pos_mask.sum())
        losses = self.losses(ssd.logits, ssd.deltas, ssd.labels, ssd.targets, ssd.neg_mask)
        losses = self.scale_detector_losses(losses)
        from detectron2.utils.events import get_event_storage

        try:
            get_event_storage().put_scalar("ssd/num_pos_per_image", ssd.num_pos / len(batched_inputs))
        except AssertionError:  # no EventStorage outside a trainer
            pass
        student = DetectorRecord(images=images, features=features, gt_instances=gt_instances,
                                 extras={"ssd": ssd})
        losses.update(self.distillation_losses(student, teacher_images))
        return losses
