"""What a detector computed on one training batch, kept for the distillers.

Detectron2's detectors return only their losses in training. Distillers need the tensors in
between (features, per-anchor logits, ROI features ...). The distillation meta-architectures
run the student's parts openly (:mod:`d2kd.modeling.parts`) and record them here; the teacher
fills the same record for the parts the distillers asked for.

Conventions are Detectron2's: per-level lists in the order of the head's ``in_features``,
anchors flattened as (N, Hi*Wi*A, ...), background = the LAST class index (K) in ROI scores
and in dense-head ``gt_labels``.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from torch import Tensor

from detectron2.structures import Boxes, ImageList, Instances


@dataclass
class RPNRecord:
    anchors: List[Boxes]  # per level, Hi*Wi*A anchors (shared by every image)
    objectness_logits: List[Tensor]  # per level, (N, Hi*Wi*A)
    anchor_deltas: List[Tensor]  # per level, (N, Hi*Wi*A, 4)
    gt_labels: Optional[List[Tensor]] = None  # per image, (R,): 1 fg, 0 bg, -1 ignored/unsampled
    gt_boxes: Optional[List[Tensor]] = None  # per image, (R, 4) matched GT boxes


@dataclass
class ROIRecord:
    # Sampled proposals (``label_and_sample_proposals``) with proposal_boxes, gt_classes, gt_boxes.
    proposals: List[Instances]
    box_features: Tensor  # (R, D): the box head's output, what the predictor sees
    scores: Tensor  # (R, K+1) class logits, background last
    deltas: Tensor  # (R, 4K) or (R, 4) class-agnostic box deltas


@dataclass
class DenseHeadRecord:
    anchors: List[Boxes]  # per level
    cls_logits: List[Tensor]  # per level, (N, Hi*Wi*A, K) sigmoid logits
    box_deltas: List[Tensor]  # per level, (N, Hi*Wi*A, 4)
    cls_features: List[Tensor]  # per level, (N, C, Hi, Wi): the classification tower's output
    num_anchors: int = 0  # A, anchors per location
    gt_labels: Optional[Tensor] = None  # (N, R): class id, K = background, -1 = ignored
    gt_boxes: Optional[Tensor] = None  # (N, R, 4)


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


@dataclass
class DetectorRecord:
    images: ImageList
    features: Dict[str, Tensor]
    gt_instances: List[Instances] = field(default_factory=list)
    rpn: Optional[RPNRecord] = None
    roi: Optional[ROIRecord] = None
    head: Optional[DenseHeadRecord] = None
    # Extra per-model outputs (e.g. an SSD's priors and mining mask), keyed by name.
    extras: Dict[str, object] = field(default_factory=dict)
