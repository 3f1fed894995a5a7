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

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances

from .views import (
    AnchorsLayout,
    AnchorsView,
    BoxPooling,
    ClassifierInputView,
    ClassifierLayout,
    ClassifierView,
    DetectionStageView,
    RecordLayout,
    StageLayout,
)

__all__ = [
    "RPNRecord",
    "ROIRecord",
    "rpn_outputs",
    "roi_box_outputs",
    "roi_heads_training",
    "rcnn_layout",
    "check_same_rpn_anchors",
]


@dataclass
class RPNRecord:
    anchors: List[Boxes]  # per level, Hi*Wi*A anchors (shared by every image)
    objectness_logits: List[Tensor]  # per level, (N, Hi*Wi*A)
    anchor_deltas: List[Tensor]  # per level, (N, Hi*Wi*A, 4)
    gt_labels: Optional[List[Tensor]] = None  # per image, (R,): 1 fg, 0 bg, -1 ignored/unsampled
    gt_boxes: Optional[List[Tensor]] = None  # per image, (R, 4) matched GT boxes
    levels: Optional[List[str]] = None  # the RPN's ``in_features``, the levels of the lists above
    box_coder: Optional[Box2BoxTransform] = None  # how ``anchor_deltas`` encode boxes
    batch_size_per_image: int = 0  # anchors sampled per image (the RPN losses' normaliser)

    def anchors_view(self) -> AnchorsView:
        return AnchorsView(levels=self.levels, anchors=self.anchors)

    def stage_view(self) -> DetectionStageView:
        """Objectness as the two-class softmax ``[0, z]`` (= ``[1 − σ(z), σ(z)]``, background
        column 0), one row per anchor of every image; with GT matching (the student's record):
        the sampled anchors, the positives with their encoded GT boxes, and Detectron2's RPN
        normaliser (anchors sampled per image × images)."""
        logits = torch.cat(self.objectness_logits, dim=1)  # (N, R)
        view = DetectionStageView(
            part="rpn",
            logits=torch.stack([torch.zeros_like(logits), logits], dim=-1).flatten(0, 1),
            bg_index=0,
            deltas=torch.cat(self.anchor_deltas, dim=1).flatten(0, 1),
        )
        if self.gt_labels is not None:
            labels = torch.stack(self.gt_labels)  # (N, R): 1 fg, 0 bg, -1 not sampled
            positive = labels == 1
            view.cls_rows, view.reg_rows = (labels >= 0).flatten(), positive.flatten()
            idx = positive.nonzero(as_tuple=True)  # (image, anchor), row-major = the rows' order
            anchors = Boxes.cat(self.anchors).tensor
            view.reg_targets = self.box_coder.get_deltas(anchors[idx[1]], torch.stack(self.gt_boxes)[idx])
            view.normalizer = float(self.batch_size_per_image * labels.shape[0])
        return view

    def check_same_rows(self, method: str, teacher: "RPNRecord") -> None:
        """Per batch: the teacher's anchors are the student's (as many, per level)."""
        s = [x.shape[1] for x in self.objectness_logits]
        t = [x.shape[1] for x in teacher.objectness_logits]
        if s != t:
            raise ValueError(
                f"{method}: the student's RPN has {s} anchors per level on this batch, the teacher's "
                f"{t}; the per-anchor terms need the same anchors (same strides and feature sizes)"
            )


@dataclass
class ROIRecord:
    # Sampled proposals (``label_and_sample_proposals``) with proposal_boxes, gt_classes, gt_boxes.
    proposals: List[Instances]
    box_features: Tensor  # (R, D): the box head's output, what the predictor sees
    scores: Tensor  # (R, K+1) class logits, background last
    deltas: Tensor  # (R, 4K) or (R, 4) class-agnostic box deltas
    box_coder: Optional[Box2BoxTransform] = None  # how ``deltas`` encode boxes

    def classifier_input_view(self) -> ClassifierInputView:
        """The box head's output, one row per sampled proposal: what the linear classifier reads."""
        return ClassifierInputView(rows=self.box_features)

    def stage_view(self) -> DetectionStageView:
        """The box head's softmax (background last) and per-class deltas on the sampled
        proposals; with their GT matching: every row classified, the foreground rows regressed
        towards their encoded GT boxes, Detectron2's normaliser (the number of proposals)."""
        K = self.scores.shape[1] - 1
        view = DetectionStageView(part="roi", logits=self.scores, bg_index=K, deltas=self.deltas)
        props = self.proposals
        if props and props[0].has("gt_classes"):
            classes = torch.cat([p.gt_classes for p in props])
            view.classes = classes
            view.cls_rows = torch.ones_like(classes, dtype=torch.bool)
            view.reg_rows = (classes >= 0) & (classes < K)
            boxes = torch.cat([p.proposal_boxes.tensor for p in props])[view.reg_rows]
            # an image without GT has no gt_boxes (Detectron2 sets them only where it matched):
            # its rows are all background, so any box of the right shape stands in
            gt_boxes = torch.cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in props])
            gt_boxes = gt_boxes[view.reg_rows]
            view.reg_targets = self.box_coder.get_deltas(boxes, gt_boxes)
            view.normalizer = max(classes.numel(), 1)
        return view

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
    record = RPNRecord(
        anchors=anchors,
        objectness_logits=logits,
        anchor_deltas=deltas,
        levels=list(rpn.in_features),
        box_coder=rpn.box2box_transform,
        batch_size_per_image=rpn.batch_size_per_image,
    )
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
    return ROIRecord(
        proposals=proposals,
        box_features=box_features,
        scores=scores,
        deltas=deltas,
        box_coder=roi_heads.box_predictor.box2box_transform,
    )


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
        if hasattr(rpn, "box2box_transform"):  # Detectron2's RPN (not an anchors-only stand-in)
            layout.stages.append(
                StageLayout("rpn", "loss_rpn_cls", "loss_rpn_loc", tuple(rpn.box2box_transform.weights), "anchors")
            )
    if roi_heads is not None:
        layout.parts.append("roi")
        predictor = roi_heads.box_predictor
        layout.classifier = ClassifierLayout(
            part="roi",
            probability="softmax",
            num_classes=roi_heads.num_classes,
            pairing="shared_boxes",
            input_form="rows",
            input_channels=roi_heads.box_head.output_shape.channels,
            weight=predictor.cls_score.weight,
            pooling=BoxPooling(tuple(roi_heads.box_in_features), roi_heads.box_pooler),
        )
        layout.stages.append(
            StageLayout("roi", "loss_cls", "loss_box_reg", tuple(predictor.box2box_transform.weights), "shared_boxes")
        )
    return layout


def check_same_rpn_anchors(method: str, student, teacher) -> None:
    """Build time: two RPNs' per-anchor outputs line up only with the same anchors (strides,
    anchors per location, cell anchors) and compare as boxes only with the same box coding."""
    s_rpn, t_rpn = student.proposal_generator, teacher.proposal_generator
    s_ag, t_ag = s_rpn.anchor_generator, t_rpn.anchor_generator
    s_lay = (list(s_ag.strides), list(s_ag.num_cell_anchors), [a.tolist() for a in s_ag.cell_anchors])
    t_lay = (list(t_ag.strides), list(t_ag.num_cell_anchors), [a.tolist() for a in t_ag.cell_anchors])
    if s_lay[:2] != t_lay[:2] or not all(
        torch.allclose(torch.tensor(a), torch.tensor(b)) for a, b in zip(s_lay[2], t_lay[2])
    ):
        raise ValueError(
            f"{method}: RPN anchors differ: student strides {s_lay[0]} x {s_lay[1]} anchors, "
            f"teacher strides {t_lay[0]} x {t_lay[1]} anchors (or different sizes); the "
            f"per-anchor terms need the same anchors: give both the same anchor_generator"
        )
