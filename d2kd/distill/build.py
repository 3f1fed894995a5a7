"""Building distillers from a yacs config (LazyConfig files instantiate them directly)."""
from typing import List

from .base import DISTILLER_REGISTRY, Distiller


def build_distillers_from_cfg(cfg) -> List[Distiller]:
    """``cfg.MODEL.DISTILL.METHODS``: ``{RegisteredName: {UPPER_OR_lower_kwarg: value}}``."""
    distillers = []
    for name, kwargs in cfg.MODEL.DISTILL.METHODS.items():
        try:
            cls = DISTILLER_REGISTRY.get(name)
        except KeyError:
            raise KeyError(
                f"MODEL.DISTILL.METHODS names an unknown distiller '{name}'; registered: "
                f"{sorted(k for k, _ in DISTILLER_REGISTRY)}"
            ) from None
        own = {k.lower(): v for k, v in (kwargs or {}).items()}
        distillers.append(cls(**{**cls.context_from_yacs(cfg), **own}))
    return distillers
