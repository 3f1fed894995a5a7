"""MobileNetV2 backbone of SSDLite, in the layout of qfgaohao/pytorch-ssd ``mobilenetv2_ssd_lite``.

``features`` mirrors pytorch-ssd's ``MobileNetV2.features`` (= ``base_net`` of its SSD) index for
index: ``features.0`` stem conv-BN-ReLU6 (3x3/s2, 32 ch), ``features.1..17`` InvertedResidual
blocks (t,c,n,s = 1,16,1,1 | 6,24,2,2 | 6,32,3,2 | 6,64,4,2 | 6,96,3,1 | 6,160,3,2 | 6,320,1,1),
``features.18`` 1x1 conv-BN-ReLU6 to 1280 ch. Each block's ``conv`` is the same nn.Sequential
(pw 1x1 + BN + ReLU6, dw 3x3 + BN + ReLU6, pw-linear 1x1 + BN; no expansion conv when t = 1),
so pytorch-ssd checkpoints map by renaming the prefix only (``convert_pytorch_ssd_mobilenetv2``).

Features (names usable in ``out_features``; strides nominal at 300 px):

========== ======= ====== ===== ==================================================================
name       ch      stride 300px what
========== ======= ====== ===== ==================================================================
expand7    192     8      38    expansion (pw+BN+ReLU6) output of features[7] -- the student hint
                                layer of Chen et al. in the SSD-KD repo (docs/methods.md §1.2)
expand14   576     16     19    expansion output of features[14] (SSD source 0, GraphPath(14,'conv',3))
last       1280    32     10    output of features[18] (SSD source 1)
extra0..3  512,256 64,100 5,3,  extras: InvertedResidual stride 2 with expand ratios 0.2, 0.25,
           256,64  150,300 2,1  0.5, 0.25 (SSD sources 2..5)
========== ======= ====== ===== ==================================================================

Default ``out_features`` = the six SSD sources ``expand14, last, extra0..extra3`` (19,10,5,3,2,1
at 300 px: 3000 priors with 6 per location).
"""
import logging
import math
import re
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = [
    "InvertedResidual",
    "MobileNetV2SSDLite",
    "build_mobilenetv2_ssdlite_backbone",
    "convert_pytorch_ssd_mobilenetv2",
]

logger = logging.getLogger(__name__)

# t (expansion), c (out channels), n (repeats), s (first stride)
_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
# (out_channels, expand_ratio) of the SSDLite extras, all stride 2 (pytorch-ssd)
_EXTRAS = [(512, 0.2), (256, 0.25), (256, 0.5), (64, 0.25)]
SOURCES = ["expand14", "last", "extra0", "extra1", "extra2", "extra3"]
_STRIDES = {"expand7": 8, "expand14": 16, "last": 32,
            "extra0": 64, "extra1": 100, "extra2": 150, "extra3": 300}


def _conv_bn(inp, oup, k, stride, norm, groups=1, act=True):
    layers = [nn.Conv2d(inp, oup, k, stride, (k - 1) // 2, groups=groups, bias=False),
              get_norm(norm, oup)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``self.conv`` has pytorch-ssd's (and tonylins') indices:
    expand_ratio == 1: [dw, BN, ReLU6, pw, BN]; else [pw, BN, ReLU6, dw, BN, ReLU6, pw, BN]."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float, norm: str = "BN"):
        super().__init__()
        assert stride in (1, 2)
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.expanded = expand_ratio != 1
        layers = []
        if self.expanded:
            layers += _conv_bn(inp, hidden, 1, 1, norm)
        layers += _conv_bn(hidden, hidden, 3, stride, norm, groups=hidden)
        layers += _conv_bn(hidden, oup, 1, 1, norm, act=False)
        self.conv = nn.Sequential(*layers)
        self.hidden_channels = hidden

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def forward_with_expansion(self, x):
        """(expansion output after ReLU6, block output); only for expanded blocks."""
        assert self.expanded
        e = self.conv[2](self.conv[1](self.conv[0](x)))
        y = e
        for layer in self.conv[3:]:
            y = layer(y)
        return e, (x + y if self.use_res_connect else y)


class MobileNetV2SSDLite(Backbone):
    """MobileNetV2 + SSDLite extras; see the module docstring.

    Args:
        width_mult: MobileNetV2 width multiplier (pytorch-ssd rules: channels ``int(c*w)``, the
            last conv keeps 1280 unless w > 1). The extras are not scaled (as in pytorch-ssd).
        norm: normalisation of every conv ("BN", "SyncBN", "FrozenBN", ...; detectron2 get_norm).
        out_features: names to return (default: the six SSD sources, in order).
    """

    #: The layer a feature hint guides in this backbone (Chen et al. 2017's guided layer,
    #: docs/methods.md §1.2); a distiller's default where it pairs differently named levels.
    hint_feature = "expand7"

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        norm: str = "BN",
        in_channels: int = 3,
        out_features: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        inp = int(32 * width_mult)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        features = [nn.Sequential(*_conv_bn(in_channels, inp, 3, 2, norm))]
        for t, c, n, s in _SETTING:
            oup = int(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t, norm))
                inp = oup
        features.append(nn.Sequential(*_conv_bn(inp, last, 1, 1, norm)))
        self.features = nn.Sequential(*features)
        c = last
        extras = []
        for oup, t in _EXTRAS:
            extras.append(InvertedResidual(c, oup, 2, t, norm))
            c = oup
        self.extras = nn.ModuleList(extras)

        channels = {
            "expand7": self.features[7].hidden_channels,
            "expand14": self.features[14].hidden_channels,
            "last": last,
        }
        for i, (oup, _) in enumerate(_EXTRAS):
            channels[f"extra{i}"] = oup
        self.source_names = list(SOURCES)
        if out_features is None:
            out_features = self.source_names
        unknown = [f for f in out_features if f not in channels]
        if unknown:
            raise ValueError(f"MobileNetV2SSDLite: unknown out_features {unknown}; available: "
                             f"{sorted(channels)}")
        self._out_features = list(out_features)
        self._out_feature_channels = {f: channels[f] for f in self._out_features}
        self._out_feature_strides = {f: _STRIDES[f] for f in self._out_features}
        order = ["expand7", "expand14", "last", "extra0", "extra1", "extra2", "extra3"]
        self._last_needed = max(order.index(f) for f in self._out_features)
        self._init_weights()

    def _init_weights(self):
        # pytorch-ssd / SSD-KD MobileNetV2 init: conv N(0, sqrt(2/n)), n = k*k*out; BN 1, 0;
        # extras xavier (pytorch-ssd's SSD.init_from_base_net)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
        for m in self.extras.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        wanted = set(self._out_features)
        out = {}
        for i in range(7):
            x = self.features[i](x)
        e, x = self.features[7].forward_with_expansion(x)
        if "expand7" in wanted:
            out["expand7"] = e
        if self._last_needed == 0:
            return out
        for i in range(8, 14):
            x = self.features[i](x)
        e, x = self.features[14].forward_with_expansion(x)
        if "expand14" in wanted:
            out["expand14"] = e
        if self._last_needed == 1:
            return out
        for i in range(15, len(self.features)):
            x = self.features[i](x)
        if "last" in wanted:
            out["last"] = x
        for i, block in enumerate(self.extras):
            if self._last_needed < 3 + i:
                break
            x = block(x)
            if f"extra{i}" in wanted:
                out[f"extra{i}"] = x
        return out


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_ssdlite_backbone(cfg, input_shape: ShapeSpec):
    """yacs builder; keys MODEL.MOBILENETV2_SSDLITE.{WIDTH_MULT, NORM, OUT_FEATURES}
    (added by ``d2kd.modeling.meta_arch.ssd.add_ssd_config``)."""
    c = cfg.MODEL.MOBILENETV2_SSDLITE
    return MobileNetV2SSDLite(
        width_mult=c.WIDTH_MULT,
        norm=c.NORM,
        in_channels=input_shape.channels,
        out_features=list(c.OUT_FEATURES) or None,
    )


_SEP = {"0": "depthwise", "1": "norm", "3": "pointwise"}


def convert_pytorch_ssd_mobilenetv2(
    state_dict: Dict[str, torch.Tensor],
    *,
    prefix: str = "backbone.",
    head_prefix: str = "head.",
    include_heads: bool = True,
) -> Dict[str, torch.Tensor]:
    """Rename a qfgaohao/pytorch-ssd ``mb2-ssd-lite`` (or SSD-KD ``mobilenet_v2_ssd_lite``) state
    dict to d2kd's ``SSD(backbone=MobileNetV2SSDLite, head=SSDHead(head_type="ssdlite"))`` names.

    The source layout is written from knowledge of those repositories (the real files cannot be
    downloaded here):

    - ``base_net.{i}.…`` -> ``{prefix}features.{i}.…`` (same module tree; also accepts an
      ImageNet ``MobileNetV2`` checkpoint with ``features.{i}.…`` keys; ``classifier.*`` dropped)
    - ``extras.{i}.conv.{j}.…`` -> ``{prefix}extras.{i}.conv.{j}.…``
    - ``classification_headers.{i}.{0,1,3}.…`` (SeperableConv2d = Sequential(dw conv with bias,
      BN, ReLU6, 1x1 conv)) -> ``{head_prefix}cls_score.{i}.{depthwise,norm,pointwise}.…``;
      the last header is a plain 1x1 conv: ``classification_headers.5.{weight,bias}`` ->
      ``{head_prefix}cls_score.5.{weight,bias}``. ``regression_headers`` -> ``bbox_pred`` alike.
      Class channels keep pytorch-ssd's order (index 0 = background), which is d2kd SSD's too.
    - A leading ``module.`` is stripped; ``adaptation.*`` (SSD-KD, never used), ``classifier.*``
      and anything unknown are dropped (logged).
    """
    out, dropped = {}, []
    for key, value in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        m = re.fullmatch(r"(?:base_net|features)\.(\d+)\.(.+)", k)
        if m:
            out[f"{prefix}features.{m.group(1)}.{m.group(2)}"] = value
            continue
        if k.startswith("extras."):
            out[prefix + k] = value
            continue
        m = re.fullmatch(r"(classification|regression)_headers\.(\d+)\.(?:(\d+)\.)?(.+)", k)
        if m:
            if not include_heads:
                dropped.append(key)
                continue
            name = "cls_score" if m.group(1) == "classification" else "bbox_pred"
            sub = "" if m.group(3) is None else _SEP[m.group(3)] + "."
            out[f"{head_prefix}{name}.{m.group(2)}.{sub}{m.group(4)}"] = value
            continue
        dropped.append(key)
    if dropped:
        logger.info("convert_pytorch_ssd_mobilenetv2: dropped %d keys: %s", len(dropped), dropped)
    return out
