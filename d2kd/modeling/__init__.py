from . import backbone, meta_arch  # noqa: F401  (registration side effects)
