"""SSD (Liu et al. 2016) as a Detectron2 meta-architecture, following amdegroot/ssd.pytorch and
qfgaohao/pytorch-ssd (the two code bases of the SSD-KD reference repo, docs/methods.md §1.2).

Conventions (read this before touching the tensors)
----------------------------------------------------
* **Class index 0 is background** in every SSD tensor: logits ``(N, P, K+1)``, matched labels
  ``(N, P)`` with 0 = background and ``c+1`` = Detectron2 contiguous class ``c``. This is the
  SSD / reference-repo convention (so ``w_bg`` of Chen et al. applies to column 0). The
  conversion to Detectron2's convention happens only at the boundary: ``match`` adds 1 to
  ``gt_classes``, inference reports ``pred_classes = column - 1`` (0..K-1), as RetinaNet does.
  Detectron2's Fast R-CNN puts background LAST; SSD tensors never do.
* Priors are ``(P, 4)`` in the classic normalised ``(cx, cy, w, h)`` form (fractions of the input
  tensor's width/height), clipped to [0, 1] in that form (as both reference repos do), ordered
  level by level, then row ``i``, column ``j``, then the priors of a location
  (``[min, sqrt(min*max), (ar, 1/ar) for ar in aspect_ratios]``) — exactly the order of the
  flattened head outputs ``(N, H, W, A, C) -> (N, HWA, C)``.
* Box deltas/targets are ``(N, P, 4)`` variance-encoded offsets ``(dx, dy, dw, dh)`` =
  ``((g_c - p_c) / (v0 * p_wh), log(g_wh / p_wh) / v1)``, variances ``(0.1, 0.2)``.
* Ground-truth boxes (pixels of the network input) are normalised by the batch tensor's size.
  Inputs must have the fixed square size the priors were designed for (mapper:
  ``T.Resize((s, s))``); with the classic ``steps`` the prior generator refuses a feature map
  size that does not fit ``image_size / step`` (set ``steps=None`` for other sizes). For
  ``DefaultPredictor`` set ``predictor.aug = T.Resize((s, s))``.
* Pixel normalisation ``(img - pixel_mean) / pixel_std``; the reference repos use 127 / 128 and
  RGB input (``INPUT.FORMAT = "RGB"`` for their checkpoints).

The training forward is split so that a distillation subclass can reuse every step:
``preprocess_image`` -> ``extract_features`` -> ``predict`` -> ``get_priors`` -> ``match`` ->
``mine_hard_negatives`` -> ``losses``; ``training_step`` runs the steps after the backbone and
returns the batch's :class:`d2kd.records.SSDRecord` with the losses (``DistillationSSD`` calls
it too), ``forward_training`` runs them all and returns ``(losses, record)`` with every
intermediate (see ``SSD.forward_training``).
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import batched_nms, get_norm, move_device_like
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, detector_postprocess
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou

from ...records.ssd import SSDRecord, ssd_outputs
from ...runtime import put_scalar

__all__ = [
    "SSD",
    "SSDHead",
    "SeparableConv2d",
    "SSDPriorGenerator",
    "PRIOR_PRESETS",
    "add_ssd_config",
    "point_form",
    "encode_boxes",
    "decode_boxes",
    "match_priors",
    "mine_hard_negatives",
    "multibox_loss",
]

logger = logging.getLogger(__name__)

# Prior layouts (sizes in pixels of `image_size`).
PRIOR_PRESETS = {
    # ssd.pytorch `voc` SSD300: 38,19,10,5,3,1 -> 8732 priors
    "classic": dict(
        image_size=300,
        min_sizes=[30, 60, 111, 162, 213, 264],
        max_sizes=[60, 111, 162, 213, 264, 315],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        steps=[8, 16, 32, 64, 100, 300],
    ),
    # ssd.pytorch `coco` SSD300 (smaller min sizes)
    "classic_coco": dict(
        image_size=300,
        min_sizes=[21, 45, 99, 153, 207, 261],
        max_sizes=[45, 99, 153, 207, 261, 315],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        steps=[8, 16, 32, 64, 100, 300],
    ),
    # pytorch-ssd mobilenetv1/v2 SSD(Lite) config, also the SSD-KD repo's re-headed VGG teacher:
    # 19,10,5,3,2,1 x 6 -> 3000 priors
    "aligned": dict(
        image_size=300,
        min_sizes=[60, 105, 150, 195, 240, 285],
        max_sizes=[105, 150, 195, 240, 285, 330],
        aspect_ratios=[[2, 3]] * 6,
        steps=[16, 32, 64, 100, 150, 300],
    ),
}


# ---------------------------------------------------------------------------------------------
# priors and box coding
# ---------------------------------------------------------------------------------------------
class SSDPriorGenerator(nn.Module):
    """SSD default boxes ("priors") for a list of feature-map sizes; no parameters or buffers.

    For level k with feature map (H, W): ``f_k = image_size / steps[k]`` (or the feature map size
    itself when ``steps`` is None), centres ``((j + 0.5) / f_k, (i + 0.5) / f_k)``, and at each
    location ``2 + 2 * len(aspect_ratios[k])`` boxes: ``s = min_sizes[k] / image_size`` square,
    ``sqrt(s * max_sizes[k] / image_size)`` square, then ``(s*sqrt(ar), s/sqrt(ar))`` and
    ``(s/sqrt(ar), s*sqrt(ar))`` for each ar. ``clip`` clamps the ``(cx, cy, w, h)`` values to
    [0, 1] (as ssd.pytorch and pytorch-ssd do). Output ``(P, 4)`` float32.
    """

    def __init__(
        self,
        *,
        image_size: int = 300,
        min_sizes: Sequence[float],
        max_sizes: Sequence[float],
        aspect_ratios: Sequence[Sequence[float]],
        steps: Optional[Sequence[float]] = None,
        clip: bool = True,
        offset: float = 0.5,
    ):
        super().__init__()
        n = len(min_sizes)
        if not (len(max_sizes) == n and len(aspect_ratios) == n):
            raise ValueError("min_sizes, max_sizes and aspect_ratios need one entry per level")
        if steps is not None and len(steps) == 0:
            steps = None
        if steps is not None and len(steps) != n:
            raise ValueError(f"steps needs {n} entries, got {len(steps)}")
        self.image_size = float(image_size)
        self.min_sizes = [float(x) for x in min_sizes]
        self.max_sizes = [float(x) for x in max_sizes]
        self.aspect_ratios = [[float(a) for a in ars] for ars in aspect_ratios]
        self.steps = None if steps is None else [float(s) for s in steps]
        self.clip = clip
        self.offset = offset
        self._cache: Dict[Tuple, Tensor] = {}

    @property
    def num_levels(self) -> int:
        return len(self.min_sizes)

    @property
    def num_priors_per_location(self) -> List[int]:
        return [2 + 2 * len(a) for a in self.aspect_ratios]

    def num_priors(self, feature_sizes: Sequence[Tuple[int, int]]) -> int:
        return sum(h * w * a for (h, w), a in zip(feature_sizes, self.num_priors_per_location))

    def _level(self, k: int, h: int, w: int) -> Tensor:
        if self.steps is not None:
            f = self.image_size / self.steps[k]
            if abs(f - h) >= 1 or abs(f - w) >= 1:
                raise ValueError(
                    f"SSD priors level {k}: feature map {h}x{w} does not fit image_size/step = "
                    f"{self.image_size:g}/{self.steps[k]:g} = {f:.3g}. Feed {self.image_size:g}x"
                    f"{self.image_size:g} inputs (mapper/predictor: T.Resize((s, s))) or use "
                    f"steps=None to place centres by the feature map size.")
            fy = fx = f
        else:
            fy, fx = float(h), float(w)
        cy = (torch.arange(h, dtype=torch.float64) + self.offset) / fy
        cx = (torch.arange(w, dtype=torch.float64) + self.offset) / fx
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # (h, w), row-major like ssd.pytorch
        s = self.min_sizes[k] / self.image_size
        s2 = math.sqrt(s * self.max_sizes[k] / self.image_size)
        wh = [(s, s), (s2, s2)]
        for ar in self.aspect_ratios[k]:
            r = math.sqrt(ar)
            wh += [(s * r, s / r), (s / r, s * r)]
        wh = torch.tensor(wh, dtype=torch.float64)  # (A, 2)
        A = wh.shape[0]
        centers = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, A, 2)
        sizes = wh.reshape(1, A, 2).expand(h * w, A, 2)
        return torch.cat([centers, sizes], dim=-1).reshape(-1, 4)

    def forward(self, feature_sizes: Sequence[Tuple[int, int]], device=None) -> Tensor:
        feature_sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        if len(feature_sizes) != self.num_levels:
            raise ValueError(f"SSD priors: {self.num_levels} levels configured, got "
                             f"{len(feature_sizes)} feature maps")
        key = (feature_sizes, str(device))
        if key not in self._cache:
            priors = torch.cat([self._level(k, h, w) for k, (h, w) in enumerate(feature_sizes)])
            if self.clip:
                priors = priors.clamp(0.0, 1.0)
            self._cache[key] = priors.float().to(device)
        return self._cache[key]


def point_form(priors: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1)."""
    return torch.cat([priors[..., :2] - priors[..., 2:] / 2, priors[..., :2] + priors[..., 2:] / 2], -1)


def encode_boxes(matched: Tensor, priors: Tensor, variances=(0.1, 0.2)) -> Tensor:
    """SSD box encoding of ``matched`` (…, 4) xyxy boxes w.r.t. ``priors`` (…, 4) cxcywh (same
    normalised units): ``((g_c - p_c) / (v0 p_wh), log(g_wh / p_wh) / v1)``."""
    g_c = (matched[..., :2] + matched[..., 2:]) / 2
    g_wh = matched[..., 2:] - matched[..., :2]
    d_c = (g_c - priors[..., :2]) / (variances[0] * priors[..., 2:])
    d_wh = torch.log(g_wh / priors[..., 2:]) / variances[1]
    return torch.cat([d_c, d_wh], -1)


def decode_boxes(deltas: Tensor, priors: Tensor, variances=(0.1, 0.2)) -> Tensor:
    """Inverse of ``encode_boxes``: deltas (…, 4) + priors cxcywh -> xyxy (normalised)."""
    c = priors[..., :2] + deltas[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(deltas[..., 2:] * variances[1])
    return torch.cat([c - wh / 2, c + wh / 2], -1)


@torch.no_grad()
def match_priors(
    gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, iou_threshold: float = 0.5,
    variances=(0.1, 0.2),
) -> Tuple[Tensor, Tensor]:
    """SSD matching for one image (ssd.pytorch ``match``).

    Args:
        gt_boxes: (G, 4) xyxy, normalised like the priors; gt_labels: (G,) **1-based** labels
            (0 is background); priors: (P, 4) cxcywh.
    Returns:
        labels (P,) int64 (0 = background), targets (P, 4) encoded offsets (zeros when G = 0).
    Each prior takes its highest-IoU GT, background below ``iou_threshold``; then every GT forces
    its own best prior (IoU set to 2, ties over GTs resolved like the reference loop: the later
    GT wins).
    """
    P = priors.shape[0]
    if gt_boxes.numel() == 0:
        return (torch.zeros(P, dtype=torch.int64, device=priors.device),
                torch.zeros(P, 4, dtype=priors.dtype, device=priors.device))
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(point_form(priors)))  # (G, P)
    best_gt_iou, best_gt_idx = iou.max(dim=0)  # per prior
    best_prior_idx = iou.argmax(dim=1)  # per GT
    best_gt_iou[best_prior_idx] = 2.0
    for j in range(best_prior_idx.shape[0]):  # G is small; keeps the reference's tie order
        best_gt_idx[best_prior_idx[j]] = j
    labels = gt_labels.to(torch.int64)[best_gt_idx]
    labels[best_gt_iou < iou_threshold] = 0
    targets = encode_boxes(gt_boxes[best_gt_idx], priors, variances)
    return labels, targets


@torch.no_grad()
def mine_hard_negatives(logits: Tensor, labels: Tensor, neg_pos_ratio: float = 3.0) -> Tensor:
    """Hard negative mining (SSD): per image, the ``floor(neg_pos_ratio * N_pos)`` background priors
    (capped at the number of background priors) with the highest background cross-entropy
    ``-log softmax(logits)[..., 0]``.

    Args: logits (N, P, K+1) with column 0 = background; labels (N, P), 0 = background.
    Returns: bool mask (N, P) of the mined negatives (never includes a positive).
    """
    pos = labels > 0
    bg_loss = -F.log_softmax(logits.detach().float(), dim=-1)[..., 0]
    bg_loss = bg_loss.masked_fill(pos, -math.inf)
    num_pos = pos.sum(dim=1, keepdim=True)
    num_neg = torch.minimum((num_pos.double() * neg_pos_ratio).floor().long(),
                            (~pos).sum(dim=1, keepdim=True))
    order = bg_loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    return rank < num_neg


def multibox_loss(
    logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor, neg_mask: Tensor,
    smooth_l1_beta: float = 1.0,
) -> Dict[str, Tensor]:
    """SSD multibox loss (ssd.pytorch ``MultiBoxLoss``): softmax CE over positives + mined negatives
    (sum) and SmoothL1 on the positives' encoded boxes (sum), both divided by the batch's N_pos
    (clamped to >= 1; ssd.pytorch would divide by 0). Computed in fp32."""
    pos = labels > 0
    sel = pos | neg_mask
    num_pos = pos.sum().clamp(min=1).float()
    loss_cls = F.cross_entropy(logits[sel].float(), labels[sel], reduction="sum")
    if smooth_l1_beta > 0:
        loss_box = F.smooth_l1_loss(deltas[pos].float(), targets[pos].float(),
                                    beta=smooth_l1_beta, reduction="sum")
    else:
        loss_box = F.l1_loss(deltas[pos].float(), targets[pos].float(), reduction="sum")
    return {"loss_cls": loss_cls / num_pos, "loss_box_reg": loss_box / num_pos}


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------
class SeparableConv2d(nn.Module):
    """SSDLite head conv: 3x3 depthwise (with bias) + norm + ReLU6 + 1x1 pointwise
    (pytorch-ssd ``SeperableConv2d``)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.norm = get_norm(norm, in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.pointwise(F.relu6(self.norm(self.depthwise(x))))


class SSDHead(nn.Module):
    """One classifier and one box regressor per source: ``cls_score.{i}`` -> (N, A_i*(K+1), H, W),
    ``bbox_pred.{i}`` -> (N, A_i*4, H, W).

    head_type "conv": plain 3x3 convs (ssd.pytorch ``loc``/``conf``).
    head_type "ssdlite": ``SeparableConv2d`` per source, and (``last_level_1x1``, default True for
    ssdlite, as in pytorch-ssd) a plain 1x1 conv on the last source.
    ``num_classes`` is K (foreground); the outputs have K+1 channels per prior, background first.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        num_priors: Sequence[int],
        head_type: str = "conv",
        norm: str = "BN",
        last_level_1x1: Optional[bool] = None,
    ):
        super().__init__()
        if len(in_channels) != len(num_priors):
            raise ValueError(f"SSDHead: {len(in_channels)} sources but {len(num_priors)} prior "
                             "counts")
        if head_type not in ("conv", "ssdlite"):
            raise ValueError(f"SSDHead head_type must be 'conv' or 'ssdlite', got {head_type!r}")
        if last_level_1x1 is None:
            last_level_1x1 = head_type == "ssdlite"
        self.num_classes = num_classes
        self.head_type = head_type
        C = num_classes + 1
        cls, box = [], []
        n = len(in_channels)
        for i, (c, a) in enumerate(zip(in_channels, num_priors)):
            if last_level_1x1 and i == n - 1:
                cls.append(nn.Conv2d(c, a * C, 1))
                box.append(nn.Conv2d(c, a * 4, 1))
            elif head_type == "ssdlite":
                cls.append(SeparableConv2d(c, a * C, norm))
                box.append(SeparableConv2d(c, a * 4, norm))
            else:
                cls.append(nn.Conv2d(c, a * C, 3, padding=1))
                box.append(nn.Conv2d(c, a * 4, 3, padding=1))
        self.cls_score = nn.ModuleList(cls)
        self.bbox_pred = nn.ModuleList(box)
        for m in self.modules():  # xavier + zero bias (ssd.pytorch / pytorch-ssd)
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        return ([m(x) for m, x in zip(self.cls_score, features)],
                [m(x) for m, x in zip(self.bbox_pred, features)])


# ---------------------------------------------------------------------------------------------
# meta-architecture
# ---------------------------------------------------------------------------------------------
@META_ARCH_REGISTRY.register()
class SSD(nn.Module):
    """Single Shot MultiBox Detector; same input/output contract as Detectron2's RetinaNet.

    Args (keyword-only):
        backbone: a Backbone whose ``head_in_features`` outputs are the SSD sources
            (``VGG16SSD``, ``MobileNetV2SSDLite``).
        prior_generator: ``SSDPriorGenerator`` (one level per source).
        num_classes: K, number of foreground classes.
        head: optional head module with ``SSDHead``'s interface; default builds
            ``SSDHead(head_type, head_norm)`` on the backbone's source shapes.
        head_in_features: backbone outputs fed to the head, in order (default: the backbone's
            ``source_names`` if it has them, else all its outputs). Other backbone outputs (e.g.
            a hint layer) are computed and kept in ``record["features"]`` but not used here.
        pixel_mean, pixel_std: input normalisation (reference repos: 127 / 128).
        input_format: "RGB" or "BGR" (only recorded, like GeneralizedRCNN; the mapper decides).
        iou_threshold: matching threshold (0.5); neg_pos_ratio: hard-negative ratio (3);
        box_variances: (0.1, 0.2); smooth_l1_beta: 1.0 (ssd.pytorch's F.smooth_l1_loss).
        score_threshold (0.01), nms_threshold (0.45), topk_candidates (200 per class before NMS,
        as ssd.pytorch's ``nms(top_k=200)``), max_detections_per_image (200).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        prior_generator: SSDPriorGenerator,
        num_classes: int,
        head: Optional[nn.Module] = None,
        head_type: str = "conv",
        head_norm: str = "BN",
        head_in_features: Optional[Sequence[str]] = None,
        pixel_mean: Sequence[float] = (127.0, 127.0, 127.0),
        pixel_std: Sequence[float] = (128.0, 128.0, 128.0),
        input_format: str = "RGB",
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        box_variances: Sequence[float] = (0.1, 0.2),
        smooth_l1_beta: float = 1.0,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        topk_candidates: int = 200,
        max_detections_per_image: int = 200,
    ):
        super().__init__()
        self.backbone = backbone
        if head_in_features is None or len(head_in_features) == 0:
            head_in_features = getattr(backbone, "source_names", None) or list(
                backbone.output_shape().keys())
        self.head_in_features = list(head_in_features)
        shapes = backbone.output_shape()
        missing = [f for f in self.head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"SSD: head_in_features {missing} are not backbone outputs "
                             f"{list(shapes)}")
        if prior_generator.num_levels != len(self.head_in_features):
            raise ValueError(f"SSD: prior generator has {prior_generator.num_levels} levels, "
                             f"head_in_features has {len(self.head_in_features)}")
        self.prior_generator = prior_generator
        self.num_classes = num_classes
        if head is None:
            head = SSDHead(
                in_channels=[shapes[f].channels for f in self.head_in_features],
                num_classes=num_classes,
                num_priors=prior_generator.num_priors_per_location,
                head_type=head_type,
                norm=head_norm,
            )
        self.head = head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.input_format = input_format
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.box_variances = tuple(float(v) for v in box_variances)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.topk_candidates = topk_candidates
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        c = cfg.MODEL.SSD
        return {
            "backbone": backbone,
            "prior_generator": SSDPriorGenerator(**prior_kwargs_from_cfg(cfg)),
            "num_classes": c.NUM_CLASSES,
            "head_type": c.HEAD_TYPE,
            "head_norm": c.HEAD_NORM,
            "head_in_features": list(c.IN_FEATURES) or None,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "iou_threshold": c.IOU_THRESHOLD,
            "neg_pos_ratio": c.NEG_POS_RATIO,
            "box_variances": c.BBOX_REG_VARIANCES,
            "smooth_l1_beta": c.SMOOTH_L1_BETA,
            "score_threshold": c.SCORE_THRESH_TEST,
            "nms_threshold": c.NMS_THRESH_TEST,
            "topk_candidates": c.TOPK_CANDIDATES_TEST,
            "max_detections_per_image": c.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ----- steps -------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalise and batch the images (no size-divisibility padding)."""
        images = [move_device_like(x["image"], self.pixel_mean) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def extract_features(self, images: Union[ImageList, Tensor]) -> Dict[str, Tensor]:
        """All backbone outputs (the SSD sources plus any extra ``out_features``)."""
        x = images.tensor if isinstance(images, ImageList) else images
        return self.backbone(x)

    def predict(self, features: Union[Dict[str, Tensor], List[Tensor]]) -> Tuple[Tensor, Tensor]:
        """Head outputs flattened over sources: logits (N, P, K+1) (column 0 = background) and
        box deltas (N, P, 4), in the priors' order."""
        if isinstance(features, dict):
            features = [features[f] for f in self.head_in_features]
        cls, box = self.head(features)
        logits = torch.cat([permute_to_N_HWA_K(x, self.num_classes + 1) for x in cls], dim=1)
        deltas = torch.cat([permute_to_N_HWA_K(x, 4) for x in box], dim=1)
        return logits, deltas

    def get_priors(self, features: Union[Dict[str, Tensor], List[Tensor]]) -> Tensor:
        """Priors (P, 4) cxcywh normalised for these source feature maps."""
        if isinstance(features, dict):
            features = [features[f] for f in self.head_in_features]
        return self.prior_generator([x.shape[-2:] for x in features], device=features[0].device)

    def match(self, gt_instances: List[Instances], priors: Tensor,
              image_hw: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Match GT to priors. ``image_hw``: (H, W) of the batch tensor, the unit of the priors.

        Returns labels (N, P) int64 (0 = background, c+1 = Detectron2 class c) and encoded
        regression targets (N, P, 4) (meaningful only where labels > 0)."""
        H, W = image_hw
        scale = torch.tensor([W, H, W, H], dtype=torch.float32, device=priors.device)
        labels, targets = [], []
        for inst in gt_instances:
            boxes = inst.gt_boxes.tensor.to(priors.device).float() / scale
            lab, tgt = match_priors(boxes, inst.gt_classes.to(priors.device) + 1, priors,
                                    self.iou_threshold, self.box_variances)
            labels.append(lab)
            targets.append(tgt)
        return torch.stack(labels), torch.stack(targets)

    def mine_hard_negatives(self, logits: Tensor, labels: Tensor) -> Tensor:
        return mine_hard_negatives(logits, labels, self.neg_pos_ratio)

    def losses(self, logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor,
               neg_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``{"loss_cls", "loss_box_reg"}``; mines the negatives when ``neg_mask`` is None."""
        if neg_mask is None:
            neg_mask = self.mine_hard_negatives(logits, labels)
        return multibox_loss(logits, deltas, labels, targets, neg_mask, self.smooth_l1_beta)

    # ----- forward -----------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """Training: dict of losses. Inference: ``[{"instances": Instances}]`` in the original
        image resolution (``height``/``width`` of each input, if given)."""
        if self.training:
            assert not torch.jit.is_scripting()
            losses, _ = self.forward_training(batched_inputs)
            return losses
        return self.forward_inference(batched_inputs)

    def forward_training(self, batched_inputs: List[Dict[str, Tensor]]):
        """Returns ``(losses, record)``; record has every intermediate of the step:

        ``images`` (ImageList), ``features`` (dict, all backbone outputs), ``logits`` (N, P, K+1),
        ``deltas`` (N, P, 4), ``priors`` (P, 4), ``labels`` (N, P), ``targets`` (N, P, 4),
        ``pos_mask`` (N, P) bool, ``neg_mask`` (N, P) bool (mined negatives), ``num_pos`` (int).
        """
        if not all("instances" in x for x in batched_inputs):
            raise ValueError("SSD training needs 'instances' in every input")
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        ssd, losses = self.training_step(images, features, gt_instances)
        record = dict(images=images, features=features, logits=ssd.logits, deltas=ssd.deltas,
                      priors=ssd.priors, labels=ssd.labels, targets=ssd.targets, pos_mask=ssd.pos_mask,
                      neg_mask=ssd.neg_mask, num_pos=ssd.num_pos)
        return losses, record

    def training_step(self, images: ImageList, features: Dict[str, Tensor],
                      gt_instances: List[Instances]) -> Tuple[SSDRecord, Dict[str, Tensor]]:
        """The training step after the backbone: head outputs and priors, GT matching, hard
        negative mining and the multibox loss. Returns the step's :class:`SSDRecord` (with the
        matching and the mining masks) and the losses. ``DistillationSSD`` runs this same step on
        the student's half of its paired images."""
        ssd = ssd_outputs(self, features)
        if ssd.logits.shape[1] != ssd.priors.shape[0]:
            raise RuntimeError(f"SSD: head predicts {ssd.logits.shape[1]} priors, generator made "
                               f"{ssd.priors.shape[0]}")
        ssd.labels, ssd.targets = self.match(gt_instances, ssd.priors, tuple(images.tensor.shape[-2:]))
        ssd.neg_mask = self.mine_hard_negatives(ssd.logits, ssd.labels)
        losses = self.losses(ssd.logits, ssd.deltas, ssd.labels, ssd.targets, ssd.neg_mask)
        ssd.pos_mask = ssd.labels > 0
        ssd.num_pos = int(ssd.pos_mask.sum())
        put_scalar("ssd/num_pos_per_image", ssd.num_pos / len(gt_instances))
        return ssd, losses

    def forward_inference(self, batched_inputs: List[Dict[str, Tensor]], do_postprocess=True):
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        logits, deltas = self.predict(features)
        priors = self.get_priors(features)
        results = self.inference(logits, deltas, priors, images.image_sizes,
                                 tuple(images.tensor.shape[-2:]))
        if not do_postprocess:
            return results
        processed = []
        for r, x, size in zip(results, batched_inputs, images.image_sizes):
            h = x.get("height", size[0])
            w = x.get("width", size[1])
            processed.append({"instances": detector_postprocess(r, h, w)})
        return processed

    def inference(self, logits: Tensor, deltas: Tensor, priors: Tensor,
                  image_sizes: List[Tuple[int, int]], tensor_hw: Tuple[int, int]) -> List[Instances]:
        """Softmax, per-class score threshold and top-k, class-wise NMS, top
        ``max_detections_per_image``. Boxes in pixels of the network input (image_sizes)."""
        H, W = tensor_hw
        scale = torch.tensor([W, H, W, H], dtype=torch.float32, device=logits.device)
        probs = F.softmax(logits.float(), dim=-1)[..., 1:]  # (N, P, K): drop background
        boxes = decode_boxes(deltas.float(), priors, self.box_variances) * scale
        results = []
        for i, size in enumerate(image_sizes):
            scores = probs[i]  # (P, K)
            k = min(self.topk_candidates, scores.shape[0]) if self.topk_candidates > 0 else scores.shape[0]
            top_scores, top_idx = scores.topk(k, dim=0)  # (k, K) per class
            classes = torch.arange(self.num_classes, device=scores.device).expand(k, -1)
            keep = top_scores > self.score_threshold
            cand_scores = top_scores[keep]
            cand_classes = classes[keep]
            cand_boxes = boxes[i][top_idx[keep]]
            kept = batched_nms(cand_boxes, cand_scores, cand_classes, self.nms_threshold)
            if self.max_detections_per_image > 0:
                kept = kept[: self.max_detections_per_image]
            r = Instances(tuple(size))
            r.pred_boxes = Boxes(cand_boxes[kept])
            r.scores = cand_scores[kept]
            r.pred_classes = cand_classes[kept]
            results.append(r)
        return results


# ---------------------------------------------------------------------------------------------
# yacs config
# ---------------------------------------------------------------------------------------------
def add_ssd_config(cfg: CN) -> CN:
    """Add the SSD keys to a Detectron2 yacs config (in place; also returned).

    MODEL.SSD: NUM_CLASSES (K, foreground), IN_FEATURES ([] = backbone sources), HEAD_TYPE
    ("conv" | "ssdlite"), HEAD_NORM, PRIORS.{PRESET ("classic" | "classic_coco" | "aligned"),
    IMAGE_SIZE, MIN_SIZES, MAX_SIZES, ASPECT_RATIOS, STEPS ([] = from preset), USE_STEPS (False:
    centres from feature-map sizes, for inputs other than IMAGE_SIZE), CLIP}, IOU_THRESHOLD,
    NEG_POS_RATIO, BBOX_REG_VARIANCES, SMOOTH_L1_BETA, SCORE_THRESH_TEST, NMS_THRESH_TEST,
    TOPK_CANDIDATES_TEST (per class before NMS), DETECTIONS_PER_IMAGE.
    MODEL.VGG_SSD: LAYOUT ("classic" | "aligned"), WIDTH_MULT, L2NORM_SCALE, OUT_FEATURES, NORM.
    MODEL.MOBILENETV2_SSDLITE: WIDTH_MULT, NORM, OUT_FEATURES.
    An empty list means "the default". Global keys used: MODEL.PIXEL_MEAN/PIXEL_STD (set
    [127]*3 / [128]*3 for the reference recipe), INPUT.FORMAT, MODEL.BACKBONE.NAME
    ("build_vgg16_ssd_backbone" | "build_mobilenetv2_ssdlite_backbone").
    """
    cfg.MODEL.SSD = CN()
    c = cfg.MODEL.SSD
    c.NUM_CLASSES = 20
    c.IN_FEATURES = []
    c.HEAD_TYPE = "conv"
    c.HEAD_NORM = "BN"
    c.PRIORS = CN()
    c.PRIORS.PRESET = "classic"
    c.PRIORS.IMAGE_SIZE = 0  # 0 = from preset
    c.PRIORS.MIN_SIZES = []
    c.PRIORS.MAX_SIZES = []
    c.PRIORS.ASPECT_RATIOS = []
    c.PRIORS.STEPS = []
    c.PRIORS.USE_STEPS = True
    c.PRIORS.CLIP = True
    c.IOU_THRESHOLD = 0.5
    c.NEG_POS_RATIO = 3.0
    c.BBOX_REG_VARIANCES = (0.1, 0.2)
    c.SMOOTH_L1_BETA = 1.0
    c.SCORE_THRESH_TEST = 0.01
    c.NMS_THRESH_TEST = 0.45
    c.TOPK_CANDIDATES_TEST = 200
    c.DETECTIONS_PER_IMAGE = 200

    cfg.MODEL.VGG_SSD = CN()
    cfg.MODEL.VGG_SSD.LAYOUT = "classic"
    cfg.MODEL.VGG_SSD.WIDTH_MULT = 1.0
    cfg.MODEL.VGG_SSD.L2NORM_SCALE = 20.0
    cfg.MODEL.VGG_SSD.NORM = ""
    cfg.MODEL.VGG_SSD.OUT_FEATURES = []

    cfg.MODEL.MOBILENETV2_SSDLITE = CN()
    cfg.MODEL.MOBILENETV2_SSDLITE.WIDTH_MULT = 1.0
    cfg.MODEL.MOBILENETV2_SSDLITE.NORM = "BN"
    cfg.MODEL.MOBILENETV2_SSDLITE.OUT_FEATURES = []
    return cfg


def prior_kwargs_from_cfg(cfg) -> dict:
    """SSDPriorGenerator kwargs from MODEL.SSD.PRIORS (preset, overridden by non-empty keys)."""
    p = cfg.MODEL.SSD.PRIORS
    if p.PRESET and p.PRESET not in PRIOR_PRESETS:
        raise ValueError(f"MODEL.SSD.PRIORS.PRESET must be one of {sorted(PRIOR_PRESETS)} or '', "
                         f"got {p.PRESET!r}")
    kw = dict(PRIOR_PRESETS[p.PRESET]) if p.PRESET else {}
    if p.IMAGE_SIZE:
        kw["image_size"] = p.IMAGE_SIZE
    for key, name in [("MIN_SIZES", "min_sizes"), ("MAX_SIZES", "max_sizes"),
                      ("ASPECT_RATIOS", "aspect_ratios"), ("STEPS", "steps")]:
        if len(p[key]):
            kw[name] = [list(x) if isinstance(x, (list, tuple)) else x for x in p[key]]
    if not p.USE_STEPS:
        kw["steps"] = None
    kw["clip"] = p.CLIP
    return kw
