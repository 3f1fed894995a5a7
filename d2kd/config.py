"""Config files: the yacs keys that d2kd adds, and building a model from any config file.

d2kd's own experiments are LazyConfig files (``configs/``); the yacs keys make the same models
buildable from a yacs ``CfgNode`` (``DistillationRCNN.from_config``) and let
``DefaultPredictor`` serve a LazyConfig-defined model (``MODEL.LAZY_CONFIG``).
:func:`build_model_from_config_file` builds a model (a teacher, a pseudo-labeller) from a
LazyConfig ``.py``/``.yaml``, a yacs ``.yaml`` or a Detectron2 model-zoo config name.
"""
import os
from typing import Optional, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from detectron2 import model_zoo
from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model

from . import import_check  # noqa: F401  (a clear error where "d2kd" is a folder, not the package)


#: The ``MODEL`` keys :func:`add_d2kd_config` adds (a stock Detectron2 config has none of them).
D2KD_MODEL_KEYS = ("LAZY_CONFIG", "ALLOW_PICKLE", "DISTILL")


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


def resolve_config_file(config_file: str) -> str:
    """A path as given, else a Detectron2 model-zoo name (``COCO-Detection/…yaml``)."""
    if os.path.isfile(config_file):
        return config_file
    try:
        return model_zoo.get_config_file(config_file)
    except RuntimeError:
        raise FileNotFoundError(
            f"teacher config '{config_file}' is neither a file nor a Detectron2 model-zoo config "
            f"name; give a path to its .py/.yaml file"
        ) from None


class _TopLevelLoader(yaml.SafeLoader):
    """Reads a config yaml's keys; the Python objects a saved LazyConfig may hold (e.g.
    ``!!python/object:...ShapeSpec``) are read as None, never constructed."""


_TopLevelLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def is_yacs_yaml(path: str) -> bool:
    """Whether the ``.yaml`` file ``path`` is a yacs config (else a LazyConfig one)."""
    with open(path) as f:
        content = yaml.load(f, Loader=_TopLevelLoader) or {}
    return "_BASE_" in content or "MODEL" in content


def build_model_from_config_file(config_file: str, opts: Sequence[str] = ()) -> nn.Module:
    """Build (but do not load) a model from a LazyConfig ``.py``/``.yaml`` or a yacs ``.yaml``."""
    cfg = load_config_file(config_file, opts)
    if isinstance(cfg, CN):
        cfg.MODEL.DEVICE = "cpu"
        return build_model(cfg)
    return instantiate(cfg.model)


# ---- reading any config file, and what it says ----------------------------------------------
# One loader for "a yacs or a LazyConfig file" (the model builder above and the pseudo-labeller's
# resize both read teacher configs given either way), and one reader of the test-time resize
# (the predictor config of an export, the predictor itself, the pseudo-labeller).
def load_config_file(config_file: str, opts: Sequence[str] = ()) -> Union[CN, DictConfig]:
    """The config in ``config_file`` (a path or a Detectron2 model-zoo name) with ``opts``
    applied: a yacs ``CfgNode`` with d2kd's keys for a yacs ``.yaml`` (``opts`` as
    ``[KEY, value, ...]``), else a LazyConfig (``opts`` as ``key=value``)."""
    path = resolve_config_file(config_file)
    if path.endswith(".yaml") and is_yacs_yaml(path):
        cfg = get_cfg()
        add_d2kd_config(cfg)
        cfg.merge_from_file(path)
        cfg.merge_from_list(list(opts))
        return cfg
    return LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))


def config_test_resize(cfg: Union[CN, DictConfig]) -> Optional[Tuple[int, int]]:
    """``(short_edge, max_size)`` of a loaded config's test-time resize, or None if it has none.

    yacs: ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``. LazyConfig: the first resize among
    ``dataloader.test.mapper.augmentations``: a ``ResizeShortestEdge`` (its first short edge;
    ``max_size`` 1333 if unset, Detectron2's default), or a fixed ``Resize(shape)`` (the SSD
    configs) as ``(min(shape), max(shape))``, exact for square images.
    """
    if isinstance(cfg, CN):
        return int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
    for aug in OmegaConf.select(cfg, "dataloader.test.mapper.augmentations", default=None) or []:
        if not hasattr(aug, "get"):
            continue  # an augmentation object, not a config node
        target = aug.get("_target_", "")
        name = (target if isinstance(target, str) else getattr(target, "__qualname__", "")).rsplit(".", 1)[-1]
        if name == "ResizeShortestEdge":
            short = aug.get("short_edge_length")
            short = short[0] if isinstance(short, (list, tuple)) or OmegaConf.is_list(short) else short
            return int(short), int(aug.get("max_size", 1333))
        if name == "Resize" and "shape" in aug:
            shape = aug.get("shape")
            h, w = (shape, shape) if isinstance(shape, int) else tuple(shape)
            return int(min(h, w)), int(max(h, w))
    return None
