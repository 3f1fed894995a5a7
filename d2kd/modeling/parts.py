"""Detectron2's detector parts, run openly so their intermediate tensors can be recorded.

Each function performs exactly what the corresponding Detectron2 ``forward`` does (same calls
in the same order, so the losses are bit-identical to the stock model's) and additionally
returns the tensors that Detectron2 computes and then drops.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import ImageList, Instances

from .records import DenseHeadLayout, DenseHeadRecord, ROIRecord, RPNRecord


def rpn_outputs(
    rpn: RPN,
    images: ImageList,
    features: Dict[str, Tensor],
    gt_instances: Optional[List[Instances]] = None,
    *,
    proposals: bool = True,
):
    """``RPN.forward``, also returning the raw per-anchor outputs and their GT matching.

    Returns ``(record, proposals or None, losses)``. Without ``gt_instances`` (a teacher), no
    labels or losses are computed; with ``proposals=False`` no proposals are predicted.
    """
    feats = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(feats)
    logits, deltas = rpn.rpn_head(feats)
    # (N, A, Hi, Wi) -> (N, Hi*Wi*A), as in RPN.forward
    logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
    box_dim = rpn.anchor_generator.box_dim
    deltas = [
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        for x in deltas
    ]
    record = RPNRecord(anchors=anchors, objectness_logits=logits, anchor_deltas=deltas)
    losses = {}
    if gt_instances is not None:
        record.gt_labels, record.gt_boxes = rpn.label_and_sample_anchors(anchors, gt_instances)
        losses = rpn.losses(anchors, logits, record.gt_labels, deltas, record.gt_boxes)
    props = rpn.predict_proposals(anchors, logits, deltas, images.image_sizes) if proposals else None
    return record, props, losses


def roi_box_outputs(roi_heads: StandardROIHeads, features: Dict[str, Tensor], proposals: List[Instances]):
    """The box branch of ``StandardROIHeads._forward_box`` on given (already sampled) proposals."""
    feats = [features[f] for f in roi_heads.box_in_features]
    box_features = roi_heads.box_pooler(feats, [x.proposal_boxes for x in proposals])
    box_features = roi_heads.box_head(box_features)
    scores, deltas = roi_heads.box_predictor(box_features)
    return ROIRecord(proposals=proposals, box_features=box_features, scores=scores, deltas=deltas)


def roi_heads_training(
    roi_heads: StandardROIHeads,
    features: Dict[str, Tensor],
    proposals: List[Instances],
    targets: List[Instances],
) -> Tuple[ROIRecord, Dict[str, Tensor]]:
    """``StandardROIHeads.forward`` in training, also returning the box branch's tensors."""
    if not isinstance(roi_heads, StandardROIHeads):
        raise TypeError(
            f"d2kd's DistillationRCNN records ROI outputs of StandardROIHeads (and subclasses); "
            f"got {type(roi_heads).__name__}"
        )
    proposals = roi_heads.label_and_sample_proposals(proposals, targets)
    record = roi_box_outputs(roi_heads, features, proposals)
    losses = roi_heads.box_predictor.losses((record.scores, record.deltas), proposals)
    if roi_heads.train_on_pred_boxes:
        from detectron2.structures import Boxes

        with torch.no_grad():
            pred = roi_heads.box_predictor.predict_boxes_for_gt_classes(
                (record.scores, record.deltas), proposals
            )
            for p, b in zip(proposals, pred):
                p.proposal_boxes = Boxes(b)
    losses.update(roi_heads._forward_mask(features, proposals))
    losses.update(roi_heads._forward_keypoint(features, proposals))
    return record, losses


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
    )


def dense_head_layout(model) -> Optional[DenseHeadLayout]:
    """The anchor layout of ``model``'s dense head if :func:`retinanet_head_outputs` records it,
    else None. Only Detectron2's ``RetinaNet`` (and subclasses) qualify: other dense detectors
    with a ``head`` (e.g. ``FCOS``: one anchor point per location, centerness-weighted scores)
    produce outputs that methods written for per-anchor sigmoid logits cannot compare."""
    if not isinstance(model, RetinaNet):
        return None
    generator = model.anchor_generator
    return DenseHeadLayout(
        in_features=list(model.head_in_features),
        strides=[int(s) for s in generator.strides],
        cell_anchors=[a.detach().cpu().float() for a in generator.cell_anchors],
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
