from .. import import_check  # noqa: F401  (first: a clear error where "d2kd" is a folder, not the package)
from . import anchor_generator, backbone, meta_arch  # noqa: F401  (registration side effects)
