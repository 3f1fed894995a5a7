"""Fail clearly where ``import d2kd`` found a folder named ``d2kd`` instead of this package.

A script run in the folder that contains the clone (``python my_script.py`` next to ``d2kd/``)
has that folder first on ``sys.path``; the clone's root has no ``__init__.py``, so Python makes
it a namespace package and ``d2kd/__init__.py`` never runs: none of d2kd's datasets, models or
distillers is registered. Its submodules still import (an editable install serves them), so the
failure comes later and names none of this, e.g. ``KeyError: "No object named 'D2KDLazyModel'
found in 'META_ARCH' registry!"``, ``Dataset 'shapes_train' is not registered`` or a circular
import. A namespace package runs no code, so the check lives here, imported first by the
modules a script enters through (``d2kd.data``, ``d2kd.modeling`` — hence every config and
``d2kd.teacher``/``d2kd.distill``/``d2kd.engine`` —, ``d2kd.export``, ``d2kd.config``).

Importing this module runs :func:`check_package_import`.
"""
import os
import sys

__all__ = ["check_package_import"]

#: The folder of the real package (this file's).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def check_package_import() -> None:
    """Raise ImportError if ``sys.modules["d2kd"]`` is a namespace package (no ``__file__``)."""
    pkg = sys.modules.get("d2kd")
    if pkg is None or getattr(pkg, "__file__", None) is not None:
        return
    folders = [os.path.abspath(p) for p in getattr(pkg, "__path__", [])]
    shown = ", ".join(folders) or "a folder"
    raise ImportError(
        f"'import d2kd' found the folder {shown} (no __init__.py, so Python made it a namespace "
        f"package) instead of the d2kd package in {PACKAGE_DIR}, so none of d2kd's datasets, "
        f"models or distillers is registered. This happens when a script runs in the folder "
        f"that contains a folder named d2kd (e.g. the clone): run it from another folder, or "
        f"rename that folder"
    )


check_package_import()
