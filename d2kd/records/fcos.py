"""FCOS records: Detectron2's anchor-free ``FCOS`` (a ``DenseDetector``) in the dense-head record
RetinaNet fills, so every method over the dense views (anchors, classifier rows, classifier
inputs) runs on it unchanged.

FCOS has one anchor point per location, which Detectron2 represents as a square box of the
level's stride (``FCOS.anchor_generator``); those boxes are the record's anchors, so a method
that selects anchors by IoU with the GT (FGFI's near-object mask) selects the locations whose
stride-sized cell overlaps an object well — FGFI's "anchors near objects" on an anchor-free
head. Its classifier is a per-location sigmoid (K columns, one row per point); its GT matching is
FCOS's own (``label_anchors``: inside the box's centre region and in the level's size range;
background = K, nothing ignored). The centerness branch is recorded beside the box deltas.
"""
from typing import Dict

from torch import Tensor

from detectron2.modeling.meta_arch.fcos import FCOS

from .retinanet import DenseHeadRecord

__all__ = ["is_fcos", "fcos_head_outputs"]


def is_fcos(model) -> bool:
    """Whether :func:`fcos_head_outputs` records ``model`` (Detectron2's FCOS and subclasses)."""
    return isinstance(model, FCOS)


def fcos_head_outputs(model, features: Dict[str, Tensor]) -> DenseHeadRecord:
    """``FCOSHead.forward`` (per level ``cls_score(cls_subnet(x))``; ``bbox_subnet(x)`` →
    ``bbox_pred``, ``ctrness``) keeping the classification tower output, then
    ``_transpose_dense_predictions`` and the anchor points, in ``FCOS.forward_training``'s
    order (the losses are the stock model's, bit for bit)."""
    head = model.head
    feats = [features[f] for f in model.head_in_features]
    cls_features, logits, deltas, centerness = [], [], [], []
    for x in feats:
        tower = head.cls_subnet(x)
        cls_features.append(tower)
        logits.append(head.cls_score(tower))
        bbox_feature = head.bbox_subnet(x)
        deltas.append(head.bbox_pred(bbox_feature))
        centerness.append(head.ctrness(bbox_feature))
    logits, deltas, centerness = model._transpose_dense_predictions(
        [logits, deltas, centerness], [model.num_classes, 4, 1]
    )
    anchors = model.anchor_generator(feats)
    return DenseHeadRecord(
        anchors=anchors,
        cls_logits=logits,
        box_deltas=deltas,
        cls_features=cls_features,
        num_anchors=1,
        levels=list(model.head_in_features),
        cls_kernel_size=head.cls_score.kernel_size[0],
        centerness=centerness,
    )
