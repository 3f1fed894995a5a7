"""Family-neutral views on records (d2kd/records/views.py): the anchors and classifier views of
hand-made records, the errors of a record without them, ``record_layout`` of the shapes students,
and the distillers that read them (FGFI, SoftLabelKD, ADL) keep no detector-family flag."""
import ast
import os
from types import SimpleNamespace

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances

from d2kd.distill import ADL, FGFI, SoftLabelKD
from d2kd.distill.adl import adaptive_distillation_loss
from d2kd.distill.soft_label import sigmoid_kd_loss
from d2kd.modeling.meta_arch import DistillationRCNN, DistillationRetinaNet, DistillationSSD
from d2kd.records import (
    ClassifierLayout,
    DenseHeadRecord,
    DetectorRecord,
    ROIRecord,
    RPNRecord,
    record_layout,
)

from conftest import REPO

K = 3  # foreground classes of the hand-made records


def _images(n):
    return ImageList(torch.zeros(n, 3, 32, 32), [(32, 32)] * n)


def _rpn_record():
    anchors = [Boxes(torch.tensor([[0.0, 0, 8, 8], [4, 4, 12, 12]])), Boxes(torch.tensor([[0.0, 0, 16, 16]]))]
    return RPNRecord(anchors=anchors, objectness_logits=[], anchor_deltas=[], levels=["p3", "p4"])


def _roi_record():
    props = []
    for boxes, classes in (([[0.0, 0, 10, 10], [2, 2, 6, 6]], [1, K]), ([[5.0, 5, 9, 9]], [0])):
        p = Instances((32, 32))
        p.proposal_boxes = Boxes(torch.tensor(boxes))
        p.gt_classes = torch.tensor(classes)
        props.append(p)
    scores = torch.arange(3 * (K + 1), dtype=torch.float32).view(3, K + 1)
    return ROIRecord(proposals=props, box_features=torch.zeros(3, 2), scores=scores, deltas=torch.zeros(3, 4 * K))


def _head_record(with_labels=True):
    """2 images, level p3 with 2 anchors and p4 with 1: R = 3 rows per image."""
    anchors = [Boxes(torch.tensor([[0.0, 0, 8, 8], [4, 4, 12, 12]])), Boxes(torch.tensor([[0.0, 0, 16, 16]]))]
    logits = torch.arange(2 * 3 * K, dtype=torch.float32).view(2, 3, K)
    return DenseHeadRecord(
        anchors=anchors,
        cls_logits=[logits[:, :2], logits[:, 2:]],
        box_deltas=[torch.zeros(2, 2, 4), torch.zeros(2, 1, 4)],
        cls_features=[],
        num_anchors=1,
        gt_labels=torch.tensor([[K, 2, -1], [0, K, K]]) if with_labels else None,
        levels=["p3", "p4"],
    )


# ---- per-batch views ------------------------------------------------------------------------
def test_anchors_view_of_an_rpn_and_of_a_dense_head():
    for slot, rec in (("rpn", _rpn_record()), ("head", _head_record())):
        view = DetectorRecord(images=_images(2), features={}, **{slot: rec}).anchors_view()
        assert view.levels == ["p3", "p4"]
        assert [len(a) for a in view.anchors] == [2, 1]
        assert view.anchors[1].tensor.tolist() == [[0.0, 0, 16, 16]]


def test_classifier_view_of_an_rcnn_record_is_the_sampled_rois():
    record = DetectorRecord(images=_images(2), features={}, rpn=_rpn_record(), roi=_roi_record())
    view = record.classifier_view()
    assert view.probability == "softmax" and view.num_classes == K and view.bg_index == K
    assert view.logits is record.roi.scores  # the ROI logits themselves, row = sampled proposal
    assert view.labels.tolist() == [1, K, 0]
    assert view.boxes.tolist() == [[0.0, 0, 10, 10], [2, 2, 6, 6], [5, 5, 9, 9]]
    assert view.image_index.tolist() == [0, 0, 1]
    assert view.valid().tolist() == [True, True, True]
    assert view.foreground().tolist() == [True, False, True]


def test_classifier_view_of_a_dense_head_is_every_anchor_of_every_image_row_major():
    head = _head_record()
    view = DetectorRecord(images=_images(2), features={}, head=head).classifier_view()
    assert view.probability == "sigmoid" and view.num_classes == K and view.bg_index is None
    full = torch.cat(head.cls_logits, dim=1)  # (N, R, K)
    assert view.logits.shape == (6, K)
    for i in range(2):
        for r in range(3):  # row i·R + r is anchor r (levels concatenated) of image i
            assert torch.equal(view.logits[i * 3 + r], full[i, r])
    assert view.labels.tolist() == [K, 2, -1, 0, K, K]
    anchors = [[0.0, 0, 8, 8], [4, 4, 12, 12], [0, 0, 16, 16]]
    assert view.boxes.tolist() == anchors + anchors
    assert view.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert view.valid().tolist() == [True, True, False, True, True, True]
    assert view.foreground().tolist() == [False, True, False, True, False, False]
    # the same elements in the same order as boolean masks on (N, R, K)
    assert torch.equal(view.logits[view.valid()], full[head.gt_labels >= 0])


def test_a_record_without_the_view_says_which_slot_gives_it():
    features_only = DetectorRecord(images=_images(1), features={})
    with pytest.raises(ValueError, match=r"no anchors .*'rpn' or 'head'.* holds \['features'\]"):
        features_only.anchors_view()
    rpn_only = DetectorRecord(images=_images(2), features={}, rpn=_rpn_record())
    with pytest.raises(ValueError, match=r"no classifier outputs .*'roi' or 'head'.* holds \['features', 'rpn'\]"):
        rpn_only.classifier_view()
    teacher_head = DetectorRecord(images=_images(2), features={}, head=_head_record(with_labels=False))
    view = teacher_head.classifier_view()  # a teacher's dense head has logits, no GT matching
    assert view.labels is None and view.logits.shape == (6, K)
    with pytest.raises(ValueError, match="no GT labels"):
        view.valid()


# ---- at build time --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def students():
    torch.manual_seed(0)
    return {
        name: instantiate(LazyConfig.load(os.path.join(REPO, f"configs/shapes/{name}_student.py")).model)
        for name in ("faster_rcnn", "retinanet", "ssd")
    }


def test_record_layout_of_rcnn_retinanet_ssd(students):
    rcnn = record_layout(students["faster_rcnn"])
    assert rcnn.parts == ["features", "rpn", "roi"]
    assert rcnn.anchors.part == "rpn" and rcnn.anchors.levels == ("p2", "p3", "p4", "p5", "p6")
    assert rcnn.classifier == ClassifierLayout(part="roi", probability="softmax", num_classes=8, pairing="shared_boxes")
    assert rcnn.classifier.paired_parts() == set()
    assert rcnn.feature_shapes["p4"].stride == 16
    retina = record_layout(students["retinanet"])
    assert retina.parts == ["features", "head"]
    assert retina.anchors.part == "head" and retina.anchors.levels == ("p3", "p4", "p5", "p6", "p7")
    assert retina.classifier == ClassifierLayout(part="head", probability="sigmoid", num_classes=8, pairing="anchors")
    assert retina.classifier.paired_parts() == {"head"}
    ssd = record_layout(students["ssd"])
    assert ssd.parts == ["features", "ssd"] and ssd.anchors is None and ssd.classifier is None
    other = SimpleNamespace(backbone=SimpleNamespace(output_shape=lambda: {"p3": ShapeSpec(channels=4, stride=8)}))
    plain = record_layout(other)  # a detector of no known family: features only
    assert plain.parts == ["features"] and plain.anchors is None and plain.classifier is None


def test_record_layout_parts_are_what_the_meta_architectures_record(students):
    metas = {"faster_rcnn": DistillationRCNN, "retinanet": DistillationRetinaNet, "ssd": DistillationSSD}
    for name, meta in metas.items():
        assert record_layout(students[name]).parts == list(meta.student_parts)


def _fake_teacher(student):
    return SimpleNamespace(output_shape=student.backbone.output_shape)


def test_ported_distillers_state_needs_from_the_layout_without_a_family_flag(students):
    rcnn, retina, ssd = students["faster_rcnn"], students["retinanet"], students["ssd"]
    for student, needs in ((rcnn, {"rpn"}), (retina, {"head"})):
        d = FGFI(in_features=["p4"])
        d.bind(student, _fake_teacher(student))
        assert d.student_needs() == needs and d.teacher_needs() == {"features"}
    for student, part, paired in ((rcnn, "roi", set()), (retina, "head", {"head"})):
        d = SoftLabelKD()
        d.bind(student, _fake_teacher(student))
        assert (d.student_needs(), d.teacher_needs(), d.paired_needs()) == ({part}, {"features", part}, paired)
    d = ADL()
    d.bind(retina, _fake_teacher(retina))
    assert (d.student_needs(), d.teacher_needs(), d.paired_needs()) == ({"head"}, {"features", "head"}, {"head"})
    for d in (FGFI(), SoftLabelKD(), ADL()):
        assert not hasattr(d, "on") and not hasattr(d, "source")
    with pytest.raises(ValueError) as e:
        ADL().bind(rcnn, _fake_teacher(rcnn))
    assert str(e.value) == ("ADL needs a dense sigmoid head (RetinaNet); GeneralizedRCNN records ['features', "
                            "'rpn', 'roi'] (its classifier 'roi' is softmax on shared boxes)")
    for d, what in ((ADL(), "a dense sigmoid head (RetinaNet)"), (SoftLabelKD(), "ROI or dense-head logits"),
                    (FGFI(), "anchors from an RPN or a dense head")):
        with pytest.raises(ValueError) as e:
            d.bind(ssd, _fake_teacher(ssd))
        assert str(e.value) == f"{type(d).__name__} needs {what}; SSD records ['features', 'ssd']"


def test_ported_distillers_do_not_read_model_internals():
    forbidden = {"student_parts", "proposal_generator", "head_in_features", "roi_heads"}
    for name in ("fgfi.py", "soft_label.py", "adl.py"):
        with open(os.path.join(REPO, "d2kd", "distill", name)) as f:
            tree = ast.parse(f.read())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & forbidden, (name, names & forbidden)
        assert not {"on", "source"} & {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                                       and isinstance(n.value, ast.Name) and n.value.id == "self"}, name


# ---- the views give today's losses, bit for bit --------------------------------------------
def test_dense_losses_on_the_view_equal_the_per_anchor_formulas():
    torch.manual_seed(0)
    n, r = 2, 50
    s_head, t_head = _head_record(), _head_record(with_labels=False)
    s_head.anchors = t_head.anchors = [Boxes(torch.rand(30, 4) * 32), Boxes(torch.rand(20, 4) * 32)]
    s_head.cls_logits = [torch.randn(n, 30, K), torch.randn(n, 20, K)]
    t_head.cls_logits = [torch.randn(n, 30, K), torch.randn(n, 20, K)]
    s_head.gt_labels = torch.randint(-1, K + 1, (n, r))
    s = DetectorRecord(images=_images(n), features={}, head=s_head)
    t = DetectorRecord(images=_images(n), features={}, head=t_head)
    xs, xt, labels = torch.cat(s_head.cls_logits, 1), torch.cat(t_head.cls_logits, 1), s_head.gt_labels
    # SoftLabelKD's (N, R, K) formula before the views
    valid = labels >= 0
    num_fg = ((labels >= 0) & (labels != K)).sum().clamp(min=1)
    expected = sigmoid_kd_loss(xs[valid], xt[valid], 2.0).sum() / num_fg
    assert torch.equal(SoftLabelKD(temperature=2.0)(s, t)["cls"], expected)
    # ADL's
    for normalizer in ("adaptive", "num_fg"):
        expected = adaptive_distillation_loss(
            xs, xt, valid.unsqueeze(-1), normalizer=normalizer, num_fg=((labels >= 0) & (labels != K)).sum()
        )
        assert torch.equal(ADL(normalizer=normalizer)(s, t)["cls"], expected)
