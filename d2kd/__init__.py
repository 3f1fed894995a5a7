"""d2kd: knowledge distillation for object detection, built on Detectron2.

Importing this package registers everything d2kd adds to Detectron2's registries: the
distillation meta-architectures, the extra backbones, the distillers and the datasets.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "d2kd needs detectron2, which is not installed (it is not on PyPI). Install it from its "
        "official repository, e.g. `git clone https://github.com/facebookresearch/detectron2 && "
        "python -m pip install --no-build-isolation -e detectron2` (it compiles against the "
        "installed torch); see README.md, section Install."
    ) from e

__version__ = "0.1.0"

from . import data  # noqa: F401,E402  (registers datasets)
from . import modeling  # noqa: F401,E402  (registers meta-architectures and backbones)
from . import distill  # noqa: F401,E402  (registers distillers)
