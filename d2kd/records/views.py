"""Family-neutral views on records: what a method reads, whatever the detector.

A distiller states what it needs (anchors of a first-stage dense predictor, a final classifier
scored on the same boxes by student and teacher, feature maps) and reads it through these views;
which record slot backs a view (an R-CNN's ``rpn``/``roi``, a RetinaNet's ``head``, ...) is the
records' business (:meth:`d2kd.records.DetectorRecord.anchors_view`, ``classifier_view``, and
:func:`d2kd.records.record_layout` at build time). A method never asks which detector it is on.

Conventions (Detectron2's): boxes in the padded-image frame, XYXY; class ids ``0..K-1``, ``K`` =
background, ``-1`` = ignored.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from torch import Tensor

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes

__all__ = [
    "AnchorsView",
    "ClassifierView",
    "AnchorsLayout",
    "ClassifierLayout",
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


# ---- at build time --------------------------------------------------------------------------
@dataclass(frozen=True)
class AnchorsLayout:
    part: str  # the record slot that gives the AnchorsView (a student/teacher part name)
    levels: Tuple[str, ...]  # its feature levels, in the order of AnchorsView.anchors


@dataclass(frozen=True)
class ClassifierLayout:
    part: str  # the record slot that gives the ClassifierView
    probability: str  # one of PROBABILITIES
    num_classes: int  # K
    pairing: str  # one of PAIRINGS

    def paired_parts(self) -> Set[str]:
        """The parts a method comparing student and teacher rows pairs element by element
        (``Distiller.paired_needs``): the classifier's part where rows are anchors."""
        return {self.part} if self.pairing == "anchors" else set()


@dataclass
class RecordLayout:
    """What the record of a model holds, known when the model is built (no batch needed)."""

    parts: List[str]  # the record slots the model fills, "features" first
    feature_shapes: Dict[str, ShapeSpec]  # the backbone's levels: channels and stride
    anchors: Optional[AnchorsLayout] = None
    classifier: Optional[ClassifierLayout] = None
