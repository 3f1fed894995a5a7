"""yacs keys that d2kd adds, for users who build models from Detectron2 yacs configs.

d2kd's own experiments are LazyConfig files (``configs/``); these keys make the same models
buildable from a yacs ``CfgNode`` (``DistillationRCNN.from_config``) and let
``DefaultPredictor`` serve a LazyConfig-defined model (``MODEL.LAZY_CONFIG``).
"""
from detectron2.config import CfgNode as CN

from . import import_check  # noqa: F401  (a clear error where "d2kd" is a folder, not the package)


def add_d2kd_config(cfg: CN) -> CN:
    """Add d2kd's keys to a Detectron2 yacs config, in place (idempotent)."""
    if "LAZY_CONFIG" not in cfg.MODEL:
        # A LazyConfig file whose ``model`` the registered meta-architecture ``D2KDLazyModel``
        # instantiates: the route by which DefaultPredictor serves LazyConfig models.
        cfg.MODEL.LAZY_CONFIG = ""
    if "ALLOW_PICKLE" not in cfg.MODEL:
        # MODEL.WEIGHTS may be a pickle of arbitrary objects (which can run code when loaded).
        # Off: d2kd's loaders read arrays, tensors and plain containers only, and D2KDLazyModel
        # refuses such a file before DefaultPredictor's stock loader would unpickle it.
        cfg.MODEL.ALLOW_PICKLE = False
    if "DISTILL" not in cfg.MODEL:
        cfg.MODEL.DISTILL = CN()
        cfg.MODEL.DISTILL.TEACHER = CN()
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = ""
        cfg.MODEL.DISTILL.TEACHER.WEIGHTS = ""
        cfg.MODEL.DISTILL.TEACHER.OPTS = []
        # {registered distiller name: {keyword arguments}}; e.g.
        # METHODS: {FeatureImitation: {in_features: [p3, p4], weight: 1.0}}
        cfg.MODEL.DISTILL.METHODS = CN(new_allowed=True)
    if "ALLOW_PICKLE" not in cfg.MODEL.DISTILL.TEACHER:
        # The teacher's WEIGHTS likewise (build_teacher(allow_pickle=...); LazyConfig:
        # model.teacher.allow_pickle).
        cfg.MODEL.DISTILL.TEACHER.ALLOW_PICKLE = False
    return cfg
