"""Detectron2's detector parts, run openly so their intermediate tensors can be recorded.

Each function performs exactly what the corresponding Detectron2 ``forward`` does (same calls
in the same order, so the losses are bit-identical to the stock model's) and additionally
returns the tensors that Detectron2 computes and then drops.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import ImageList, Instances

from .records import DenseHeadRecord, ROIRecord, RPNRecord


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
