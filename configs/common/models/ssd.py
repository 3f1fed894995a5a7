"""Lazy SSD models (d2kd ``SSD``) and the square-input loaders they need.

Models (all with the SSD-KD reference's input: RGB, ``(img − 127) / 128``, docs/methods.md §1.2):

* :func:`vgg16_ssd300` ``layout="classic"``: ssd.pytorch SSD300 (sources conv4_3_norm .. conv9_2,
  38..1 at 300 px, 8732 priors); ``layout="aligned"``: the SSD-KD teacher re-headed to the
  student's prior layout (fc7 .. conv10_2, 19..1, 3000 priors, 6 per location).
* :func:`mobilenetv2_ssdlite`: pytorch-ssd MobileNetV2-SSDLite (3000 priors), the student.

``hint=True`` (default) also returns the Chen et al. hint layers as backbone outputs — VGG
``conv4_3`` (ReLU output, 512 ch, stride 8) and MobileNetV2 ``expand7`` (192 ch, stride 8). They
are computed anyway and not used by the SSD head, so this changes neither cost nor checkpoints;
``Chen2017(variant="paper")`` needs them.

Priors: :func:`ssd_priors` (a ``PRIOR_PRESETS`` entry plus overrides). With the presets'
``steps`` the input must be exactly ``image_size`` square: loaders here end with a fixed
``T.Resize((s, s))``. For other input sizes pass ``steps=None`` (prior centres from the feature
map sizes) — what the shapes configs and the CPU tests do.
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper

from d2kd.data.ssd_augmentation import (
    SSDDatasetMapper,
    SSDExpand,
    SSDMinIoURandomCrop,
    SSDPhotometricDistort,
)
from d2kd.modeling.backbone.mobilenetv2_ssdlite import SOURCES as MBV2_SOURCES
from d2kd.modeling.backbone.mobilenetv2_ssdlite import MobileNetV2SSDLite
from d2kd.modeling.backbone.ssd_vgg import VGG_SSD_LAYOUTS, VGG16SSD
from d2kd.modeling.meta_arch.ssd import PRIOR_PRESETS, SSD, SSDPriorGenerator

SSD_PIXEL_MEAN = [127.0, 127.0, 127.0]
SSD_PIXEL_STD = [128.0, 128.0, 128.0]


def ssd_priors(preset="aligned", **overrides):
    return L(SSDPriorGenerator)(**{**PRIOR_PRESETS[preset], **overrides})


def _ssd(backbone, priors, num_classes, head_type):
    return L(SSD)(
        backbone=backbone,
        prior_generator=priors,
        num_classes=num_classes,
        head_type=head_type,
        pixel_mean=SSD_PIXEL_MEAN,
        pixel_std=SSD_PIXEL_STD,
        input_format="RGB",
    )


def vgg16_ssd300(*, layout="classic", width_mult=1.0, num_classes=20, priors=None, hint=True, norm=""):
    """VGG16-SSD (``layout`` classic | aligned); ``priors`` default: the layout's 300-px preset;
    ``norm`` after every conv ("" = the original; "BN" to train from scratch)."""
    sources = list(VGG_SSD_LAYOUTS[layout]["sources"])
    backbone = L(VGG16SSD)(layout=layout, width_mult=width_mult, norm=norm,
                           out_features=sources + (["conv4_3"] if hint else []))
    model = _ssd(backbone, priors or ssd_priors(layout), num_classes, "conv")
    model.head_in_features = sources
    return model


def mobilenetv2_ssdlite(*, width_mult=1.0, num_classes=20, priors=None, hint=True):
    """MobileNetV2-SSDLite (aligned 3000-prior layout by default)."""
    sources = list(MBV2_SOURCES)
    backbone = L(MobileNetV2SSDLite)(width_mult=width_mult,
                                     out_features=sources + (["expand7"] if hint else []))
    model = _ssd(backbone, priors or ssd_priors("aligned"), num_classes, "ssdlite")
    model.head_in_features = sources
    return model


def ssd_train_augs(size, *, image_format="RGB", fill=(127.0, 127.0, 127.0)):
    """ssd.pytorch ``SSDAugmentation`` (photometric, expand, min-IoU crop, flip, square resize)."""
    return [
        L(SSDPhotometricDistort)(image_format=image_format),
        L(SSDExpand)(fill=list(fill)),
        L(SSDMinIoURandomCrop)(),
        L(T.RandomFlip)(horizontal=True),
        L(T.Resize)(shape=(size, size)),
    ]


def square_loaders(dataloader, size, *, ssd_augmentation=True, image_format="RGB"):
    """Turn a Detectron2 ``dataloader`` section into SSD's: square ``size`` input (train and
    test), RGB, and (``ssd_augmentation``) the ssd.pytorch training augmentation; otherwise
    flip + resize only."""
    if ssd_augmentation:
        dataloader.train.mapper = L(SSDDatasetMapper)(
            is_train=True, augmentations=ssd_train_augs(size, image_format=image_format),
            image_format=image_format)
    else:
        dataloader.train.mapper = L(DatasetMapper)(
            is_train=True,
            augmentations=[L(T.RandomFlip)(horizontal=True), L(T.Resize)(shape=(size, size))],
            image_format=image_format)
    dataloader.test.mapper = L(DatasetMapper)(
        is_train=False, augmentations=[L(T.Resize)(shape=(size, size))],
        image_format="${...train.mapper.image_format}")
    return dataloader
