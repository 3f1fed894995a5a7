"""Serve a LazyConfig-defined model through yacs-only tools such as ``DefaultPredictor``.

``DefaultPredictor(cfg)`` calls ``build_model(cfg)``, i.e.
``META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)``. Registering this builder under
the name ``D2KDLazyModel`` lets a yacs config say "instantiate ``model`` of the LazyConfig file
``cfg.MODEL.LAZY_CONFIG``"; the model built is the stock Detectron2 class that file names, so
``DefaultPredictor`` then loads ``cfg.MODEL.WEIGHTS`` into it as usual.
"""
import os

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY


@META_ARCH_REGISTRY.register()
def D2KDLazyModel(cfg):
    path = cfg.MODEL.LAZY_CONFIG
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.LAZY_CONFIG must name the LazyConfig file of the model to serve; got '{path}'"
        )
    return instantiate(LazyConfig.load(path).model)
