"""R-CNN records: what an RPN and a box head computed on a batch, and the code that fills them.

Each function performs exactly what the corresponding Detectron2 ``forward`` does (same calls in
the same order, so the losses are bit-identical to the stock model's) and additionally returns
the tensors that Detectron2 computes and then drops.

Conventions are Detectron2's: per-level lists in the order of the RPN's ``in_features``, anchors
flattened as (N, Hi*Wi*A, ...), background = the LAST class index (K) in ROI scores.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances

from .views import AnchorsLayout, AnchorsView, ClassifierLayout, ClassifierView, RecordLayout

__all__ = ["RPNRecord", "ROIRecord", "rpn_outputs", "roi_box_outputs", "roi_heads_training", "rcnn_layout"]


@dataclass
class RPNRecord:
    anchors: List[Boxes]  # per level, Hi*Wi*A anchors (shared by every image)
    objectness_logits: List[Tensor]  # per level, (N, Hi*Wi*A)
    anchor_deltas: List[Tensor]  # per level, (N, Hi*Wi*A, 4)
    gt_labels: Optional[List[Tensor]] = None  # per image, (R,): 1 fg, 0 bg, -1 ignored/unsampled
    gt_boxes: Optional[List[Tensor]] = None  # per image, (R, 4) matched GT boxes
    levels: Optional[List[str]] = None  # the RPN's ``in_features``, the levels of the lists above

    def anchors_view(self) -> AnchorsView:
        return AnchorsView(levels=self.levels, anchors=self.anchors)


@dataclass
class ROIRecord:
    # Sampled proposals (``label_and_sample_proposals``) with proposal_boxes, gt_classes, gt_boxes.
    proposals: List[Instances]
    box_features: Tensor  # (R, D): the box head's output, what the predictor sees
    scores: Tensor  # (R, K+1) class logits, background last
    deltas: Tensor  # (R, 4K) or (R, 4) class-agnostic box deltas

    def classifier_view(self) -> ClassifierView:
        """One softmax row per sampled proposal (the teacher's record scores the student's
        proposals: same rows), labelled with the proposal's ``gt_classes`` (K = background)."""
        view = ClassifierView(probability="softmax", logits=self.scores, bg_index=self.scores.shape[-1] - 1)
        props = self.proposals
        if props:
            if props[0].has("gt_classes"):
                view.labels = torch.cat([p.gt_classes for p in props])
            view.boxes = Boxes.cat([p.proposal_boxes for p in props]).tensor
            view.image_index = torch.cat(
                [torch.full((len(p),), i, dtype=torch.long, device=self.scores.device) for i, p in enumerate(props)]
            )
        return view


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
    record = RPNRecord(anchors=anchors, objectness_logits=logits, anchor_deltas=deltas, levels=list(rpn.in_features))
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
        with torch.no_grad():
            pred = roi_heads.box_predictor.predict_boxes_for_gt_classes(
                (record.scores, record.deltas), proposals
            )
            for p, b in zip(proposals, pred):
                p.proposal_boxes = Boxes(b)
    losses.update(roi_heads._forward_mask(features, proposals))
    losses.update(roi_heads._forward_keypoint(features, proposals))
    return record, losses


def rcnn_layout(model) -> Optional[RecordLayout]:
    """The record layout of an R-CNN (a model with an RPN and/or ROI heads), else None: anchors
    from the RPN (``rpn``), the classifier from the box head's softmax on the student's sampled
    proposals (``roi``; the teacher scores the same boxes)."""
    rpn, roi_heads = getattr(model, "proposal_generator", None), getattr(model, "roi_heads", None)
    if rpn is None and roi_heads is None:
        return None
    layout = RecordLayout(parts=["features"], feature_shapes=dict(model.backbone.output_shape()))
    if rpn is not None:
        layout.parts.append("rpn")
        layout.anchors = AnchorsLayout(part="rpn", levels=tuple(rpn.in_features))
    if roi_heads is not None:
        layout.parts.append("roi")
        layout.classifier = ClassifierLayout(
            part="roi", probability="softmax", num_classes=roi_heads.num_classes, pairing="shared_boxes"
        )
    return layout
