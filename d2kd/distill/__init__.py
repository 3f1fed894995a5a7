"""Distillation methods, one per file, all registered in ``DISTILLER_REGISTRY``."""
from .base import DISTILLER_REGISTRY, Distiller, KDSchedule  # noqa: F401
from .feature_imitation import FeatureImitation  # noqa: F401
from .soft_label import SoftLabelKD  # noqa: F401
from .fgfi import FGFI  # noqa: F401
from .lshfm import LSHFM  # noqa: F401
from .adl import ADL  # noqa: F401
from .gkd import GKD  # noqa: F401
from .chen2017 import Chen2017  # noqa: F401
from .pkd import PKD  # noqa: F401
from .cwd import CWD  # noqa: F401
from .mgd import MGD  # noqa: F401
from .fgd import FGD  # noqa: F401
