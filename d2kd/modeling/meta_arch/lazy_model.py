"""Serve a LazyConfig-defined model through yacs-only tools such as ``DefaultPredictor``.

``DefaultPredictor(cfg)`` calls ``build_model(cfg)``, i.e.
``META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)``. Registering this builder under
the name ``D2KDLazyModel`` lets a yacs config say "instantiate ``model`` of the LazyConfig file
``cfg.MODEL.LAZY_CONFIG``"; the model built is the stock Detectron2 class that file names, so
``DefaultPredictor`` then loads ``cfg.MODEL.WEIGHTS`` into it as usual.

That stock loader unpickles a ``.pkl`` with plain ``pickle.load`` (code in the file runs), so
``cfg.MODEL.WEIGHTS`` is read here first the way d2kd reads every weight file
(:func:`d2kd.checkpoint.check_weights_file`): a file that needs more than arrays, tensors and
plain containers is refused unless ``MODEL.ALLOW_PICKLE`` is set.
"""
import logging
import os

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY

from ...checkpoint import OPT_IN_PREDICTOR, check_weights_file

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
def D2KDLazyModel(cfg):
    path = cfg.MODEL.LAZY_CONFIG
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.LAZY_CONFIG must name the LazyConfig file of the model to serve; got '{path}'"
        )
    weights = cfg.MODEL.WEIGHTS
    if weights:
        if cfg.MODEL.get("ALLOW_PICKLE", False):
            logger.warning(
                "MODEL.ALLOW_PICKLE: %s is loaded unchecked; a pickle can run arbitrary code, "
                "only do this for files you trust",
                weights,
            )
        else:
            check_weights_file(weights, opt_in=OPT_IN_PREDICTOR)
    return instantiate(LazyConfig.load(path).model)
