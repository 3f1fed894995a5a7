"""Family-neutral views on records: what a method reads, whatever the detector.

A distiller states what it needs (anchors of a first-stage dense predictor, a final classifier
scored on the same boxes by student and teacher and the features it reads, softmax detection
stages with their own losses, feature maps) and reads it through these views; which record slot
backs a view (an R-CNN's ``rpn``/``roi``, a RetinaNet's ``head``, an SSD's ``ssd``) is the
records' business (:meth:`d2kd.records.DetectorRecord.anchors_view`, ``classifier_view``,
``classifier_input_view``, ``stage_views``, and :func:`d2kd.records.record_layout` at build
time). A method never asks which detector it is on.

Conventions (Detectron2's): boxes in the padded-image frame, XYXY; class ids ``0..K-1``, ``K`` =
background, ``-1`` = ignored.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes

__all__ = [
    "AnchorsView",
    "ClassifierView",
    "ClassifierInputView",
    "DetectionStageView",
    "AnchorsLayout",
    "BoxPooling",
    "ClassifierLayout",
    "StageLayout",
    "RecordLayout",
    "PROBABILITIES",
    "PAIRINGS",
]

#: How a classifier turns its logits into class probabilities.
PROBABILITIES = ("softmax", "sigmoid")
#: How a teacher's classifier rows line up with the student's:
#: ``"shared_boxes"``: the teacher scores the student's boxes (R-CNN: the sampled proposals);
#: ``"anchors"``: each model scores its own anchors, so they line up only if the teacher's anchors
#: are the student's (checked at build time for a method whose ``paired_needs`` name the part).
PAIRINGS = ("shared_boxes", "anchors")


# ---- per batch ------------------------------------------------------------------------------
@dataclass
class AnchorsView:
    """Where the detector's first-stage dense predictor put its anchors on this batch (an
    R-CNN's RPN, a RetinaNet's head): per level, the ``Hi*Wi*A`` anchors shared by every image,
    location-major (the A anchors of a location are consecutive)."""

    levels: Optional[List[str]]  # the feature levels of ``anchors``, in order (None: a record built without them)
    anchors: List[Boxes]  # per level


@dataclass
class ClassifierView:
    """The detector's final classification on this batch, flattened to rows, one per scored box.

    Student and teacher rows line up (same box, same row) as the layout's ``pairing`` says.
    R-CNN: one row per sampled proposal of the student, images one after the other. Dense heads
    (RetinaNet): one row per anchor of every image, row ``i·R + r`` = anchor ``r`` (levels
    concatenated) of image ``i``, i.e. the row-major flattening of the (N, R, C) per-anchor
    tensors, so masks and sums see the elements in the same order as on (N, R, C).
    """

    probability: str  # "softmax": K+1 columns, background at ``bg_index``; "sigmoid": K columns
    logits: Tensor  # (M, C)
    # (M,) GT class per row: K = background, -1 = ignored; None: no GT matching (a teacher's dense head)
    labels: Optional[Tensor] = None
    boxes: Optional[Tensor] = None  # (M, 4) the box each row scores (proposal or anchor)
    image_index: Optional[Tensor] = None  # (M,) the image of each row
    bg_index: Optional[int] = None  # softmax: the background column; sigmoid: None

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        c = self.logits.shape[-1]
        return c - 1 if self.probability == "softmax" else c

    def valid(self) -> Tensor:
        """(M,) bool: rows with a GT label (not ignored)."""
        return self._labels() >= 0

    def foreground(self) -> Tensor:
        """(M,) bool: rows matched to an object."""
        labels = self._labels()
        return (labels >= 0) & (labels != self.num_classes)

    def _labels(self) -> Tensor:
        if self.labels is None:
            raise ValueError("this classifier view has no GT labels (take them from the student's view)")
        return self.labels


@dataclass
class ClassifierInputView:
    """What the final classifier reads on this batch, in one of two forms.

    ``rows`` (M, D): one vector per classifier row (an R-CNN box head's output, what its linear
    classifier sees; rows as in :class:`ClassifierView`). ``maps``: per level (N, C, Hi, Wi), the
    input of a convolutional classifier (a RetinaNet classification tower's output) that reads a
    ``kernel_size``² neighbourhood of every location and scores ``anchors_per_location`` rows
    there; ``labels`` (N, L, A) are their GT classes (L = locations of all levels, level-major;
    K = background, -1 = ignored; None on a teacher).
    """

    rows: Optional[Tensor] = None
    maps: Optional[List[Tensor]] = None
    kernel_size: int = 1
    anchors_per_location: int = 1
    labels: Optional[Tensor] = None


@dataclass
class DetectionStageView:
    """One stage that classifies boxes with a softmax and regresses them, trained by the
    detector's own classification and regression losses: an RPN (objectness as the two-class
    softmax ``[0, z]``, background column 0), an R-CNN box head, an SSD head. Rows: the stage's
    boxes (anchors, sampled proposals, priors) of every image, images one after the other; they
    line up between student and teacher as the stage's pairing says.
    """

    part: str  # the record slot
    logits: Tensor  # (M, C) softmax logits
    bg_index: int  # the background column
    deltas: Tensor  # (M, 4), or (M, 4·K) one box per class
    # (M,) the GT class of each row (K = background), where the deltas are per class; else None
    classes: Optional[Tensor] = None
    # the student's own losses (None on a teacher): which rows they use, their targets, normaliser
    cls_rows: Optional[Tensor] = None  # (M,) bool: rows of the classification loss (sampled, mined)
    reg_rows: Optional[Tensor] = None  # (M,) bool: rows of the regression loss (the positives)
    reg_targets: Optional[Tensor] = None  # (P, 4): the encoded GT box of each reg row, in row order
    normalizer: float = 1.0  # what both losses divide their sums by

    def row_deltas(self, rows: Tensor) -> Tensor:
        """(P, 4) the deltas of ``rows`` (the GT class's box where deltas are per class; ``rows``
        are foreground rows then, as a regression loss uses)."""
        deltas = self.deltas[rows]
        if deltas.shape[1] == 4:
            return deltas
        cols = self.classes[rows][:, None] * 4 + torch.arange(4, device=deltas.device)
        return deltas.gather(1, cols)


# ---- at build time --------------------------------------------------------------------------
@dataclass(frozen=True)
class AnchorsLayout:
    part: str  # the record slot that gives the AnchorsView (a student/teacher part name)
    levels: Tuple[str, ...]  # its feature levels, in the order of AnchorsView.anchors


@dataclass(frozen=True, eq=False)
class BoxPooling:
    """How a classifier that scores boxes from pooled features (an R-CNN box head) pools them:
    Detectron2's ``ROIPooler`` over ``in_features`` (a reference, not a submodule of a method)."""

    in_features: Tuple[str, ...]
    pooler: ROIPooler

    def pool(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> Tensor:
        """(n, C, h, w): the pooled features of ``boxes`` (per image, as the pooler takes them)."""
        return self.pooler([features[f] for f in self.in_features], boxes)

    def levels(self, boxes: List[Boxes]) -> Tensor:
        """(n,) the index in ``in_features`` of the level each box is pooled from."""
        p = self.pooler
        if len(p.level_poolers) == 1:
            n = sum(len(b) for b in boxes)
            return torch.zeros(n, dtype=torch.long, device=boxes[0].tensor.device if boxes else None)
        return assign_boxes_to_levels(boxes, p.min_level, p.max_level, p.canonical_box_size, p.canonical_level)


@dataclass(frozen=True)
class ClassifierLayout:
    part: str  # the record slot that gives the ClassifierView
    probability: str  # one of PROBABILITIES
    num_classes: int  # K
    pairing: str  # one of PAIRINGS
    # what the classifier reads (ClassifierInputView): "rows" of input_channels, or "maps" of
    # input_channels read input_kernel × input_kernel per location
    input_form: str = "rows"
    input_channels: int = 0
    input_kernel: int = 1
    # the classifier's weight (a reference to the model's parameter, e.g. for its scale)
    weight: Optional[nn.Parameter] = field(default=None, compare=False, repr=False)
    # how the classifier pools its boxes' features, where it does (an R-CNN box head)
    pooling: Optional[BoxPooling] = field(default=None, compare=False, repr=False)

    def paired_parts(self) -> Set[str]:
        """The parts a method comparing student and teacher rows pairs element by element
        (``Distiller.paired_needs``): the classifier's part where rows are anchors."""
        return {self.part} if self.pairing == "anchors" else set()


@dataclass(frozen=True)
class StageLayout:
    """A detection stage (:class:`DetectionStageView`) known at build time."""

    part: str  # the record slot that gives its DetectionStageView
    cls_loss: str  # the detector's loss keys of the stage's classification and regression
    reg_loss: str
    box_coder_weights: Tuple[float, ...]  # how its deltas encode boxes (e.g. Box2BoxTransform weights)
    pairing: str  # one of PAIRINGS


@dataclass
class RecordLayout:
    """What the record of a model holds, known when the model is built (no batch needed)."""

    parts: List[str]  # the record slots the model fills, "features" first
    feature_shapes: Dict[str, ShapeSpec]  # the backbone's levels: channels and stride
    anchors: Optional[AnchorsLayout] = None
    classifier: Optional[ClassifierLayout] = None
    stages: List[StageLayout] = field(default_factory=list)  # softmax detection stages, in order
