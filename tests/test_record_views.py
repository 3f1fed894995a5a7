"""Family-neutral views on records (d2kd/records/views.py): the anchors, classifier, classifier
input and detection-stage views of hand-made records, the errors of a record without them,
``record_layout`` of the shapes students, the build-time pairing checks per part, and the
distillers that read them keep no detector-family flag and read no model internals."""
import ast
import copy
import os
from types import SimpleNamespace

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes, ImageList, Instances

from d2kd.distill import ADL, FGFI, GKD, LSHFM, Chen2017, SoftLabelKD
from d2kd.distill.adl import adaptive_distillation_loss
from d2kd.distill.soft_label import sigmoid_kd_loss
from d2kd.modeling.meta_arch import DistillationRCNN, DistillationRetinaNet, DistillationSSD
from d2kd.records import (
    ClassifierLayout,
    DenseHeadRecord,
    DetectorRecord,
    ROIRecord,
    RPNRecord,
    SSDRecord,
    check_paired_part,
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
    m = students["faster_rcnn"]
    assert rcnn.classifier == ClassifierLayout(
        part="roi", probability="softmax", num_classes=8, pairing="shared_boxes",
        input_form="rows", input_channels=m.roi_heads.box_head.output_shape.channels)
    assert rcnn.classifier.weight is m.roi_heads.box_predictor.cls_score.weight
    assert rcnn.classifier.pooling.pooler is m.roi_heads.box_pooler
    assert rcnn.classifier.pooling.in_features == tuple(m.roi_heads.box_in_features)
    assert rcnn.classifier.paired_parts() == set()
    assert [(st.part, st.cls_loss, st.reg_loss, st.pairing) for st in rcnn.stages] == [
        ("rpn", "loss_rpn_cls", "loss_rpn_loc", "anchors"), ("roi", "loss_cls", "loss_box_reg", "shared_boxes")]
    assert rcnn.stages[1].box_coder_weights == tuple(m.roi_heads.box_predictor.box2box_transform.weights)
    assert rcnn.feature_shapes["p4"].stride == 16
    retina = record_layout(students["retinanet"])
    assert retina.parts == ["features", "head"]
    assert retina.anchors.part == "head" and retina.anchors.levels == ("p3", "p4", "p5", "p6", "p7")
    m = students["retinanet"]
    assert retina.classifier == ClassifierLayout(
        part="head", probability="sigmoid", num_classes=8, pairing="anchors",
        input_form="maps", input_channels=m.head.cls_score.in_channels, input_kernel=3)
    assert retina.classifier.weight is m.head.cls_score.weight and retina.classifier.pooling is None
    assert retina.stages == []  # a sigmoid classifier: no softmax detection stage
    assert retina.classifier.paired_parts() == {"head"}
    ssd = record_layout(students["ssd"])
    assert ssd.parts == ["features", "ssd"] and ssd.anchors is None and ssd.classifier is None
    assert [(st.part, st.cls_loss, st.reg_loss, st.pairing) for st in ssd.stages] == [
        ("ssd", "loss_cls", "loss_box_reg", "anchors")]
    other = SimpleNamespace(backbone=SimpleNamespace(output_shape=lambda: {"p3": ShapeSpec(channels=4, stride=8)}))
    plain = record_layout(other)  # a detector of no known family: features only
    assert plain.parts == ["features"] and plain.anchors is None and plain.classifier is None


def test_record_layout_parts_are_what_the_meta_architectures_record(students):
    metas = {"faster_rcnn": DistillationRCNN, "retinanet": DistillationRetinaNet, "ssd": DistillationSSD}
    for name, meta in metas.items():
        assert record_layout(students[name]).parts == list(meta.student_parts)


def _fake_teacher(student):
    """The teacher interface bind() uses, on a model of the student's architecture."""
    return SimpleNamespace(output_shape=student.backbone.output_shape, model=student,
                           layout=lambda: record_layout(student))


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


def test_no_distiller_reads_model_internals_or_record_slots():
    # a method reads records through views and models through record_layout: no family's
    # attribute names, no record slot by name (rpn, roi, head, ssd), no family flag
    forbidden = {"student_parts", "proposal_generator", "head_in_features", "roi_heads", "box_predictor",
                 "box_pooler", "box_in_features", "anchor_generator", "prior_generator", "cls_score",
                 "cls_subnet", "rpn", "roi", "head", "ssd"}
    names = sorted(f for f in os.listdir(os.path.join(REPO, "d2kd", "distill")) if f.endswith(".py"))
    assert {"gkd.py", "lshfm.py", "chen2017.py", "fgfi.py", "adl.py", "soft_label.py"} <= set(names)
    for name in names:
        with open(os.path.join(REPO, "d2kd", "distill", name)) as f:
            tree = ast.parse(f.read())
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not attrs & forbidden, (name, attrs & forbidden)
        # strings: part names are the records' vocabulary (needs), attribute names are not
        assert not strings & (forbidden - {"rpn", "roi", "head", "ssd"}), (name, strings & forbidden)
        assert not {"on", "source"} & {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                                       and isinstance(n.value, ast.Name) and n.value.id == "self"}, name


def test_gkd_lshfm_chen2017_state_needs_from_the_layout(students):
    rcnn, retina, ssd = students["faster_rcnn"], students["retinanet"], students["ssd"]

    def needs(d):
        return d.student_needs(), d.teacher_needs(), d.paired_needs()

    for student, part, paired in ((rcnn, "roi", set()), (retina, "head", {"head"})):
        d = GKD(pgm_enabled=False, attenuation="none")
        d.bind(student, _fake_teacher(student))
        assert needs(d) == ({part}, {"features", part}, paired)
        assert d.in_features == list(record_layout(student).anchors.levels)
        # the soft labels' weights come from the classifier's own pooler where it has one
        assert (d._poolings is not None) == (part == "roi")
        d = LSHFM()
        d.bind(student, _fake_teacher(student))
        assert needs(d) == ({part}, {"features", part}, set())
        assert d.feature_dim == record_layout(student).classifier.input_channels * (1 if part == "roi" else 9)
    d = Chen2017()
    d.bind(rcnn, _fake_teacher(rcnn))
    assert needs(d) == ({"rpn", "roi"}, {"features", "rpn", "roi"}, {"rpn"}) and d.variant == "paper"
    assert d.detector_loss_scales() == {"loss_rpn_cls": 0.5, "loss_cls": 0.5}
    d = Chen2017(roi=False)
    d.bind(rcnn, _fake_teacher(rcnn))
    assert needs(d) == ({"rpn"}, {"features", "rpn"}, {"rpn"})
    d = Chen2017()
    d.bind(ssd, _fake_teacher(ssd))
    assert needs(d) == ({"ssd"}, {"features", "ssd"}, {"ssd"}) and d.variant == "ssd_repo"
    d = Chen2017(variant="paper")
    d.bind(ssd, _fake_teacher(ssd))  # each backbone's declared hint layer (the fake teacher is an SSDLite too)
    assert d._hints == {"hint": ("expand7", "expand7")} and list(d.adapters) == ["hint"]


def test_gkd_lshfm_chen2017_refuse_what_their_views_cannot_give(students):
    rcnn, retina, ssd = students["faster_rcnn"], students["retinanet"], students["ssd"]
    with pytest.raises(ValueError) as e:
        GKD(pgm_enabled=False, attenuation="none").bind(ssd, _fake_teacher(ssd))
    assert str(e.value) == "GKD needs anchors and a final classifier (Faster R-CNN, RetinaNet); SSD records ['features', 'ssd']"
    with pytest.raises(ValueError) as e:
        Chen2017().bind(retina, _fake_teacher(retina))
    assert str(e.value).startswith("Chen2017 distils softmax detection stages") and "RetinaNet records ['features', 'head']" in str(e.value)
    with pytest.raises(ValueError, match="variant 'ssd_repo' is the SSD reference's single-stage loss"):
        Chen2017(variant="ssd_repo").bind(rcnn, _fake_teacher(rcnn))
    with pytest.raises(ValueError, match=r"the teacher \(RetinaNet\) has no rpn stage"):
        Chen2017().bind(rcnn, SimpleNamespace(output_shape=retina.backbone.output_shape, model=retina,
                                              layout=lambda: record_layout(retina)))
    # LSHFM: box-head rows against tower maps are not the same features
    with pytest.raises(ValueError, match="LSHFM needs the features both final classifiers read, in the same form"):
        LSHFM().bind(rcnn, SimpleNamespace(output_shape=retina.backbone.output_shape, model=retina,
                                           layout=lambda: record_layout(retina)))


def test_pairing_checks_by_part(students):
    rcnn, retina, ssd = students["faster_rcnn"], students["retinanet"], students["ssd"]
    for part, model in (("rpn", rcnn), ("roi", rcnn), ("head", retina), ("ssd", ssd), ("features", rcnn)):
        check_paired_part(part, "M", model, model)  # a model pairs with itself
    other = copy.deepcopy(rcnn)
    other.proposal_generator.anchor_generator.strides = [2 * s for s in other.proposal_generator.anchor_generator.strides]
    with pytest.raises(ValueError, match="M: RPN anchors differ"):
        check_paired_part("rpn", "M", rcnn, other)
    check_paired_part("roi", "M", rcnn, other)  # the teacher scores the student's boxes: nothing to pair
    other = copy.deepcopy(ssd)
    other.prior_generator.min_sizes = [2 * s for s in other.prior_generator.min_sizes]
    with pytest.raises(ValueError, match="M: teacher and student SSDs must share the prior layout"):
        check_paired_part("ssd", "M", ssd, other)


def test_stage_views_rows_targets_and_normalisers():
    torch.manual_seed(0)
    coder = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = [Boxes(torch.tensor([[0.0, 0, 8, 8], [4, 4, 12, 12]])), Boxes(torch.tensor([[0.0, 0, 16, 16]]))]
    z = [torch.tensor([[1.0, 2], [3, 4]]), torch.tensor([[5.0], [6]])]  # (N=2, anchors of the level)
    deltas = [torch.randn(2, 2, 4), torch.randn(2, 1, 4)]
    labels = [torch.tensor([1, -1, 0]), torch.tensor([0, 1, 1])]
    gt = [torch.rand(3, 2).repeat(1, 2) * 8 + torch.tensor([0, 0, 4.0, 4.0]) for _ in range(2)]
    v = RPNRecord(anchors=anchors, objectness_logits=z, anchor_deltas=deltas, gt_labels=labels, gt_boxes=gt,
                  box_coder=coder, batch_size_per_image=4).stage_view()
    # rows: image 0's anchors (levels concatenated), then image 1's; objectness as softmax [0, z]
    assert v.logits.tolist() == [[0, 1], [0, 2], [0, 5], [0, 3], [0, 4], [0, 6]] and v.bg_index == 0
    assert v.cls_rows.tolist() == [True, False, True, True, True, True]
    assert v.reg_rows.tolist() == [True, False, False, False, True, True]
    assert v.normalizer == 8.0  # 4 sampled per image x 2 images (Detectron2's RPN normaliser)
    a = Boxes.cat(anchors).tensor
    rows = [(0, 0), (1, 1), (1, 2)]  # (image, anchor) of the positives
    expected = torch.cat([coder.get_deltas(a[r:r + 1], gt[i][r:r + 1]) for i, r in rows])
    assert torch.allclose(v.reg_targets, expected)
    flat = torch.cat(deltas, dim=1)
    assert torch.equal(v.row_deltas(v.reg_rows), torch.stack([flat[i, r] for i, r in rows]))
    # ROI: background last, every row classified, the foreground rows regressed with their class's deltas
    roi = _roi_record()
    for p in roi.proposals:
        p.gt_boxes = Boxes(p.proposal_boxes.tensor + 1.0)
    roi.deltas = torch.randn(3, 4 * K)
    roi.box_coder = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    v = roi.stage_view()
    assert v.bg_index == K and v.normalizer == 3 and v.cls_rows.all()
    assert v.reg_rows.tolist() == [True, False, True]  # classes 1, K (background), 0
    assert torch.equal(v.row_deltas(v.reg_rows), torch.stack([roi.deltas[0, 4:8], roi.deltas[2, 0:4]]))
    boxes = torch.cat([p.proposal_boxes.tensor for p in roi.proposals])[[0, 2]]
    assert torch.allclose(v.reg_targets, roi.box_coder.get_deltas(boxes, boxes + 1.0))
    # SSD: background column 0, the positives and mined negatives classified, / N_pos
    logits = torch.randn(2, 3, K + 1)
    pos = torch.tensor([[True, False, False], [False, False, True]])
    neg = torch.tensor([[False, True, False], [False, False, False]])
    targets = torch.randn(2, 3, 4)
    rec = SSDRecord(logits=logits, deltas=torch.randn(2, 3, 4), priors=torch.rand(3, 4), level_sizes=[(1, 1)],
                    num_priors_per_location=[3], targets=targets, pos_mask=pos, neg_mask=neg, num_pos=2)
    v = rec.stage_view()
    assert v.bg_index == 0 and v.normalizer == 2.0 and torch.equal(v.logits, logits.flatten(0, 1))
    assert v.cls_rows.tolist() == [True, True, False, False, False, True]
    assert torch.equal(v.reg_targets, torch.stack([targets[0, 0], targets[1, 2]]))
    assert rec.stage_view().classes is None and torch.equal(v.row_deltas(v.reg_rows), rec.deltas[pos])
    # a teacher's record (no GT matching) gives rows without loss rows
    assert SSDRecord(logits=logits, deltas=targets, priors=rec.priors, level_sizes=[(1, 1)],
                     num_priors_per_location=[3]).stage_view().cls_rows is None


def test_classifier_input_view_and_box_pooling(students):
    rcnn = students["faster_rcnn"]
    pooling = record_layout(rcnn).classifier.pooling
    boxes = [Boxes(torch.tensor([[0.0, 0, 4, 4], [0, 0, 300, 300], [10, 10, 700, 700]])), Boxes(torch.tensor([[5.0, 5, 30, 30]]))]
    p = rcnn.roi_heads.box_pooler
    expected = assign_boxes_to_levels(boxes, p.min_level, p.max_level, p.canonical_box_size, p.canonical_level)
    assert torch.equal(pooling.levels(boxes), expected) and len(set(expected.tolist())) > 1
    feats = {f: torch.randn(2, s.channels, 128 // s.stride, 128 // s.stride) for f, s in rcnn.backbone.output_shape().items()}
    assert torch.equal(pooling.pool(feats, boxes), p([feats[f] for f in rcnn.roi_heads.box_in_features], boxes))
    # dense: the tower maps, the classifier's kernel, and the anchors' labels per location
    head = _head_record()
    head.cls_features = [torch.randn(2, 4, 1, 1), torch.randn(2, 4, 1, 1)]
    head.num_anchors = 1
    v = head.classifier_input_view()
    assert v.rows is None and v.maps is head.cls_features and v.kernel_size == 3
    assert torch.equal(v.labels, head.gt_labels.view(2, 3, 1))
    assert _roi_record().classifier_input_view().maps is None


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
