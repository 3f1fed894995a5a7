from .distill_fcos import DistillationFCOS  # noqa: F401
from .distill_rcnn import DistillationRCNN  # noqa: F401
from .distill_retinanet import DistillationRetinaNet  # noqa: F401
from .lazy_model import D2KDLazyModel  # noqa: F401
from .ssd import SSD, add_ssd_config  # noqa: F401
from .distill_ssd import DistillationSSD  # noqa: F401
