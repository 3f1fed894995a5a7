"""py-faster-rcnn's anchors as a Detectron2 anchor generator (d2kd/modeling/anchor_generator.py),
checked against an independent numpy transcription of py-faster-rcnn's ``generate_anchors`` and
``bbox_overlaps``, and the FGFI mask of the VOC config they give (issue #24, item 4)."""
import numpy as np
import pytest
import torch
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import LazyConfig  # noqa: E402
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator  # noqa: E402

from d2kd.distill.fgfi import fgfi_masks_batch  # noqa: E402
from d2kd.modeling.anchor_generator import PyFasterRCNNAnchorGenerator  # noqa: E402


# ---- py-faster-rcnn (lib/rpn/generate_anchors.py, lib/utils/cython_bbox.pyx), in numpy ----
def _whctrs(a):
    w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
    return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)


def _mkanchors(ws, hs, x, y):
    ws, hs = ws[:, None], hs[:, None]
    return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    w, h, x, y = _whctrs(np.array([1, 1, base_size, base_size]) - 1)
    ws = np.round(np.sqrt(w * h / np.array(ratios)))
    hs = np.round(ws * np.array(ratios))
    ratio_anchors = _mkanchors(ws, hs, x, y)
    out = []
    for a in ratio_anchors:
        w, h, x, y = _whctrs(a)
        out.append(_mkanchors(w * np.array(scales), h * np.array(scales), x, y))
    return np.vstack(out)  # ratios outer, scales inner


def bbox_overlaps(boxes, query):
    """IoU with "+1" widths (inclusive pixel coordinates)."""
    out = np.zeros((len(boxes), len(query)))
    for k, q in enumerate(query):
        qa = (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
        for n, b in enumerate(boxes):
            iw = min(b[2], q[2]) - max(b[0], q[0]) + 1
            ih = min(b[3], q[3]) - max(b[1], q[1]) + 1
            if iw > 0 and ih > 0:
                out[n, k] = iw * ih / ((b[2] - b[0] + 1) * (b[3] - b[1] + 1) + qa - iw * ih)
    return out


def test_cell_anchors_are_py_faster_rcnns_in_continuous_coordinates():
    g = PyFasterRCNNAnchorGenerator(sizes=[[128, 256, 512]], aspect_ratios=[0.5, 1.0, 2.0], strides=[16])
    ref = generate_anchors()  # (9, 4), ratio-major
    ours = list(g.cell_anchors)[0].numpy()  # size-major (Detectron2's channel order)
    ref_size_major = ref.reshape(3, 3, 4).transpose(1, 0, 2).reshape(9, 4)
    assert np.array_equal(ours, ref_size_major + np.array([0, 0, 1, 1]))
    assert (ours[0, 2] - ours[0, 0], ours[0, 3] - ours[0, 1]) == (184, 96)  # Detectron2: 181.0 x 90.5
    d2 = list(DefaultAnchorGenerator(sizes=[[128]], aspect_ratios=[0.5], strides=[16]).cell_anchors)[0]
    assert float(d2[0, 2] - d2[0, 0]) == pytest.approx(181.02, abs=0.01)
    # the grid: offset 0, the reference's shifts (x·16, y·16)
    boxes = g([torch.zeros(1, 1, 2, 3)])[0].tensor.view(2, 3, 9, 4)
    assert torch.equal(boxes[1, 2] - boxes[0, 0], torch.tensor([32.0, 16.0, 32.0, 16.0]).expand(9, 4))
    assert torch.equal(boxes[0, 0], torch.from_numpy(ours))


def test_fgfi_mask_of_the_voc_config_equals_the_references():
    rng = np.random.RandomState(0)
    H, W, stride = 30, 40, 16
    # VOC xml boxes (1-based, inclusive); the reference subtracts 1 from all four, Detectron2
    # from xmin/ymin only (continuous coordinates)
    xml = []
    for _ in range(5):
        x1, y1 = rng.randint(1, 500), rng.randint(1, 380)
        xml.append([x1, y1, min(x1 + rng.randint(20, 300), 640), min(y1 + rng.randint(20, 200), 480)])
    xml = np.array(xml, dtype=np.float64)
    gt_ref, gt_d2 = xml - 1, xml - np.array([1, 1, 0, 0])
    # the reference's mask: anchors at every location (location-major), "+1" IoU, psi 0.5
    shifts = np.array([[x * stride, y * stride] * 2 for y in range(H) for x in range(W)], dtype=np.float64)
    anchors = (shifts[:, None, :] + generate_anchors()[None]).reshape(-1, 4)
    iou = bbox_overlaps(anchors, gt_ref)
    ref_mask = (iou > 0.5 * iou.max(axis=0, keepdims=True)).any(axis=1).reshape(H, W, 9).any(axis=2)

    cfg = LazyConfig.load("configs/voc/faster_rcnn_vgg11_vgg16_fgfi.py")
    generator = cfg.model.proposal_generator.anchor_generator
    assert generator._target_ is PyFasterRCNNAnchorGenerator  # the VOC config's default
    from detectron2.config import instantiate

    g = instantiate(generator)
    distiller = cfg.model.distillers[0]
    ours = fgfi_masks_batch(g([torch.zeros(1, 1, H, W)]), [(H, W)], [torch.from_numpy(gt_d2).float()],
                            psi=distiller.psi, iou_plus_one=distiller.iou_plus_one)[0][0].numpy()
    assert ref_mask.sum() > 20 and np.array_equal(ours, ref_mask)
    # the "+1" IoU on continuous boxes counts every box one pixel too large: one cell differs here
    plus_one = fgfi_masks_batch(g([torch.zeros(1, 1, H, W)]), [(H, W)], [torch.from_numpy(gt_d2).float()],
                                psi=0.5, iou_plus_one=True)[0][0].numpy()
    assert (plus_one != ref_mask).sum() == 1
    # Detectron2's default anchors, with the "+1" IoU on its continuous boxes, are not the reference's
    d2 = DefaultAnchorGenerator(sizes=[[128, 256, 512]], aspect_ratios=[0.5, 1.0, 2.0], strides=[16], offset=0.5)
    before = fgfi_masks_batch(d2([torch.zeros(1, 1, H, W)]), [(H, W)], [torch.from_numpy(gt_d2).float()],
                              psi=0.5, iou_plus_one=True)[0][0].numpy()
    assert not np.array_equal(before, ref_mask)


def test_registered_for_yacs_configs():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "PyFasterRCNNAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[128, 256, 512]]
    from detectron2.layers import ShapeSpec

    g = build_anchor_generator(cfg, [ShapeSpec(channels=8, stride=16)])
    assert isinstance(g, PyFasterRCNNAnchorGenerator) and g.offset == 0.0
    assert list(g.cell_anchors)[0][0].tolist() == [-84.0, -40.0, 100.0, 56.0]
