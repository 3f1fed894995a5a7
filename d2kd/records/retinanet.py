"""RetinaNet-style dense-head records: per-anchor class logits and box deltas of a batch, the
anchor layout two heads must share to be compared anchor by anchor, and the code that fills them.

Conventions are Detectron2's: per-level lists in the order of the head's ``in_features``,
anchors flattened as (N, Hi*Wi*A, ...), background = the LAST class index (K) in ``gt_labels``.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor

from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes

from .views import AnchorsLayout, AnchorsView, ClassifierInputView, ClassifierLayout, ClassifierView, RecordLayout

__all__ = [
    "DenseHeadRecord",
    "DenseHeadLayout",
    "retinanet_head_outputs",
    "dense_head_layout",
    "check_same_dense_head_layout",
    "retinanet_layout",
]


@dataclass
class DenseHeadRecord:
    anchors: List[Boxes]  # per level
    cls_logits: List[Tensor]  # per level, (N, Hi*Wi*A, K) sigmoid logits
    box_deltas: List[Tensor]  # per level, (N, Hi*Wi*A, 4)
    cls_features: List[Tensor]  # per level, (N, C, Hi, Wi): the classification tower's output
    num_anchors: int = 0  # A, anchors per location
    gt_labels: Optional[Tensor] = None  # (N, R): class id, K = background, -1 = ignored
    gt_boxes: Optional[Tensor] = None  # (N, R, 4)
    levels: Optional[List[str]] = None  # the head's ``in_features``, the levels of the lists above
    cls_kernel_size: int = 3  # the classifier conv's kernel (RetinaNetHead's cls_score: 3×3)
    centerness: Optional[List[Tensor]] = None  # per level, (N, Hi*Wi, 1): FCOS's centerness logits

    def anchors_view(self) -> AnchorsView:
        return AnchorsView(levels=self.levels, anchors=self.anchors)

    def classifier_input_view(self) -> ClassifierInputView:
        """The classification tower's output per level, read by the ``cls_kernel_size``² conv
        classifier at every location; ``labels`` (N, L, A): the GT class of each anchor there."""
        labels = None
        if self.gt_labels is not None:
            labels = self.gt_labels.view(self.gt_labels.shape[0], -1, self.num_anchors)
        return ClassifierInputView(
            maps=self.cls_features,
            kernel_size=self.cls_kernel_size,
            anchors_per_location=self.num_anchors,
            labels=labels,
        )

    def classifier_view(self) -> ClassifierView:
        """One sigmoid row per anchor of every image: row ``i·R + r`` is anchor ``r`` (levels
        concatenated) of image ``i``, the row-major flattening of (N, R, K)."""
        logits = torch.cat(self.cls_logits, dim=1)  # (N, R, K)
        n, r = logits.shape[:2]
        anchors = Boxes.cat(self.anchors).tensor  # (R, 4), shared by every image
        return ClassifierView(
            probability="sigmoid",
            logits=logits.flatten(0, 1),
            labels=None if self.gt_labels is None else self.gt_labels.flatten(),
            boxes=anchors.repeat(n, 1),
            image_index=torch.arange(n, device=logits.device).repeat_interleave(r),
        )


@dataclass
class DenseHeadLayout:
    """Where a dense head's per-anchor outputs sit: what two heads must share for their
    ``DenseHeadRecord`` tensors to be compared element by element."""

    in_features: List[str]  # the head's levels
    strides: List[int]  # per level
    cell_anchors: List[Tensor]  # per level, (A, 4): the anchors of one location, in channel order

    @property
    def num_anchors(self) -> List[int]:
        return [len(a) for a in self.cell_anchors]


def retinanet_head_outputs(model, features: Dict[str, Tensor]) -> DenseHeadRecord:
    """``RetinaNetHead.forward`` (per level ``cls_score(cls_subnet(x))``, ``bbox_pred(bbox_subnet(x))``)
    keeping the classification tower output, then ``_transpose_dense_predictions``."""
    head = model.head
    feats = [features[f] for f in model.head_in_features]
    cls_features, logits, deltas = [], [], []
    for x in feats:
        tower = head.cls_subnet(x)
        cls_features.append(tower)
        logits.append(head.cls_score(tower))
        deltas.append(head.bbox_pred(head.bbox_subnet(x)))
    num_anchors = logits[0].shape[1] // model.num_classes
    logits, deltas = model._transpose_dense_predictions([logits, deltas], [model.num_classes, 4])
    anchors = model.anchor_generator(feats)
    return DenseHeadRecord(
        anchors=anchors,
        cls_logits=logits,
        box_deltas=deltas,
        cls_features=cls_features,
        num_anchors=num_anchors,
        levels=list(model.head_in_features),
        cls_kernel_size=head.cls_score.kernel_size[0],
    )


def dense_head_layout(model) -> Optional[DenseHeadLayout]:
    """The anchor layout of ``model``'s dense head if the records fill ``head`` from it, else
    None: Detectron2's ``RetinaNet`` and ``FCOS`` (and subclasses; FCOS's anchors are its
    stride-sized points, :mod:`.fcos`). Other dense detectors are not recorded yet."""
    if not isinstance(model, (RetinaNet, FCOS)):
        return None
    generator = model.anchor_generator
    return DenseHeadLayout(
        in_features=list(model.head_in_features),
        strides=[int(s) for s in generator.strides],
        cell_anchors=[a.detach().cpu().float() for a in generator.cell_anchors],
    )


def retinanet_layout(model) -> Optional[RecordLayout]:
    """The record layout of a recorded dense detector (what :func:`dense_head_layout` accepts:
    RetinaNet, FCOS), else None: anchors and the per-anchor sigmoid classifier both from the
    dense head (``head``); student and teacher rows line up only with the same anchors (pairing
    ``"anchors"``)."""
    if dense_head_layout(model) is None:
        return None
    return RecordLayout(
        parts=["features", "head"],
        feature_shapes=dict(model.backbone.output_shape()),
        anchors=AnchorsLayout(part="head", levels=tuple(model.head_in_features)),
        classifier=ClassifierLayout(
            part="head",
            probability="sigmoid",
            num_classes=model.num_classes,
            pairing="anchors",
            input_form="maps",
            input_channels=model.head.cls_score.in_channels,
            input_kernel=model.head.cls_score.kernel_size[0],
            weight=model.head.cls_score.weight,
        ),
    )


def check_same_dense_head_layout(method: str, student: DenseHeadLayout, teacher: DenseHeadLayout) -> None:
    """Per-anchor outputs of two heads are comparable element by element only with the same
    anchors per location, at the same strides, in the same channel order. The error names both."""
    if student.num_anchors != teacher.num_anchors or student.strides != teacher.strides:
        raise ValueError(
            f"{method} compares the dense heads anchor by anchor: the student has "
            f"{student.num_anchors} anchors per location at strides {student.strides}, the teacher "
            f"{teacher.num_anchors} at strides {teacher.strides}; give the teacher and the student the "
            f"same anchor_generator (sizes, aspect_ratios, strides), or use a method that compares "
            f"features only (e.g. FeatureImitation, FGFI)"
        )
    for level, (cs, ct) in enumerate(zip(student.cell_anchors, teacher.cell_anchors)):
        # Same shapes in the same order, else channel a of the teacher is another box than
        # channel a of the student (e.g. Detectron1's aspect ratios (1, 2, 0.5) vs (0.5, 1, 2)).
        if not torch.allclose(cs, ct, atol=1e-3):
            raise ValueError(
                f"{method}: head level {level} has cell anchors {cs.round().tolist()} in the student "
                f"but {ct.round().tolist()} in the teacher; anchor sizes, aspect ratios and their "
                f"order must match"
            )
