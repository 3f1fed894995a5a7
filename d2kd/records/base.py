"""The record of one training batch, and the table of the parts a teacher can record.

Detectron2's detectors return only their losses in training. Distillers need the tensors in
between (features, per-anchor logits, ROI features ...). The distillation meta-architectures
run the student's parts openly (the ``*_outputs`` functions of this package) and record them in
a :class:`DetectorRecord`; the teacher fills the same record for the parts the distillers asked
for, by looping over :data:`TEACHER_PART_TABLE`. Methods read the record through family-neutral
views (:mod:`.views`): ``DetectorRecord.anchors_view()``/``classifier_view()`` per batch, and
:func:`record_layout` of a model at build time (from :data:`RECORD_LAYOUT_TABLE`).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from torch import Tensor, nn

from detectron2.structures import ImageList, Instances

from .fcos import fcos_head_outputs, is_fcos
from .rcnn import ROIRecord, RPNRecord, check_same_rpn_anchors, rcnn_layout, roi_box_outputs, rpn_outputs
from .retinanet import (
    DenseHeadRecord,
    check_same_dense_head_layout,
    dense_head_layout,
    retinanet_head_outputs,
    retinanet_layout,
)
from .ssd import SSDRecord, check_ssd_prior_layout, is_ssd, ssd_layout, ssd_outputs
from .views import AnchorsView, ClassifierInputView, ClassifierView, DetectionStageView, RecordLayout

__all__ = [
    "DetectorRecord",
    "TeacherPart",
    "TEACHER_PART_TABLE",
    "TEACHER_PARTS",
    "RECORD_LAYOUT_TABLE",
    "record_layout",
    "PAIRING_CHECKS",
    "check_paired_part",
    "detector_num_classes",
]

#: The record slots of a detector's own outputs, in the order a view looks for them.
_SLOTS = ("rpn", "roi", "head", "ssd")


@dataclass
class DetectorRecord:
    """What a detector computed on one batch; a slot is None where that part was not recorded.

    ``rpn``/``roi``: R-CNN (:mod:`d2kd.records.rcnn`); ``head``: a RetinaNet-style dense head
    (:mod:`d2kd.records.retinanet`); ``ssd``: an SSD's per-prior outputs (:mod:`d2kd.records.ssd`).
    """

    images: ImageList
    features: Dict[str, Tensor]
    gt_instances: List[Instances] = field(default_factory=list)
    rpn: Optional[RPNRecord] = None
    roi: Optional[ROIRecord] = None
    head: Optional[DenseHeadRecord] = None
    ssd: Optional[SSDRecord] = None

    def parts(self) -> List[str]:
        """The filled slots, "features" first."""
        return ["features"] + [slot for slot in _SLOTS if getattr(self, slot) is not None]

    def anchors_view(self) -> AnchorsView:
        """The anchors of the first-stage dense predictor (``rpn`` or ``head``)."""
        return self._view("anchors_view", "anchors (an RPN's or a dense head's)")

    def classifier_view(self) -> ClassifierView:
        """The final classification, one row per scored box (``roi`` or ``head``)."""
        return self._view("classifier_view", "classifier outputs (ROI or dense-head logits)")

    def classifier_input_view(self) -> ClassifierInputView:
        """What the final classifier reads (``roi``: box-head rows; ``head``: tower maps)."""
        return self._view("classifier_input_view", "classifier inputs (ROI box features or a dense tower's maps)")

    def stage_views(self) -> Dict[str, DetectionStageView]:
        """The softmax detection stages recorded (``rpn``, ``roi``, ``ssd``), by part, in order."""
        return {
            slot: getattr(self, slot).stage_view()
            for slot in _SLOTS
            if getattr(self, slot) is not None and hasattr(getattr(self, slot), "stage_view")
        }

    def check_same_rows(self, method: str, part: str, teacher: "DetectorRecord") -> None:
        """Per batch: the teacher's rows of ``part`` line up with the student's (same anchors or
        priors), where the slot can tell; raises naming ``method`` otherwise."""
        mine = getattr(self, part)
        if hasattr(mine, "check_same_rows"):
            mine.check_same_rows(method, getattr(teacher, part))

    def _view(self, method: str, what: str):
        # one record holds one detector's slots: the first filled slot that gives the view
        for slot in _SLOTS:
            value = getattr(self, slot)
            if value is not None and hasattr(value, method):
                return getattr(value, method)()
        givers = [slot for slot, cls in _SLOT_TYPES.items() if hasattr(cls, method)]
        raise ValueError(
            f"this record has no {what}: they come from the slot {' or '.join(repr(g) for g in givers)}, "
            f"and the record holds {self.parts()} (a method must declare the part in its "
            f"student_needs/teacher_needs)"
        )


_SLOT_TYPES = {"rpn": RPNRecord, "roi": ROIRecord, "head": DenseHeadRecord, "ssd": SSDRecord}


#: ``recorder(model, images, features, student_record)`` -> the value of the record's slot.
Recorder = Callable[[nn.Module, ImageList, Dict[str, Tensor], DetectorRecord], object]


@dataclass(frozen=True)
class TeacherPart:
    """One part of a teacher that distillers may ask for (``Distiller.teacher_needs``)."""

    name: str  # the DetectorRecord slot it fills
    meaning: str  # what it is, for messages
    present: Callable[[nn.Module], bool]  # does this model have it
    record: Optional[Recorder]  # None for "features": the teacher always computes them


def _rpn(model, images, features, student):
    return rpn_outputs(model.proposal_generator, images, features, proposals=False)[0]


def _roi(model, images, features, student):
    # Same sampled boxes as the student: box coordinates are in the shared image frame.
    return roi_box_outputs(model.roi_heads, features, student.roi.proposals)


def _head(model, images, features, student):
    return (fcos_head_outputs if is_fcos(model) else retinanet_head_outputs)(model, features)


def _ssd(model, images, features, student):
    return ssd_outputs(model, features)


#: The parts a teacher can record, in the order it records them.
TEACHER_PART_TABLE: Dict[str, TeacherPart] = {
    p.name: p
    for p in (
        TeacherPart("features", "backbone feature maps", lambda model: True, None),
        TeacherPart(
            "rpn",
            "an RPN's per-anchor objectness and deltas",
            lambda model: getattr(model, "proposal_generator", None) is not None,
            _rpn,
        ),
        TeacherPart(
            "roi",
            "a box head's ROI logits and deltas",
            lambda model: getattr(model, "roi_heads", None) is not None,
            _roi,
        ),
        TeacherPart(
            "head",
            "a dense head's per-anchor class logits and box deltas (RetinaNet, FCOS)",
            lambda model: dense_head_layout(model) is not None,
            _head,
        ),
        TeacherPart("ssd", "an SSD head's per-prior logits and deltas", is_ssd, _ssd),
    )
}

#: Parts of the teacher a distiller may ask for (see ``Distiller.teacher_needs``).
TEACHER_PARTS = tuple(TEACHER_PART_TABLE)


#: Per detector family, ``layout(model)`` -> its :class:`RecordLayout`, or None if ``model`` is
#: not of that family (duck-typed, as the teacher part table: records know the families, methods
#: do not). :func:`record_layout` asks them in this order.
RECORD_LAYOUT_TABLE: Dict[str, Callable[[nn.Module], Optional[RecordLayout]]] = {
    "rcnn": rcnn_layout,
    "retinanet": retinanet_layout,
    "ssd": ssd_layout,
}


#: Per part, the build-time check that a teacher's rows of that part line up with the
#: student's element by element (``Distiller.paired_needs``): ``check(method, student, teacher)``.
PAIRING_CHECKS: Dict[str, Callable[[str, nn.Module, nn.Module], None]] = {
    "head": lambda method, student, teacher: check_same_dense_head_layout(
        method, dense_head_layout(student), dense_head_layout(teacher)
    ),
    "rpn": check_same_rpn_anchors,
    "ssd": check_ssd_prior_layout,
}


def check_paired_part(part: str, method: str, student: nn.Module, teacher: nn.Module) -> None:
    """Raise, naming ``method``, where ``teacher``'s rows of ``part`` do not line up with
    ``student``'s (a part without rows of its own to pair, e.g. ``roi``, always passes)."""
    check = PAIRING_CHECKS.get(part)
    if check is not None:
        check(method, student, teacher)


def record_layout(model: nn.Module) -> RecordLayout:
    """What a record of ``model`` holds (its parts, feature shapes, anchors and classifier
    layouts), from the model alone: methods call it in ``bind`` to state their needs and read
    their levels. A model of no known family records its features only."""
    for layout in RECORD_LAYOUT_TABLE.values():
        found = layout(model)
        if found is not None:
            return found
    return RecordLayout(parts=["features"], feature_shapes=dict(model.backbone.output_shape()))


def detector_num_classes(model: nn.Module) -> Optional[int]:
    """The number of foreground classes of a Detectron2 or d2kd detector, or None if unknown."""
    if hasattr(model, "num_classes"):
        return model.num_classes
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return roi_heads.num_classes
    return None
