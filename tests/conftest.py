"""Shared test setup.

Convention: a test module that needs detectron2 starts with

    import pytest
    pytest.importorskip("detectron2", reason=D2_MISSING)   # from conftest: see below

so that, where detectron2 is not importable, the module is skipped with a visible reason
instead of failing at import.
"""
import os

import pytest
import torch

D2_MISSING = (
    "detectron2 is not importable: build it from its repository into this Python "
    "(README.md, Install); tests that need it are skipped"
)

# Two cores: keep each test process to one intra-op thread so parallel work does not thrash.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def d2():
    return pytest.importorskip("detectron2", reason=D2_MISSING)
