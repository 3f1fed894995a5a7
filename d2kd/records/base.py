"""The record of one training batch, and the table of the parts a teacher can record.

Detectron2's detectors return only their losses in training. Distillers need the tensors in
between (features, per-anchor logits, ROI features ...). The distillation meta-architectures
run the student's parts openly (the ``*_outputs`` functions of this package) and record them in
a :class:`DetectorRecord`; the teacher fills the same record for the parts the distillers asked
for, by looping over :data:`TEACHER_PART_TABLE`.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from torch import Tensor, nn

from detectron2.structures import ImageList, Instances

from .rcnn import ROIRecord, RPNRecord, roi_box_outputs, rpn_outputs
from .retinanet import DenseHeadRecord, dense_head_layout, retinanet_head_outputs
from .ssd import SSDRecord, is_ssd, ssd_outputs

__all__ = ["DetectorRecord", "TeacherPart", "TEACHER_PART_TABLE", "TEACHER_PARTS", "detector_num_classes"]


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
    return retinanet_head_outputs(model, features)


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
            "a RetinaNet-style dense head's per-anchor class logits and box deltas",
            # not every model with a `head` (FCOS's is not)
            lambda model: dense_head_layout(model) is not None,
            _head,
        ),
        TeacherPart("ssd", "an SSD head's per-prior logits and deltas", is_ssd, _ssd),
    )
}

#: Parts of the teacher a distiller may ask for (see ``Distiller.teacher_needs``).
TEACHER_PARTS = tuple(TEACHER_PART_TABLE)


def detector_num_classes(model: nn.Module) -> Optional[int]:
    """The number of foreground classes of a Detectron2 or d2kd detector, or None if unknown."""
    if hasattr(model, "num_classes"):
        return model.num_classes
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return roi_heads.num_classes
    return None
