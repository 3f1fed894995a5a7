import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import torchvision  # noqa: E402  (a detectron2 dependency)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import get_cfg, instantiate  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model  # noqa: E402
from detectron2.modeling.backbone import FPN  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

torch.set_num_threads(1)

_VGG_FILE = (
    pathlib.Path(__file__).resolve().parents[1] / "d2kd" / "modeling" / "backbone" / "vgg.py"
)


def _load_vgg_module():
    """The d2kd module; if the package as a whole does not import (other parts of the tree are
    work in progress), this file on its own (it imports nothing else from d2kd)."""
    try:
        from d2kd.modeling.backbone import vgg

        return vgg
    except ImportError:
        if "d2kd.modeling.backbone.vgg" in sys.modules:
            return sys.modules["d2kd.modeling.backbone.vgg"]
        spec = importlib.util.spec_from_file_location("d2kd_vgg_standalone", _VGG_FILE)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


vgg_mod = _load_vgg_module()
VGG = vgg_mod.VGG

# Parameters of torchvision's vggXX().features (conv weights + biases).
TV_FEATURE_PARAMS = {11: 9_220_480, 16: 14_714_688}


def _tv_features(depth, batch_norm=False):
    """A module whose state dict is torchvision's vgg<depth>[_bn]().features part, built with
    torchvision's own make_layers (what vggXX() uses) without the 120M-parameter classifier."""
    from torchvision.models.vgg import cfgs, make_layers

    m = nn.Module()
    m.features = make_layers(
        cfgs[{11: "A", 13: "B", 16: "D", 19: "E"}[depth]], batch_norm=batch_norm
    )
    for mod in m.features:
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(mod.bias, std=0.1)  # non-zero, so a dropped/misplaced bias shows
    return m


def _randomize_bn(module, gen):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.randn(c, generator=gen) * 0.1
            m.running_mean = torch.randn(c, generator=gen) * 0.2
            m.running_var = torch.rand(c, generator=gen) + 0.5
            m.num_batches_tracked.fill_(7)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("depth", [11, 16])
def test_output_shapes_strides_channels(depth):
    names = [f"{k}{i}" for i in range(1, 6) for k in ("conv", "pool")]
    v = VGG(depth=depth, out_features=names)
    shapes = v.output_shape()
    expected = {}
    for i, c in enumerate([64, 128, 256, 512, 512], start=1):
        expected[f"conv{i}"] = (c, 2 ** (i - 1))
        expected[f"pool{i}"] = (c, 2**i)
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == expected
    assert v.size_divisibility == 32
    with torch.no_grad():
        out = v(torch.randn(1, 3, 64, 96))
    assert list(out) == names
    for name, t in out.items():
        c, s = expected[name]
        assert tuple(t.shape) == (1, c, 64 // s, 96 // s), name
    # FGFI: conv5 is the last ReLU (non-negative), stride 16, before the 5th max-pool
    assert out["conv5"].min() >= 0
    assert torch.equal(out["pool5"], torch.nn.functional.max_pool2d(out["conv5"], 2, 2))


@pytest.mark.parametrize("depth", [11, 16])
def test_parameter_count_matches_torchvision_features(depth):
    v = VGG(depth=depth)
    n = sum(p.numel() for p in v.parameters())
    assert n == TV_FEATURE_PARAMS[depth]
    assert n == sum(p.numel() for p in _tv_features(depth).features.parameters())
    n_convs = {11: 8, 16: 13}[depth]
    assert len(list(v.conv_layers())) == n_convs
    # With a norm the convs lose their bias (Detectron2 convention) and gain BN weight+bias.
    vbn = VGG(depth=depth, norm="BN")
    n_bias = sum(c.out_channels for _, c in v.conv_layers())
    assert sum(p.numel() for p in vbn.parameters()) == n - n_bias + 2 * n_bias


def test_unneeded_stages_are_not_built_and_size_divisibility():
    v = VGG(depth=16, out_features=["conv3", "conv4"])
    assert not hasattr(v, "conv5") and not hasattr(v, "pool4")
    assert v.size_divisibility == 8
    assert VGG(depth=16).size_divisibility == 16
    with pytest.raises(ValueError, match="Unknown VGG feature"):
        VGG(depth=16, out_features=["res5"])
    with pytest.raises(ValueError, match="depth"):
        VGG(depth=15)


# ----------------------------------------------------------------------------- torchvision weights


@pytest.mark.parametrize("depth", [11, 16])
def test_torchvision_conversion_plain(depth):
    torch.manual_seed(0)
    tv = _tv_features(depth).eval()
    v = VGG(depth=depth, out_features=["conv3", "pool4", "conv5"]).eval()
    v.load_state_dict(vgg_mod.convert_torchvision_vgg(tv.state_dict(), depth, ""), strict=True)
    x = torch.randn(2, 3, 64, 96)
    # prefixes of torchvision features: through the ReLU ending stage 3, the pool after
    # stage 4, the ReLU ending stage 5
    ends = {
        11: {"conv3": 10, "pool4": 16, "conv5": 20},
        16: {"conv3": 16, "pool4": 24, "conv5": 30},
    }[depth]
    assert ends["conv5"] == len(tv.features) - 1  # conv5 = everything but the last max-pool
    with torch.no_grad():
        out = v(x)
        for name, end in ends.items():
            ref = tv.features[:end](x)
            assert ref.abs().mean() > 0
            torch.testing.assert_close(out[name], ref, rtol=1e-5, atol=1e-5)


def test_torchvision_conversion_full_vgg11_drops_classifier_and_depth_is_checked():
    torch.manual_seed(1)
    tv = torchvision.models.vgg11().eval()
    sd = vgg_mod.convert_torchvision_vgg(tv.state_dict(), 11, "")
    assert not any("classifier" in k for k in sd)
    assert len(sd) == 16 and "conv5.conv5_2.weight" in sd
    v = VGG(depth=11).eval()
    v.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(v(x)["conv5"], tv.features[:-1](x), rtol=1e-5, atol=1e-5)
    # wrapped / DataParallel-prefixed dicts are accepted; depth is inferred
    wrapped = {"state_dict": {"module." + k: t for k, t in tv.state_dict().items()}}
    assert vgg_mod.convert_torchvision_vgg(wrapped).keys() == sd.keys()
    with pytest.raises(ValueError, match="VGG11"):
        vgg_mod.convert_torchvision_vgg(tv.state_dict(), 16, "")
    with pytest.raises(ValueError, match="plain VGG weights"):
        vgg_mod.convert_torchvision_vgg(tv.state_dict(), 11, "BN")


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_torchvision_conversion_bn(norm):
    torch.manual_seed(2)
    tv = _tv_features(11, batch_norm=True)
    _randomize_bn(tv, torch.Generator().manual_seed(3))
    tv.eval()
    sd = vgg_mod.convert_torchvision_vgg(tv.state_dict(), 11, norm)
    assert ("conv1.conv1_1.norm.num_batches_tracked" in sd) == (norm == "BN")
    assert not any(k.endswith("conv1_1.bias") for k in sd)  # bias folded into the running mean
    v = VGG(depth=11, norm=norm, out_features=["conv2", "conv5"]).eval()
    v.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = v(x)
        torch.testing.assert_close(out["conv5"], tv.features[:-1](x), rtol=1e-4, atol=1e-5)
        # vgg11_bn: conv, bn, relu, pool, conv, bn, relu -> conv2 ends at index 6
        torch.testing.assert_close(out["conv2"], tv.features[:7](x), rtol=1e-4, atol=1e-5)
    if norm == "BN":
        # training mode (batch statistics): the folded conv bias cancels exactly as well
        v.train()
        tv.train()
        with torch.no_grad():
            torch.testing.assert_close(v(x)["conv5"], tv.features[:-1](x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="_bn weights"):
        vgg_mod.convert_torchvision_vgg(tv.state_dict(), 11, "")


def test_cli_writes_checkpoint_loadable_with_exact_prefixes(tmp_path):
    torch.manual_seed(4)
    tv = _tv_features(11)
    src = tmp_path / "vgg11.pth"
    torch.save(tv.state_dict(), src)
    ref = vgg_mod.convert_torchvision_vgg(tv.state_dict())

    # single level: the model's backbone is the VGG -> prefix "backbone."
    out = tmp_path / "vgg11_d2.pkl"
    vgg_mod.main([str(src), str(out)])
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "d2kd" and data["matching_heuristics"] is False
    assert set(data["model"]) == {"backbone." + k for k in ref}
    cfg = vgg_mod.add_vgg_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_vgg_backbone"
    cfg.MODEL.VGG.DEPTH = 11
    model = nn.Module()
    model.backbone = build_backbone(cfg)
    DetectionCheckpointer(model).load(str(out))
    for k, t in ref.items():
        assert torch.equal(model.backbone.state_dict()[k], t), k

    # FPN: the VGG is backbone.bottom_up
    out_fpn = tmp_path / "vgg11_fpn.pth"
    vgg_mod.main([str(src), str(out_fpn), "--prefix", "backbone.bottom_up."])
    cfg.MODEL.BACKBONE.NAME = "build_vgg_fpn_backbone"
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    fpn_model = nn.Module()
    fpn_model.backbone = build_backbone(cfg)
    DetectionCheckpointer(fpn_model).load(str(out_fpn))
    for k, t in ref.items():
        assert torch.equal(fpn_model.backbone.bottom_up.state_dict()[k], t), k


# ----------------------------------------------------------------------------- freezing


def _frozen_convs(v):
    return [n for n, c in v.conv_layers() if not any(p.requires_grad for p in c.parameters())]


def test_freeze_at_and_freeze_layers():
    assert _frozen_convs(VGG(depth=11)) == []
    assert _frozen_convs(VGG(depth=11, freeze_at=2)) == ["conv1.conv1_1", "conv2.conv2_1"]
    # FGFI: "first 7 VGG11 modules" = conv1_1, conv2_1, conv3_1
    v = VGG(depth=11, freeze_layers=3)
    assert _frozen_convs(v) == ["conv1.conv1_1", "conv2.conv2_1", "conv3.conv3_1"]
    trainable = sum(p.numel() for p in v.parameters() if p.requires_grad)
    assert trainable == TV_FEATURE_PARAMS[11] - (3 * 9 * 64 + 64) - (64 * 9 * 128 + 128) - (
        128 * 9 * 256 + 256
    )
    assert _frozen_convs(VGG(depth=16, freeze_at=2)) == [
        "conv1.conv1_1",
        "conv1.conv1_2",
        "conv2.conv2_1",
        "conv2.conv2_2",
    ]
    assert len(_frozen_convs(VGG(depth=16, freeze_at=2, freeze_layers=5))) == 5
    assert len(_frozen_convs(VGG(depth=16, freeze_at=5))) == 13
    # frozen BN becomes FrozenBatchNorm2d, the rest stays trainable BN
    vbn = VGG(depth=11, norm="BN", freeze_layers=2)
    assert isinstance(vbn.conv2.conv2_1.norm, FrozenBatchNorm2d)
    assert isinstance(vbn.conv3.conv3_1.norm, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="freeze_layers"):
        VGG(depth=11, freeze_layers=9)


# ----------------------------------------------------------------------------- builders


def _strides(backbone):
    return {k: s.stride for k, s in backbone.output_shape().items()}


def test_yacs_builders_need_add_vgg_config():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_vgg_backbone"
    with pytest.raises(KeyError, match="add_vgg_config"):
        build_backbone(cfg)


def test_yacs_fpn_builders_levels_and_strides():
    for name in (
        "build_vgg_backbone",
        "build_vgg_fpn_backbone",
        "build_retinanet_vgg_fpn_backbone",
    ):
        assert name in BACKBONE_REGISTRY
    cfg = vgg_mod.add_vgg_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_vgg_backbone"
    cfg.MODEL.VGG.DEPTH = 11
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    x = torch.randn(1, 3, 64, 96)

    b = build_backbone(cfg)  # default: single level conv5
    assert _strides(b) == {"conv5": 16} and b.output_shape()["conv5"].channels == 512
    assert _frozen_convs(b) == ["conv1.conv1_1", "conv2.conv2_1"]  # FREEZE_AT default 2

    cfg.MODEL.BACKBONE.NAME = "build_vgg_fpn_backbone"  # LSHFM layout: pool2..pool5 + max-pool
    b = build_backbone(cfg)
    assert b.in_features == ("pool2", "pool3", "pool4", "pool5")
    assert _strides(b) == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert b.size_divisibility == 32
    with torch.no_grad():
        out = b(x)
    assert {k: tuple(t.shape[-2:]) for k, t in out.items()} == {
        "p2": (16, 24),
        "p3": (8, 12),
        "p4": (4, 6),
        "p5": (2, 3),
        "p6": (1, 2),
    }

    cfg.MODEL.FPN.IN_FEATURES = ["conv3", "conv4", "conv5"]  # p2..p4 + max-pool from p4
    b = build_backbone(cfg)
    assert _strides(b) == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    with torch.no_grad():
        assert tuple(b(x)["p5"].shape) == (1, 16, 2, 3)

    cfg.MODEL.FPN.IN_FEATURES = []
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_vgg_fpn_backbone"  # LSHFM: pool3..5 + P6P7 from P5
    b = build_backbone(cfg)
    assert b.in_features == ("pool3", "pool4", "pool5")
    assert _strides(b) == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert b.top_block.in_feature == "p5" and b.top_block.p6.in_channels == 16
    with torch.no_grad():
        out = b(x)
    assert tuple(out["p7"].shape) == (1, 16, 1, 1) and tuple(out["p3"].shape) == (1, 16, 8, 12)


def test_lazyconfig_fpn():
    cfg = L(FPN)(
        bottom_up=L(VGG)(depth=11, out_features=["conv3", "conv4", "conv5"]),
        in_features=["conv3", "conv4", "conv5"],
        out_channels=16,
        top_block=L(vgg_mod.LastLevelMaxPoolFrom)(in_feature="p4"),
    )
    b = instantiate(cfg)
    assert isinstance(b.bottom_up, VGG)
    assert _strides(b) == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    with torch.no_grad():
        out = b(torch.randn(1, 3, 64, 96))
    assert tuple(out["p2"].shape) == (1, 16, 16, 24) and tuple(out["p5"].shape) == (1, 16, 2, 3)

    # ending at stride 32, the stock LastLevelMaxPool (reads "p5") is right
    cfg.bottom_up.out_features = cfg.in_features = ["pool2", "pool3", "pool4", "pool5"]
    cfg.top_block = L(LastLevelMaxPool)()
    b = instantiate(cfg)
    with torch.no_grad():
        out = b(torch.randn(1, 3, 64, 96))
    assert {k: t.shape[-1] for k, t in out.items()} == {
        "p2": 24,
        "p3": 12,
        "p4": 6,
        "p5": 3,
        "p6": 2,
    }


# ----------------------------------------------------------------------------- detectors


def _tiny_rcnn_cfg(backbone_name, in_features_rpn, in_features_roi, anchor_sizes):
    cfg = vgg_mod.add_vgg_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.VGG.DEPTH = 11
    cfg.MODEL.VGG.FREEZE_AT = 0
    cfg.MODEL.VGG.FREEZE_LAYERS = 3
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = anchor_sizes
    cfg.MODEL.RPN.IN_FEATURES = in_features_rpn
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = in_features_roi
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    return cfg


def _batch():
    g = torch.Generator().manual_seed(5)
    inst = Instances((64, 96))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 50.0, 48.0]]))
    inst.gt_classes = torch.tensor([1])
    return [
        {
            "image": torch.rand(3, 64, 96, generator=g) * 255,
            "instances": inst,
            "height": 64,
            "width": 96,
        }
    ]


def test_tiny_faster_rcnn_single_level_trains_one_step():
    torch.manual_seed(6)
    cfg = _tiny_rcnn_cfg("build_vgg_backbone", ["conv5"], ["conv5"], [[16, 32, 64]])
    model = build_model(cfg)
    model.train()
    assert _strides(model.backbone) == {"conv5": 16}
    assert model.roi_heads.box_pooler.level_poolers[0].spatial_scale == pytest.approx(1 / 16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    frozen_before = model.backbone.conv3.conv3_1.weight.detach().clone()
    trained_before = model.backbone.conv5.conv5_2.weight.detach().clone()

    with EventStorage(0):
        losses = model(_batch())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    opt.zero_grad()
    total.backward()
    assert model.backbone.conv5.conv5_2.weight.grad.abs().sum() > 0
    assert model.backbone.conv3.conv3_1.weight.grad is None
    opt.step()
    assert torch.equal(model.backbone.conv3.conv3_1.weight, frozen_before)
    assert not torch.equal(model.backbone.conv5.conv5_2.weight, trained_before)


def test_tiny_faster_rcnn_fpn_forward_loss_finite():
    torch.manual_seed(7)
    cfg = _tiny_rcnn_cfg(
        "build_vgg_fpn_backbone",
        ["p2", "p3", "p4", "p5", "p6"],
        ["p2", "p3", "p4", "p5"],
        [[8], [16], [32], [64], [128]],
    )
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(_batch())
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    assert model.backbone.bottom_up.conv5.conv5_2.weight.grad.abs().sum() > 0


def test_tiny_retinanet_fpn_forward_loss_finite():
    torch.manual_seed(8)
    cfg = vgg_mod.add_vgg_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_vgg_fpn_backbone"
    cfg.MODEL.VGG.DEPTH = 11
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    model = build_model(cfg)
    model.train()
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    with EventStorage(0):
        losses = model(_batch())
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
