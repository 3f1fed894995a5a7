"""Evaluators d2kd adds to Detectron2's (import them from config files)."""
from .pascal_voc import VOCDetectionEvaluator  # noqa: F401
