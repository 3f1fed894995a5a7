"""py-faster-rcnn's anchors as a Detectron2 anchor generator (the FGFI reference's detector,
docs/methods.md §2.4).

py-faster-rcnn's ``generate_anchors(base_size=16, ratios, scales)`` rounds the widths and
heights of its base window before scaling: ratio 0.5 on a 16×16 window gives ``round(√512) =
23`` × ``round(23·0.5) = 12``, ×8 → **184 × 96**, where Detectron2's ``DefaultAnchorGenerator``
gives 181.0 × 90.5 for the same size 128 and ratio. Its boxes are in "+1" inclusive pixel
coordinates (window ``(0, 0, 15, 15)``, centre 7.5); this generator gives the same boxes in
Detectron2's continuous coordinates (``x2 + 1``, ``y2 + 1``: window ``(0, 0, 16, 16)``, centre
8), which is also how Detectron2 loads VOC's GT boxes, so Detectron2's IoU on them equals the
reference's "+1" IoU on its own coordinates.
"""
import math
from typing import List

import torch

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, _broadcast_params
from detectron2.modeling.anchor_generator import BufferList

__all__ = ["PyFasterRCNNAnchorGenerator", "py_faster_rcnn_cell_anchors"]


def py_faster_rcnn_cell_anchors(base_size: int, sizes, aspect_ratios) -> torch.Tensor:
    """(len(sizes)·len(aspect_ratios), 4) anchors of one location at the origin, in continuous
    coordinates, sizes outer and aspect ratios (h / w) inner (Detectron2's channel order).
    ``size / base_size`` is py-faster-rcnn's scale; widths and heights are its rounded ones."""
    area = float(base_size * base_size)
    ctr = 0.5 * base_size  # py-faster-rcnn: 0.5 · (base_size − 1) in "+1" coordinates
    anchors = []
    for size in sizes:
        scale = size / base_size
        for ratio in aspect_ratios:
            # _ratio_enum: numpy's round, half to even, on the base window; then _scale_enum
            w0 = float(round(math.sqrt(area / ratio)))
            h0 = float(round(w0 * ratio))
            w, h = w0 * scale, h0 * scale
            anchors.append([ctr - 0.5 * w, ctr - 0.5 * h, ctr + 0.5 * w, ctr + 0.5 * h])
    return torch.tensor(anchors)


@ANCHOR_GENERATOR_REGISTRY.register()
class PyFasterRCNNAnchorGenerator(DefaultAnchorGenerator):
    """``DefaultAnchorGenerator`` with py-faster-rcnn's cell anchors (base window = the level's
    stride, rounded widths/heights) and its grid (offset 0: the base window's corner at each
    ``(j·stride, i·stride)``)."""

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides, offset: float = 0.0):
        self._strides_for_cells = list(strides)  # read by _calculate_anchors, before super() sets strides
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios, strides=strides, offset=offset)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {**super().from_config(cfg, input_shape), "offset": 0.0}

    def _calculate_anchors(self, sizes, aspect_ratios):
        sizes = _broadcast_params(sizes, len(self._strides_for_cells), "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, len(self._strides_for_cells), "aspect_ratios")
        return BufferList([
            py_faster_rcnn_cell_anchors(stride, s, a).float()
            for stride, s, a in zip(self._strides_for_cells, sizes, aspect_ratios)
        ])
