"""VGG11/13/16/19 backbones for Detectron2: single-level (FGFI) and under FPN (LSHFM).

Feature names and strides (``depth`` in {11, 13, 16, 19}; ``conv<k>_<i>`` is the i-th 3x3 conv
of stage k, each conv followed by [norm] and ReLU):

    ============  =======  ========  ================================================
    feature       stride   channels  what it is
    ============  =======  ========  ================================================
    ``conv1``     1        64        last ReLU of stage 1
    ``pool1``     2        64        2x2 max-pool of ``conv1`` (input of stage 2)
    ``conv2``     2        128       ...
    ``pool2``     4        128
    ``conv3``     4        256
    ``pool3``     8        256
    ``conv4``     8        512
    ``pool4``     16       512
    ``conv5``     16       512       conv5_3 (VGG16) / conv5_2 (VGG11) after ReLU, before
                                     the last max-pool: FGFI's imitated feature
    ``pool5``     32       512       the 5th max-pool (only computed when requested)
    ============  =======  ========  ================================================

Max-pools are torchvision's (2x2, stride 2, floor), so every feature equals the output of a
prefix ``torchvision.models.vggXX().features[:n]`` once the weights are converted with
:func:`convert_torchvision_vgg`. Stages after the deepest requested feature are not built
(like Detectron2's ResNet).

Usage
-----
* FGFI Faster R-CNN (single level, stride 16)::

      add_vgg_config(cfg)
      cfg.MODEL.BACKBONE.NAME = "build_vgg_backbone"
      cfg.MODEL.VGG.DEPTH = 11            # 16 for the teacher
      cfg.MODEL.VGG.FREEZE_LAYERS = 3     # conv1_1, conv2_1, conv3_1 = "first 7 VGG11 modules"
      cfg.MODEL.RPN.IN_FEATURES = ["conv5"]; cfg.MODEL.ROI_HEADS.IN_FEATURES = ["conv5"]

* LSHFM VGG-FPN (``DoctorKey/LSHFM.detection``, ``src/model/vgg_fpn.py``): its FPN inputs are the
  *pooled* stage outputs. Faster R-CNN: ``pool2..pool5`` + LastLevelMaxPool = p2..p6;
  RetinaNet: ``pool3..pool5`` + P6/P7 computed from P5 (torchvision's ``LastLevelP6P7`` with
  256 -> 256 uses P5) = p3..p7. These are the defaults of :func:`build_vgg_fpn_backbone` and
  :func:`build_retinanet_vgg_fpn_backbone` when ``MODEL.FPN.IN_FEATURES`` is empty; both
  freeze stages 1-2 there (``FREEZE_AT=2``, the default). Any log2-contiguous list works too,
  e.g. ``["conv3", "conv4", "conv5", "pool5"]`` (p2..p5, +p6).

* LazyConfig::

      L(FPN)(bottom_up=L(VGG)(depth=11, out_features=["conv3", "conv4", "conv5"]),
             in_features=["conv3", "conv4", "conv5"], out_channels=256,
             top_block=L(LastLevelMaxPoolFrom)(in_feature="p4"))

  Note: Detectron2's own ``LastLevelMaxPool`` always reads ``"p5"``; with inputs ending at a
  stride-16 feature (``conv5``/``pool4``) the last FPN level is ``p4`` and ``FPN.forward`` fails
  with an IndexError, hence :class:`LastLevelMaxPoolFrom`. With ``pool2..pool5`` (or anything
  ending at stride 32) the stock ``LastLevelMaxPool()`` is right.

Freezing
--------
``freeze_at=k`` freezes whole stages ``conv1..conv<k>`` (Detectron2's meaning of "freeze the
first k stages"; LSHFM and faster-rcnn.pytorch's VGG16 freeze 2). ``freeze_layers=n`` freezes the
first n conv layers in network order, for recipes that cut inside a stage: FGFI freezes "the first
7 VGG11 modules" = conv1_1, conv2_1, conv3_1 = ``freeze_layers=3`` (``freeze_at=2`` would leave
conv3_1 trainable). A conv is frozen when either rule covers it; frozen BatchNorms become
``FrozenBatchNorm2d``.

ImageNet weights
----------------
:func:`convert_torchvision_vgg` maps a torchvision ``vggXX[_bn]`` state dict to these names
(classifier dropped). The CLI writes a Detectron2-loadable file::

    python -m d2kd.modeling.backbone.vgg vgg16.pth vgg16_d2.pkl     # build_vgg_backbone
    python -m d2kd.modeling.backbone.vgg vgg16.pth vgg16_fpn.pkl --prefix backbone.bottom_up.

(or ``python d2kd/modeling/backbone/vgg.py ...``; this file imports nothing else of d2kd).
``--prefix backbone.`` is for ``build_vgg_backbone`` (the model's ``backbone`` *is* the VGG);
``backbone.bottom_up.`` for the FPN builders / ``L(FPN)(bottom_up=L(VGG)(...))``. The ``.pkl``
holds ``{"model": {exact names: ndarray}, "__author__": "d2kd", "matching_heuristics": False}``
so ``DetectionCheckpointer`` loads by exact name, without its heuristic renaming.
torchvision's weights expect RGB in [0, 1] normalised by ImageNet mean/std, i.e.
``INPUT.FORMAT="RGB"``, ``PIXEL_MEAN=[123.675, 116.28, 103.53]``,
``PIXEL_STD=[58.395, 57.12, 57.375]``; faster-rcnn.pytorch's ``vgg16_caffe.pth`` has the same
layout but expects BGR with ``PIXEL_MEAN=[102.9801, 115.9465, 122.7717]``, ``PIXEL_STD=[1, 1, 1]``.

BN variants: with a norm the convs have no bias (Detectron2 convention); the conversion folds the
torchvision conv bias into the BN running mean (``mean - bias``), which is exact both for running
statistics and in training mode (a per-channel constant cancels in the batch mean).
"""

import argparse
import math
import pickle
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
import fvcore.nn.weight_init as weight_init

__all__ = [
    "VGG",
    "LastLevelMaxPoolFrom",
    "add_vgg_config",
    "build_vgg_backbone",
    "build_vgg_fpn_backbone",
    "build_retinanet_vgg_fpn_backbone",
    "convert_torchvision_vgg",
    "vgg_conv_layer_names",
]

# conv layers per stage
_STAGE_DEPTHS = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_STAGE_CHANNELS = (64, 128, 256, 512, 512)
_NUM_STAGES = 5

# LSHFM's FPN layouts (used when MODEL.FPN.IN_FEATURES is empty)
_DEFAULT_FPN_IN_FEATURES = ["pool2", "pool3", "pool4", "pool5"]
_DEFAULT_RETINANET_FPN_IN_FEATURES = ["pool3", "pool4", "pool5"]


def _feature_stage_stride(name: str):
    """'conv<k>' -> (k, 2**(k-1)); 'pool<k>' -> (k, 2**k); anything else -> ValueError."""
    for kind, offset in (("conv", 1), ("pool", 0)):
        if name.startswith(kind) and name[len(kind) :].isdigit():
            k = int(name[len(kind) :])
            if 1 <= k <= _NUM_STAGES:
                return k, 2 ** (k - offset)
    raise ValueError(
        f"Unknown VGG feature {name!r}; available: "
        + ", ".join(f"conv{k}, pool{k}" for k in range(1, _NUM_STAGES + 1))
    )


def vgg_conv_layer_names(depth: int) -> List[str]:
    """Names of the conv layers in network order, e.g. ``["conv1.conv1_1", ...]``."""
    if depth not in _STAGE_DEPTHS:
        raise ValueError(f"VGG depth must be one of {sorted(_STAGE_DEPTHS)}, got {depth!r}")
    return [
        f"conv{k}.conv{k}_{i}"
        for k, n in enumerate(_STAGE_DEPTHS[depth], start=1)
        for i in range(1, n + 1)
    ]


class VGG(Backbone):
    """
    VGG convolutional part as a Detectron2 backbone (see the module docstring for names).

    Args:
        depth: 11, 13, 16 or 19.
        norm: "" (plain VGG, convs with bias) or any :func:`detectron2.layers.get_norm` name
            ("BN", "FrozenBN", "SyncBN", "GN", ...); with a norm the convs have no bias.
        out_features: names to return, from ``conv1..conv5``, ``pool1..pool5``.
        freeze_at: freeze stages ``conv1..conv<freeze_at>`` (0 = none, 5 = all).
        freeze_layers: also freeze the first ``freeze_layers`` conv layers in network order.
        in_channels: input channels.
    """

    def __init__(
        self,
        *,
        depth: int,
        norm: str = "",
        out_features: Sequence[str] = ("conv5",),
        freeze_at: int = 0,
        freeze_layers: int = 0,
        in_channels: int = 3,
    ):
        super().__init__()
        if depth not in _STAGE_DEPTHS:
            raise ValueError(f"VGG depth must be one of {sorted(_STAGE_DEPTHS)}, got {depth!r}")
        if isinstance(out_features, str):
            out_features = [out_features]
        out_features = list(out_features)
        if not out_features:
            raise ValueError("VGG needs at least one out_feature")
        if len(set(out_features)) != len(out_features):
            raise ValueError(f"Duplicate VGG out_features: {out_features}")
        stage_stride = {f: _feature_stage_stride(f) for f in out_features}
        self.depth = depth
        self.norm = norm
        self._out_features = out_features
        self._out_feature_strides = {f: s for f, (_, s) in stage_stride.items()}
        self._out_feature_channels = {
            f: _STAGE_CHANNELS[k - 1] for f, (k, _) in stage_stride.items()
        }
        self.num_stages = max(k for k, _ in stage_stride.values())

        # Modules in forward order; names double as feature names ("conv<k>", "pool<k>").
        self._layer_names: List[str] = []
        c_in = in_channels
        for k in range(1, self.num_stages + 1):
            if k > 1:
                self._add_layer(f"pool{k - 1}", nn.MaxPool2d(kernel_size=2, stride=2))
            c_out = _STAGE_CHANNELS[k - 1]
            stage = nn.Sequential()
            for i in range(1, _STAGE_DEPTHS[depth][k - 1] + 1):
                conv = Conv2d(
                    c_in,
                    c_out,
                    kernel_size=3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, c_out),
                    activation=F.relu_,
                )
                weight_init.c2_msra_fill(conv)  # = torchvision's kaiming_normal_(fan_out), bias 0
                stage.add_module(f"conv{k}_{i}", conv)
                c_in = c_out
            self._add_layer(f"conv{k}", stage)
        last_pool = f"pool{self.num_stages}"
        if last_pool in out_features:
            self._add_layer(last_pool, nn.MaxPool2d(kernel_size=2, stride=2))

        if not (0 <= freeze_at <= _NUM_STAGES):
            raise ValueError(f"freeze_at must be in [0, {_NUM_STAGES}], got {freeze_at}")
        n_convs = sum(_STAGE_DEPTHS[depth])
        if not (0 <= freeze_layers <= n_convs):
            raise ValueError(
                f"freeze_layers must be in [0, {n_convs}] for VGG{depth}, got {freeze_layers}"
            )
        self.freeze(freeze_at, freeze_layers)

    def _add_layer(self, name: str, module: nn.Module):
        self.add_module(name, module)
        self._layer_names.append(name)

    def conv_layers(self):
        """(name, Conv2d) of the built conv layers in network order ("conv3.conv3_1", ...)."""
        for k in range(1, self.num_stages + 1):
            for i, conv in enumerate(getattr(self, f"conv{k}"), start=1):
                yield f"conv{k}.conv{k}_{i}", conv

    def freeze(self, freeze_at: int = 0, freeze_layers: int = 0):
        """
        Freeze stages ``conv1..conv<freeze_at>`` and the first ``freeze_layers`` conv layers:
        parameters get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.
        Returns self.
        """
        for idx, (name, conv) in enumerate(self.conv_layers(), start=1):
            stage = int(name.split(".")[0][len("conv") :])
            if stage <= freeze_at or idx <= freeze_layers:
                for p in conv.parameters():
                    p.requires_grad_(False)
                if conv.norm is not None:
                    conv.norm = FrozenBatchNorm2d.convert_frozen_batchnorm(conv.norm)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"VGG takes an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        outputs = {}
        for name in self._layer_names:
            x = getattr(self, name)(x)
            if name in self._out_feature_strides:
                outputs[name] = x
        return {f: outputs[f] for f in self._out_features}


    @property
    def size_divisibility(self) -> int:
        # The deepest requested stride: every map is then exactly image_size / stride.
        return max(self._out_feature_strides.values())


class LastLevelMaxPoolFrom(LastLevelMaxPool):
    """Detectron2's ``LastLevelMaxPool`` (P6 = subsample of the last level) reading ``in_feature``
    instead of the hard-coded ``"p5"`` (e.g. ``"p4"`` when the FPN inputs end at stride 16)."""

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature


# ----------------------------------------------------------------------------- yacs


def add_vgg_config(cfg):
    """Add ``cfg.MODEL.VGG`` (needed by the ``build_*vgg*`` backbones). Returns cfg."""
    cfg.MODEL.VGG = CN()
    cfg.MODEL.VGG.DEPTH = 16
    # "" (plain VGG as in torchvision/FGFI/LSHFM), or "BN", "FrozenBN", "SyncBN", "GN", ...
    cfg.MODEL.VGG.NORM = ""
    # Only for build_vgg_backbone; the FPN builders take MODEL.FPN.IN_FEATURES instead.
    cfg.MODEL.VGG.OUT_FEATURES = ["conv5"]
    # Freeze stages conv1..conv<FREEZE_AT> (2 = LSHFM, faster-rcnn.pytorch VGG16).
    cfg.MODEL.VGG.FREEZE_AT = 2
    # Also freeze the first N conv layers in network order
    # (FGFI VGG11: 3 = conv1_1, conv2_1, conv3_1).
    cfg.MODEL.VGG.FREEZE_LAYERS = 0
    return cfg


def _vgg_cfg(cfg):
    vgg = cfg.MODEL.get("VGG", None)
    if vgg is None:
        raise KeyError(
            "cfg.MODEL.VGG is missing: call d2kd.modeling.backbone.vgg.add_vgg_config(cfg) on the "
            "config before merging a config file and building a VGG backbone"
        )
    return vgg


def _vgg_from_cfg(cfg, input_shape: ShapeSpec, out_features) -> VGG:
    v = _vgg_cfg(cfg)
    return VGG(
        depth=v.DEPTH,
        norm=v.NORM,
        out_features=out_features,
        freeze_at=v.FREEZE_AT,
        freeze_layers=v.FREEZE_LAYERS,
        in_channels=input_shape.channels,
    )


def _register(fn):
    # Idempotent, so that running this file as ``python -m`` (which executes it a second time as
    # __main__ after the package import registered it) does not trip the registry's duplicate check.
    if fn.__name__ not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(fn)
    return fn


@_register
def build_vgg_backbone(cfg, input_shape: ShapeSpec):
    """Single-level VGG (FGFI): returns ``cfg.MODEL.VGG.OUT_FEATURES`` (default ``["conv5"]``)."""
    return _vgg_from_cfg(cfg, input_shape, _vgg_cfg(cfg).OUT_FEATURES)


def _last_level(bottom_up: VGG, in_features) -> str:
    return "p{}".format(int(math.log2(bottom_up.output_shape()[in_features[-1]].stride)))


@_register
def build_vgg_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    FPN over VGG for Faster R-CNN: inputs ``MODEL.FPN.IN_FEATURES`` (empty = LSHFM's
    ``["pool2", "pool3", "pool4", "pool5"]`` -> p2..p5), plus one max-pooled level on top of
    the last one (-> p6). The VGG is ``backbone.bottom_up``.
    """
    _vgg_cfg(cfg)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or list(_DEFAULT_FPN_IN_FEATURES)
    bottom_up = _vgg_from_cfg(cfg, input_shape, in_features)
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPoolFrom(_last_level(bottom_up, in_features)),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@_register
def build_retinanet_vgg_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    FPN over VGG for RetinaNet: inputs ``MODEL.FPN.IN_FEATURES`` (empty = LSHFM's
    ``["pool3", "pool4", "pool5"]`` -> p3..p5), plus P6/P7 computed from the last FPN level
    (as LSHFM/torchvision do; Detectron2's ResNet version uses C5 instead) -> p6, p7.
    """
    _vgg_cfg(cfg)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or list(_DEFAULT_RETINANET_FPN_IN_FEATURES)
    bottom_up = _vgg_from_cfg(cfg, input_shape, in_features)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(
            out_channels, out_channels, in_feature=_last_level(bottom_up, in_features)
        ),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


# ----------------------------------------------------------------------------- torchvision weights

_DEPTH_BY_NUM_CONVS = {sum(v): k for k, v in _STAGE_DEPTHS.items()}


def _torchvision_layout(depth: int, batch_norm: bool):
    """[(index of the conv in ``features``, our conv name)] for torchvision's ``make_layers``."""
    layout, idx = [], 0
    for k, n in enumerate(_STAGE_DEPTHS[depth], start=1):
        for i in range(1, n + 1):
            layout.append((idx, f"conv{k}.conv{k}_{i}"))
            idx += 3 if batch_norm else 2  # conv, [bn], relu
        idx += 1  # max-pool
    return layout


def _unwrap_state_dict(state_dict):
    sd = state_dict
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise TypeError(f"Expected a state dict, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _norm_has_num_batches_tracked(norm: str) -> bool:
    return "num_batches_tracked" in get_norm(norm, 8).state_dict()


def convert_torchvision_vgg(
    state_dict, depth: Optional[int] = None, norm: Optional[str] = None
) -> dict:
    """
    Map a torchvision VGG state dict (``features.<i>.weight`` ..., as from
    ``torchvision.models.vgg16().state_dict()`` or ``vgg16_bn()``) to :class:`VGG` names
    (``conv1.conv1_1.weight``, ``conv1.conv1_1.norm.running_mean``, ...), dropping the classifier.
    Accepts the dict itself or one wrapped in ``{"state_dict": ...}``/``{"model": ...}``, with or
    without a ``module.`` prefix. Keys are unprefixed: load into a VGG directly, or add
    ``backbone.`` / ``backbone.bottom_up.`` (see :func:`main`).

    Args:
        depth: 11/13/16/19; None = infer from the number of convs (checked when given).
        norm: the target VGG's norm. Plain weights need ``""``; ``*_bn`` weights need a BN-like
            norm ("BN", "SyncBN", "FrozenBN", ...). None = "" or "BN" from the weights.
            ``num_batches_tracked`` is kept only where the target norm has that buffer.
    """
    sd = _unwrap_state_dict(state_dict)
    feats = {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    if not feats:
        raise ValueError("No 'features.*' keys: not a torchvision VGG state dict")
    batch_norm = any(k.endswith(".running_mean") for k in feats)
    n_convs = sum(1 for k, v in feats.items() if k.endswith(".weight") and v.dim() == 4)
    inferred = _DEPTH_BY_NUM_CONVS.get(n_convs)
    if inferred is None:
        raise ValueError(
            f"{n_convs} conv layers in 'features' matches no VGG depth {sorted(_STAGE_DEPTHS)}"
        )
    if depth is None:
        depth = inferred
    elif depth != inferred:
        raise ValueError(
            f"depth={depth} but the state dict has {n_convs} convs, i.e. VGG{inferred}"
        )
    if norm is None:
        norm = "BN" if batch_norm else ""
    if batch_norm and not norm:
        raise ValueError(
            "These are *_bn weights (BatchNorm layers): convert with a BN-like norm, "
            "e.g. norm='FrozenBN'"
        )
    if not batch_norm and norm:
        raise ValueError(
            f"These are plain VGG weights (no BatchNorm): norm={norm!r} would drop the conv "
            "biases; use norm=''"
        )

    layout = _torchvision_layout(depth, batch_norm)
    expected = set()
    for i, _ in layout:
        expected |= {f"{i}.weight", f"{i}.bias"}
        if batch_norm:
            expected |= {f"{i + 1}.{s}" for s in ("weight", "bias", "running_mean", "running_var")}
    optional = {f"{i + 1}.num_batches_tracked" for i, _ in layout} if batch_norm else set()
    missing = expected - set(feats)
    unexpected = set(feats) - expected - optional
    if missing or unexpected:
        raise ValueError(
            f"Not a torchvision VGG{depth}{'_bn' if batch_norm else ''} 'features' layout: "
            f"missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}"
        )

    keep_nbt = batch_norm and _norm_has_num_batches_tracked(norm)
    out = {}
    for i, name in layout:
        w = feats[f"{i}.weight"]
        stage = int(name.split(".")[0][len("conv") :])
        if w.dim() != 4 or w.shape[0] != _STAGE_CHANNELS[stage - 1] or tuple(w.shape[2:]) != (3, 3):
            raise ValueError(
                f"features.{i}.weight has shape {tuple(w.shape)}, not a VGG {name} conv"
            )
        out[f"{name}.weight"] = w
        bias = feats[f"{i}.bias"]
        if not batch_norm:
            out[f"{name}.bias"] = bias
            continue
        bn = f"{i + 1}."
        out[f"{name}.norm.weight"] = feats[bn + "weight"]
        out[f"{name}.norm.bias"] = feats[bn + "bias"]
        # BN(conv(x) + b) with mean m == BN(conv(x)) with mean m - b (our convs have no bias).
        out[f"{name}.norm.running_mean"] = feats[bn + "running_mean"] - bias
        out[f"{name}.norm.running_var"] = feats[bn + "running_var"]
        if keep_nbt and bn + "num_batches_tracked" in feats:
            out[f"{name}.norm.num_batches_tracked"] = feats[bn + "num_batches_tracked"]
    return out


def save_detectron2_checkpoint(
    weights: Dict[str, torch.Tensor], path: str, prefix: str = "backbone."
):
    """Write ``weights`` under ``prefix`` as a DetectionCheckpointer file: ``.pkl`` (numpy arrays,
    ``__author__`` set, no name-matching heuristics) or anything else via ``torch.save``."""
    model = {prefix + k: v.detach().cpu() for k, v in weights.items()}
    if path.endswith(".pkl"):
        data = {
            "model": {k: v.numpy() for k, v in model.items()},
            "__author__": "d2kd",
            "matching_heuristics": False,
        }
        with open(path, "wb") as f:
            pickle.dump(data, f)
    else:
        torch.save({"model": model, "__author__": "d2kd"}, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert torchvision VGG weights (vgg11/13/16/19[_bn]) to a d2kd VGG backbone "
        "checkpoint loadable by DetectionCheckpointer (cfg.MODEL.WEIGHTS)."
    )
    parser.add_argument("input", help="torchvision state dict (.pth)")
    parser.add_argument("output", help=".pkl (Detectron2 format, numpy) or .pth")
    parser.add_argument("--depth", type=int, default=None, help="11/13/16/19 (default: inferred)")
    parser.add_argument(
        "--norm",
        default=None,
        help="target MODEL.VGG.NORM ('' for plain weights; BN/FrozenBN/SyncBN for *_bn)",
    )
    parser.add_argument(
        "--prefix",
        default="backbone.",
        help="'backbone.' for build_vgg_backbone (default), 'backbone.bottom_up.' for the FPN "
        "builders, "
        "'' for a bare VGG module",
    )
    args = parser.parse_args(argv)
    state_dict = torch.load(args.input, map_location="cpu", weights_only=True)
    weights = convert_torchvision_vgg(state_dict, depth=args.depth, norm=args.norm)
    save_detectron2_checkpoint(weights, args.output, prefix=args.prefix)
    print(f"wrote {len(weights)} tensors under {args.prefix!r} to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
