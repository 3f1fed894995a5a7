from . import builtin  # noqa: F401  (registers datasets)
