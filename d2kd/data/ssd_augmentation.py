"""SSD training augmentation (ssd.pytorch ``SSDAugmentation``, used by the SSD-KD reference repo)
as Detectron2 ``Augmentation``s / ``Transform``s.

ssd.pytorch pipeline -> d2kd equivalent (``ssd_train_augmentations`` builds the list):

====================== ==========================================================================
ConvertFromInts        implicit: ``SSDPhotometricTransform`` returns float32
PhotometricDistort     ``SSDPhotometricDistort`` (brightness ±32; contrast [0.5, 1.5] before *or*
                       after the HSV part; saturation [0.5, 1.5]; hue ±18 deg; random channel
                       swap; each with probability 1/2; values are **not** clipped, as in
                       ssd.pytorch)
Expand(mean)           ``SSDExpand`` (p = 1/2, ratio U(1, 4), canvas filled with ``fill``)
RandomSampleCrop       ``SSDMinIoURandomCrop`` (modes: whole image, min IoU 0.1/0.3/0.7/0.9,
                       free; 50 trials per mode; crop 0.3..1 of each side, aspect 1/2..2; keeps
                       the boxes whose centre lies strictly inside the crop)
RandomMirror           ``T.RandomFlip(horizontal=True)``
Resize(300)            ``T.Resize((300, 300))``
SubtractMeans / 128    the model (``pixel_mean`` / ``pixel_std``)
====================== ==========================================================================

Box dropping: a Detectron2 transform cannot delete annotations, so ``SSDCropTransform.apply_box``
collapses the boxes whose centre is outside the crop to zero-area boxes, which
``DatasetMapper``'s ``filter_empty_instances`` then removes. Only boxes are handled this way
(SSD has no masks/keypoints).

The crop has to see the GT boxes while it samples; Detectron2's ``DatasetMapper`` builds its
``AugInput`` without boxes, so use ``SSDDatasetMapper`` (identical, plus ``boxes=``).

IoU constraint of the crop (``constraint=``): ssd.pytorch's test
``overlap.min() < min_iou and max_iou < overlap.max()`` can never be true with ``max_iou = inf``,
so the reference code never enforces the minimum IoU ("ssd_pytorch", the default, reproduces
that); "all" requires every GT box to reach ``min_iou`` with the crop (mmdetection), "any" at
least one (Caffe SSD's ``SatisfySampleConstraint``).
"""
import copy
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from fvcore.transforms.transform import CropTransform, NoOpTransform, Transform

__all__ = [
    "SSDPhotometricTransform",
    "SSDPhotometricDistort",
    "ExpandTransform",
    "SSDExpand",
    "SSDCropTransform",
    "SSDMinIoURandomCrop",
    "SSDDatasetMapper",
    "ssd_train_augmentations",
]

_PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class SSDPhotometricTransform(Transform):
    """Deterministic photometric distortion with sampled parameters (None = step skipped).

    Order (ssd.pytorch ``PhotometricDistort``): brightness ``+= delta``; if ``contrast_first``:
    contrast ``*= alpha``; to HSV (OpenCV float: H in [0, 360)); S ``*= saturation``;
    H ``+= hue`` wrapped to [0, 360]; back to the image format; if not ``contrast_first``:
    contrast; finally channel permutation. Output float32, not clipped (``clip=True`` clips
    to [0, 255]). Coordinates are unchanged.
    """

    def __init__(self, brightness: Optional[float] = None, contrast: Optional[float] = None,
                 contrast_first: bool = True, saturation: Optional[float] = None,
                 hue: Optional[float] = None, channel_perm: Optional[Tuple[int, int, int]] = None,
                 image_format: str = "BGR", clip: bool = False):
        super().__init__()
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"SSD photometric distortion needs a BGR or RGB image, got "
                             f"{image_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        im = img.astype(np.float32, copy=True)
        if self.brightness is not None:
            im += self.brightness
        if self.contrast_first and self.contrast is not None:
            im *= self.contrast
        if self.saturation is not None or self.hue is not None:
            to_hsv, from_hsv = ((cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR) if self.image_format == "BGR"
                                else (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB))
            im = cv2.cvtColor(im, to_hsv)
            if self.saturation is not None:
                im[:, :, 1] *= self.saturation
            if self.hue is not None:
                h = im[:, :, 0]
                h += self.hue
                h[h > 360.0] -= 360.0
                h[h < 0.0] += 360.0
            im = cv2.cvtColor(im, from_hsv)
        if not self.contrast_first and self.contrast is not None:
            im *= self.contrast
        if self.channel_perm is not None:
            im = np.ascontiguousarray(im[:, :, list(self.channel_perm)])
        if self.clip:
            im = np.clip(im, 0, 255)
        return im

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class SSDPhotometricDistort(T.Augmentation):
    """Samples an ``SSDPhotometricTransform`` like ssd.pytorch (every step with p = 1/2).

    Note: HSV conversion is skipped entirely when neither saturation nor hue is sampled (the
    reference always round-trips through HSV; the round trip is the identity up to float error).
    """

    def __init__(self, brightness_delta: float = 32.0, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta: float = 18.0, image_format: str = "BGR",
                 clip: bool = False):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        r = np.random
        brightness = r.uniform(-self.brightness_delta, self.brightness_delta) if r.randint(2) else None
        contrast_first = bool(r.randint(2))
        contrast = r.uniform(*self.contrast_range) if r.randint(2) else None
        saturation = r.uniform(*self.saturation_range) if r.randint(2) else None
        hue = r.uniform(-self.hue_delta, self.hue_delta) if r.randint(2) else None
        perm = _PERMS[r.randint(len(_PERMS))] if r.randint(2) else None
        return SSDPhotometricTransform(brightness, contrast, contrast_first, saturation, hue, perm,
                                       self.image_format, self.clip)


class ExpandTransform(Transform):
    """Place the image at (left, top) on a (new_h, new_w) canvas filled with ``fill`` (scalar or
    per channel); coordinates shift by (left, top); segmentation is padded with ``seg_fill``."""

    def __init__(self, left: int, top: int, new_w: int, new_h: int,
                 fill: Union[float, Sequence[float]] = 127.0, seg_fill: int = 0):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        out = np.empty((self.new_h, self.new_w) + img.shape[2:], dtype=img.dtype)
        out[...] = np.asarray(self.fill, dtype=np.float64).astype(img.dtype)
        out[self.top: self.top + h, self.left: self.left + w] = img
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = coords.copy()
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        h, w = segmentation.shape[:2]
        out = np.full((self.new_h, self.new_w) + segmentation.shape[2:], self.seg_fill,
                      dtype=segmentation.dtype)
        out[self.top: self.top + h, self.left: self.left + w] = segmentation
        return out


class SSDExpand(T.Augmentation):
    """ssd.pytorch ``Expand``: with probability ``prob`` zoom out by ``ratio ~ U(1, max_ratio)``."""

    def __init__(self, fill: Union[float, Sequence[float]] = 127.0, max_ratio: float = 4.0,
                 prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        r = np.random
        # ssd.pytorch: `if random.randint(2): return` -> expands with p = 1/2
        if r.uniform() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = r.uniform(1, self.max_ratio)
        left = r.uniform(0, w * ratio - w)
        top = r.uniform(0, h * ratio - h)
        return ExpandTransform(int(left), int(top), int(w * ratio), int(h * ratio), self.fill)


class SSDCropTransform(CropTransform):
    """Crop that also drops (collapses to zero area) every box whose centre is not strictly
    inside the crop, and clips the others to it (ssd.pytorch ``RandomSampleCrop``)."""

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4).copy()
        x0, y0, x1, y1 = self.x0, self.y0, self.x0 + self.w, self.y0 + self.h
        c = (box[:, :2] + box[:, 2:]) / 2
        keep = (c[:, 0] > x0) & (c[:, 1] > y0) & (c[:, 0] < x1) & (c[:, 1] < y1)
        box[:, [0, 2]] = np.clip(box[:, [0, 2]], x0, x1) - x0
        box[:, [1, 3]] = np.clip(box[:, [1, 3]], y0, y1) - y0
        box[~keep] = 0.0
        return box


def _iou_with_rect(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], rect[:2])
    rb = np.minimum(boxes[:, 2:], rect[2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / (area_a + area_b - inter)


class SSDMinIoURandomCrop(T.Augmentation):
    """ssd.pytorch ``RandomSampleCrop`` (see the module docstring for ``constraint``).

    A mode is drawn uniformly from [whole image, *min_ious, free crop]; whole image -> no-op.
    Otherwise up to ``trials`` crops with sides U(min_scale, 1) x the image's and aspect h/w in
    [0.5, 2] are drawn; the first that passes the IoU constraint and keeps the centre of at least
    one box wins; after ``trials`` failures a new mode is drawn (at most ``max_modes`` times,
    then no-op). Images without boxes are not cropped.
    """

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.7, 0.9), min_scale: float = 0.3,
                 trials: int = 50, constraint: str = "ssd_pytorch", max_modes: int = 1000):
        super().__init__()
        if constraint not in ("ssd_pytorch", "all", "any"):
            raise ValueError(f"constraint must be 'ssd_pytorch', 'all' or 'any', got {constraint!r}")
        self._init(locals())
        # None = keep the whole image; (min_iou, max_iou)
        self.modes = [None] + [(m, None) for m in min_ious] + [(None, None)]

    def get_transform(self, image, boxes):
        if boxes is None or len(boxes) == 0:
            return NoOpTransform()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        height, width = image.shape[:2]
        modes = self.modes
        r = np.random
        for _ in range(self.max_modes):
            mode = modes[r.randint(len(modes))]
            if mode is None:
                return NoOpTransform()
            min_iou = -np.inf if mode[0] is None else mode[0]
            max_iou = np.inf if mode[1] is None else mode[1]
            for _ in range(self.trials):
                w = r.uniform(self.min_scale * width, width)
                h = r.uniform(self.min_scale * height, height)
                if h / w < 0.5 or h / w > 2:
                    continue
                left = r.uniform(width - w)
                top = r.uniform(height - h)
                rect = np.array([int(left), int(top), int(left + w), int(top + h)])
                if rect[2] <= rect[0] or rect[3] <= rect[1]:
                    continue
                overlap = _iou_with_rect(boxes, rect)
                if self.constraint == "ssd_pytorch":
                    reject = overlap.min() < min_iou and max_iou < overlap.max()
                elif self.constraint == "all":
                    reject = overlap.min() < min_iou or overlap.max() > max_iou
                else:
                    reject = not ((overlap >= min_iou) & (overlap <= max_iou)).any()
                if reject:
                    continue
                c = (boxes[:, :2] + boxes[:, 2:]) / 2
                inside = (rect[0] < c[:, 0]) & (rect[1] < c[:, 1]) & (rect[2] > c[:, 0]) & (
                    rect[3] > c[:, 1])
                if not inside.any():
                    continue
                return SSDCropTransform(int(rect[0]), int(rect[1]), int(rect[2] - rect[0]),
                                        int(rect[3] - rect[1]), width, height)
        return NoOpTransform()


def ssd_train_augmentations(size: int = 300, fill=(127.0, 127.0, 127.0), image_format: str = "BGR",
                            crop_constraint: str = "ssd_pytorch", clip: bool = False):
    """The ssd.pytorch ``SSDAugmentation(size, mean)`` list (mean subtraction left to the model).
    The SSD-KD repo uses mean 127 (``fill``) and ``/128`` (model ``pixel_std``)."""
    return [
        SSDPhotometricDistort(image_format=image_format, clip=clip),
        SSDExpand(fill=fill),
        SSDMinIoURandomCrop(constraint=crop_constraint),
        T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
        T.Resize((size, size)),
    ]


class SSDDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that also hands the GT boxes (XYXY_ABS) to the augmentations, so
    ``SSDMinIoURandomCrop`` can sample against them. Everything else is DatasetMapper's.

    yacs: ``SSDDatasetMapper(cfg, is_train)`` uses ``cfg.INPUT.SSD_SIZE`` if present, else
    ``cfg.INPUT.MIN_SIZE_TEST``, for the square size; training gets ``ssd_train_augmentations``
    (fill = MODEL.PIXEL_MEAN), testing only ``T.Resize((s, s))``.
    LazyConfig: ``L(SSDDatasetMapper)(is_train=True, augmentations=ssd_train_augmentations(300),
    image_format="RGB")``.
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        size = cfg.INPUT.get("SSD_SIZE", cfg.INPUT.MIN_SIZE_TEST)
        if isinstance(size, (list, tuple)):
            size = size[0]
        if is_train:
            ret["augmentations"] = ssd_train_augmentations(
                size, fill=tuple(cfg.MODEL.PIXEL_MEAN), image_format=cfg.INPUT.FORMAT)
        else:
            ret["augmentations"] = [T.Resize((size, size))]
        return ret

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        boxes = None
        if self.is_train and "annotations" in dataset_dict:
            annos = [a for a in dataset_dict["annotations"] if a.get("iscrowd", 0) == 0]
            boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                              for a in annos], dtype=np.float64).reshape(-1, 4)
        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
