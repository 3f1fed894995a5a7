"""VGG16 backbone of SSD300 (Liu et al. 2016), in the layout of amdegroot/ssd.pytorch.

Two layouts of the extra layers (``layout=``):

``"classic"`` (ssd.pytorch ``ssd300``, 8732 priors)
    sources ``conv4_3_norm`` (L2Norm(conv4_3), 38x38 at 300 px), ``fc7`` (19), ``conv6_2`` (10),
    ``conv7_2`` (5), ``conv8_2`` (3, valid 3x3), ``conv9_2`` (1, valid 3x3).
    Extras: 1024 -1x1-> 256 -3x3/s2-> 512 -1x1-> 128 -3x3/s2-> 256 -1x1-> 128 -3x3-> 256
    -1x1-> 128 -3x3-> 256. Needs an input of at least 268 px (the valid 3x3 convs).

``"aligned"`` (SsisyphusTao/SSD-Knowledge-Distillation ``nets/vgg.py``, 3000 priors)
    The teacher re-headed to the MobileNetV2-SSDLite prior layout: no conv4_3 source (the repo
    comments L2Norm out), sources ``fc7`` (19), ``conv6_2`` (10), ``conv7_2`` (5), ``conv8_2`` (3),
    ``conv9_2`` (2), ``conv10_2`` (1); every extra 3x3 conv is stride 2, padding 1
    (extras cfg ``[256,'S',512,128,'S',256,128,'S',256,128,'S',256,128,'S',256]``).
    Works at any input size (e.g. 128 px in tests).

Module names follow the original Caffe SSD (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``,
``conv4_3_norm``, ``conv6_1`` ...). ``convert_ssd_pytorch_vgg`` maps ssd.pytorch checkpoints
(``vgg.{i}``, ``L2Norm``, ``extras.{i}``, ``loc.{i}``, ``conf.{i}``) to these names.

Besides the SSD sources the backbone can also return ``conv4_3`` (ReLU output, *before*
L2Norm, 512 ch, stride 8): the teacher hint layer of Chen et al. (docs/methods.md §1.2). Ask for it
through ``out_features``.

``width_mult`` scales every channel count (1.0 = VGG16). It is a knob for CPU tests and toy
runs; pretrained checkpoints need 1.0.

``norm`` ("" = the original, or e.g. "BN"/"GN" through Detectron2's ``get_norm``) puts a norm
layer after every convolution (bias dropped), like torchvision's ``vgg16_bn``: a VGG trained from
scratch without one barely learns in short schedules (the shapes SSD teacher's loss stayed flat
for 1000 iterations). ssd.pytorch checkpoints have no norm layers: convert them into ``norm=""``.
"""
import logging
import math
import re
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = [
    "L2Norm",
    "VGG16SSD",
    "build_vgg16_ssd_backbone",
    "convert_ssd_pytorch_vgg",
    "VGG_SSD_LAYOUTS",
]

logger = logging.getLogger(__name__)

# (name, out_channels) of the VGG16 convs; "pool" entries are max-pools
_VGG16 = [
    ("conv1_1", 64), ("conv1_2", 64), "pool1",
    ("conv2_1", 128), ("conv2_2", 128), "pool2",
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), "pool3",  # pool3: ceil_mode
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), "pool4",
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
]
# extras: (name, out_channels, kernel, stride, padding)
_EXTRAS = {
    "classic": [
        ("conv6_1", 256, 1, 1, 0), ("conv6_2", 512, 3, 2, 1),
        ("conv7_1", 128, 1, 1, 0), ("conv7_2", 256, 3, 2, 1),
        ("conv8_1", 128, 1, 1, 0), ("conv8_2", 256, 3, 1, 0),
        ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 1, 0),
    ],
    "aligned": [
        ("conv6_1", 256, 1, 1, 0), ("conv6_2", 512, 3, 2, 1),
        ("conv7_1", 128, 1, 1, 0), ("conv7_2", 256, 3, 2, 1),
        ("conv8_1", 128, 1, 1, 0), ("conv8_2", 256, 3, 2, 1),
        ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 2, 1),
        ("conv10_1", 128, 1, 1, 0), ("conv10_2", 256, 3, 2, 1),
    ],
}
# the SSD sources of each layout and their nominal strides (= the SSD prior "steps" at 300 px;
# the valid 3x3 convs make the true stride input-size dependent)
VGG_SSD_LAYOUTS = {
    "classic": {
        "sources": ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"],
        "strides": [8, 16, 32, 64, 100, 300],
    },
    "aligned": {
        "sources": ["fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2", "conv10_2"],
        "strides": [16, 32, 64, 100, 150, 300],
    },
}


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet; SSD conv4_3).

    ``y = weight[c] * x / (||x||_2 over channels + eps)``, weight initialised to ``scale``;
    same maths and parameter name (``weight``) as ssd.pytorch's ``L2Norm``.
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.scale = scale
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def reset_parameters(self):
        nn.init.constant_(self.weight, self.scale)

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * (x / norm)


def _ch(c: int, width_mult: float) -> int:
    return max(1, int(round(c * width_mult)))


class VGG16SSD(Backbone):
    """VGG16 (ssd.pytorch's reduced-fc variant) + SSD extra layers; see the module docstring.

    forward(x) returns a dict with the features named in ``out_features`` (default: the SSD
    sources of the layout, in order; ``self.source_names``).
    """

    #: The layer a feature hint imitates in this backbone (Chen et al. 2017's hint layer,
    #: docs/methods.md §1.2); a distiller's default where it pairs differently named levels.
    hint_feature = "conv4_3"

    def __init__(
        self,
        *,
        layout: str = "classic",
        width_mult: float = 1.0,
        l2norm_scale: float = 20.0,
        in_channels: int = 3,
        out_features: Optional[Sequence[str]] = None,
        norm: str = "",
    ):
        super().__init__()

        def conv(c_in, c_out, **kwargs):
            return Conv2d(c_in, c_out, bias=not norm, norm=get_norm(norm, c_out), **kwargs)

        if layout not in _EXTRAS:
            raise ValueError(f"VGG16SSD layout must be one of {sorted(_EXTRAS)}, got {layout!r}")
        self.layout = layout
        self.width_mult = width_mult
        self._ops: List = []  # (kind, name) in execution order
        c = in_channels
        channels: Dict[str, int] = {}
        strides: Dict[str, int] = {}
        stride = 1
        for item in _VGG16:
            if isinstance(item, str):
                self._ops.append(("pool", item))
                stride *= 2
                continue
            name, out = item
            out = _ch(out, width_mult)
            self.add_module(name, conv(c, out, kernel_size=3, padding=1))
            self._ops.append(("conv", name))
            c = channels[name] = out
            strides[name] = stride
        # pool5 (3x3/s1/p1), fc6 (3x3 dilation 6), fc7 (1x1)
        fc = _ch(1024, width_mult)
        self.fc6 = conv(c, fc, kernel_size=3, padding=6, dilation=6)
        self.fc7 = conv(fc, fc, kernel_size=1)
        channels["fc6"] = channels["fc7"] = fc
        strides["fc6"] = strides["fc7"] = 16
        if layout == "classic":
            self.conv4_3_norm = L2Norm(channels["conv4_3"], l2norm_scale)
            channels["conv4_3_norm"] = channels["conv4_3"]
            strides["conv4_3_norm"] = strides["conv4_3"]
        c = fc
        self._extras = []
        for name, out, k, s, p in _EXTRAS[layout]:
            out = _ch(out, width_mult)
            self.add_module(name, conv(c, out, kernel_size=k, stride=s, padding=p))
            self._extras.append(name)
            c = channels[name] = out
        src = VGG_SSD_LAYOUTS[layout]
        for name, s in zip(src["sources"], src["strides"]):
            strides[name] = s
        self.source_names = list(src["sources"])
        if out_features is None:
            out_features = self.source_names
        unknown = [f for f in out_features if f not in channels]
        if unknown:
            raise ValueError(f"VGG16SSD({layout}): unknown out_features {unknown}; available: "
                             f"{sorted(channels)}")
        self._out_features = list(out_features)
        self._out_feature_channels = {f: channels[f] for f in self._out_features}
        self._out_feature_strides = {f: strides[f] for f in self._out_features}
        self._last_needed = self._compute_last_needed()
        self._init_weights()

    def _compute_last_needed(self) -> int:
        order = [n for k, n in self._ops if k == "conv"] + ["fc6", "fc7"] + self._extras
        idx = {n: i for i, n in enumerate(order)}
        idx["conv4_3_norm"] = idx["conv4_3"]
        return max(idx[f] for f in self._out_features)

    def _init_weights(self):
        # base: N(0, sqrt(2/n)), n = k*k*out (the SSD-KD repo's init); extras: xavier (ssd.pytorch)
        for name, m in self.named_children():
            if isinstance(m, nn.Conv2d):
                if name in self._extras:
                    nn.init.xavier_uniform_(m.weight)
                else:
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        outputs = {}
        wanted = set(self._out_features)
        step = 0  # index in the conv order, to stop early when everything asked for is computed

        def keep(name, t):
            if name in wanted:
                outputs[name] = t

        for kind, name in self._ops:
            if kind == "pool":
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=(name == "pool3"))
                continue
            x = F.relu(getattr(self, name)(x), inplace=True)
            keep(name, x)
            if name == "conv4_3" and "conv4_3_norm" in wanted:
                outputs["conv4_3_norm"] = self.conv4_3_norm(x)
            step += 1
            if step > self._last_needed:
                return outputs
        x = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)  # pool5
        x = F.relu(self.fc6(x), inplace=True)
        keep("fc6", x)
        x = F.relu(self.fc7(x), inplace=True)
        keep("fc7", x)
        step += 2
        for name in self._extras:
            if step > self._last_needed:
                break
            x = F.relu(getattr(self, name)(x), inplace=True)
            keep(name, x)
            step += 1
        return outputs


@BACKBONE_REGISTRY.register()
def build_vgg16_ssd_backbone(cfg, input_shape: ShapeSpec):
    """yacs builder; keys MODEL.VGG_SSD.{LAYOUT, WIDTH_MULT, L2NORM_SCALE, OUT_FEATURES, NORM}
    (added by ``d2kd.modeling.meta_arch.ssd.add_ssd_config``)."""
    c = cfg.MODEL.VGG_SSD
    return VGG16SSD(
        layout=c.LAYOUT,
        width_mult=c.WIDTH_MULT,
        l2norm_scale=c.L2NORM_SCALE,
        in_channels=input_shape.channels,
        out_features=list(c.OUT_FEATURES) or None,
        norm=c.NORM,
    )


# ---------------------------------------------------------------------------------------------
# ssd.pytorch checkpoint conversion
# ---------------------------------------------------------------------------------------------
# ssd.pytorch builds ``vgg`` as one nn.ModuleList of [conv, ReLU, ..., pool, ...]; the index of
# each conv in that list (written from ssd.pytorch's ``vgg()`` with cfg
# [64,64,'M',128,128,'M',256,256,256,'C',512,512,512,'M',512,512,512] + pool5, conv6, ReLU,
# conv7, ReLU) -- 35 modules, convs at:
SSD_PYTORCH_VGG_INDEX = {
    0: "conv1_1", 2: "conv1_2",
    5: "conv2_1", 7: "conv2_2",
    10: "conv3_1", 12: "conv3_2", 14: "conv3_3",
    17: "conv4_1", 19: "conv4_2", 21: "conv4_3",
    24: "conv5_1", 26: "conv5_2", 28: "conv5_3",
    31: "fc6", 33: "fc7",
}


def convert_ssd_pytorch_vgg(
    state_dict: Dict[str, torch.Tensor],
    *,
    layout: str = "classic",
    prefix: str = "backbone.",
    head_prefix: str = "head.",
    include_heads: bool = True,
) -> Dict[str, torch.Tensor]:
    """Rename an amdegroot/ssd.pytorch (or SSD-Knowledge-Distillation ``nets/vgg.py``) state dict
    to d2kd's ``SSD(backbone=VGG16SSD)`` names.

    The source layout is written from knowledge of those repositories (the real files cannot be
    downloaded here): ``vgg.{i}.{weight,bias}`` (i = index in the layer list, see
    ``SSD_PYTORCH_VGG_INDEX``), ``L2Norm.weight``, ``extras.{i}`` (8 convs classic, 10 aligned),
    ``loc.{i}`` / ``conf.{i}`` (3x3 heads, one per source). A leading ``module.`` (DataParallel)
    is stripped. The ImageNet base ``vgg16_reducedfc.pth`` (keys ``{i}.weight`` without ``vgg.``)
    is accepted too.

    Mapping: ``vgg.{i}`` -> ``{prefix}{conv name}``, ``L2Norm.weight`` ->
    ``{prefix}conv4_3_norm.weight``, ``extras.{i}`` -> ``{prefix}{conv6_1, conv6_2, ...}``,
    ``loc.{i}`` -> ``{head_prefix}bbox_pred.{i}``, ``conf.{i}`` -> ``{head_prefix}cls_score.{i}``.
    Class channels keep ssd.pytorch's order (index 0 = background), which is d2kd SSD's order too.

    Dropped (logged): ``L2Norm`` for the aligned layout (it has no conv4_3 source), heads when
    ``include_heads=False`` (e.g. initialising the aligned teacher from the 8732-prior
    checkpoint, as the SSD-KD repo does), the KD repo's unused ``adaptation`` conv, and, for the
    aligned layout, nothing else: ssd.pytorch's 8 extras load into conv6_1..conv9_2 (same shapes,
    only the strides/paddings of conv8_2/conv9_2 differ), conv10_* stay as initialised.
    """
    if layout not in _EXTRAS:
        raise ValueError(f"layout must be one of {sorted(_EXTRAS)}, got {layout!r}")
    extras = [e[0] for e in _EXTRAS[layout]]
    out, dropped = {}, []
    for key, value in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        m = re.fullmatch(r"(?:vgg\.)?(\d+)\.(weight|bias)", k)
        if m:
            i = int(m.group(1))
            if i not in SSD_PYTORCH_VGG_INDEX:
                raise KeyError(f"{key}: index {i} is not a conv in ssd.pytorch's vgg list")
            out[f"{prefix}{SSD_PYTORCH_VGG_INDEX[i]}.{m.group(2)}"] = value
            continue
        if k == "L2Norm.weight":
            if layout == "classic":
                out[f"{prefix}conv4_3_norm.weight"] = value
            else:
                dropped.append(key)
            continue
        m = re.fullmatch(r"extras\.(\d+)\.(weight|bias)", k)
        if m:
            i = int(m.group(1))
            if i >= len(extras):
                dropped.append(key)
            else:
                out[f"{prefix}{extras[i]}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"(loc|conf)\.(\d+)\.(weight|bias)", k)
        if m:
            if include_heads:
                name = "bbox_pred" if m.group(1) == "loc" else "cls_score"
                out[f"{head_prefix}{name}.{m.group(2)}.{m.group(3)}"] = value
            else:
                dropped.append(key)
            continue
        dropped.append(key)
    if dropped:
        logger.info("convert_ssd_pytorch_vgg: dropped %d keys: %s", len(dropped), dropped)
    return out
