"""One loader for "a yacs or a LazyConfig file" (d2kd.config.load_config_file) and one reader of
a config's test-time resize (d2kd.config.config_test_resize), used by the model builder, the
export's predictor config, the predictor and the pseudo-labeller alike."""
import ast
import os

import pytest
from conftest import D2_MISSING, REPO, YACS_ZOO_RETINANET

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import CfgNode, LazyConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from d2kd.config import config_test_resize, load_config_file  # noqa: E402
from d2kd.data.pseudo_labels import teacher_test_resize  # noqa: E402

OWNER = os.path.join("d2kd", "config.py")
#: Builds the yacs SSD mapper's resize from the config (as Detectron2's build_augmentation does):
#: it defines the test-time resize, it does not read it back.
DEFINES = os.path.join("d2kd", "data", "ssd_augmentation.py")


def test_a_yacs_file_or_name_loads_as_yacs_with_d2kds_keys():
    cfg = load_config_file(YACS_ZOO_RETINANET, ["INPUT.MIN_SIZE_TEST", 600])
    assert isinstance(cfg, CfgNode) and "DISTILL" in cfg.MODEL
    assert config_test_resize(cfg) == (600, 1333)


def test_a_lazyconfig_file_loads_as_lazyconfig_with_its_overrides():
    cfg = load_config_file("configs/shapes/retinanet_student.py", ["train.max_iter=7"])
    assert isinstance(cfg, DictConfig) and cfg.train.max_iter == 7


@pytest.mark.parametrize(
    "config, expected",
    [
        ("configs/shapes/retinanet_teacher.py", (128, 1333)),  # ResizeShortestEdge, max_size unset
        ("configs/shapes/ssd_student.py", (128, 128)),  # Resize((128, 128))
        ("configs/common/schedule.py", None),  # no dataloader
    ],
)
def test_the_test_resize_of_a_lazyconfig(config, expected):
    assert config_test_resize(LazyConfig.load(config)) == expected


def test_the_pseudo_labeller_resizes_as_the_teachers_test_mapper():
    """With the one reader, an SSD teacher labels at its own square size (before: Detectron2's
    800/1333 fallback, the LazyConfig branch knew only ResizeShortestEdge)."""
    assert teacher_test_resize("configs/shapes/ssd_teacher.py") == (128, 128)
    assert teacher_test_resize("configs/shapes/retinanet_teacher.py") == (128, 1333)
    assert teacher_test_resize(YACS_ZOO_RETINANET) == (800, 1333)
    assert teacher_test_resize("configs/shapes/retinanet_teacher.py", ["dataloader.test.mapper.augmentations=[]"]) == (800, 1333)


def _resize_reads(source: str):
    """Lines that read a resize setting: ``x.MIN_SIZE_TEST``/``MAX_SIZE_TEST``/``short_edge_length``
    (loads, not stores) or the string ``"short_edge_length"`` outside a docstring."""
    tree = ast.parse(source)
    names = ("MIN_SIZE_TEST", "MAX_SIZE_TEST", "short_edge_length")
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.ctx, ast.Load):
            yield node.lineno
        elif isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings:
            yield node.lineno


def test_only_d2kd_config_reads_the_test_resize():
    found = []
    for root, _, files in os.walk(os.path.join(REPO, "d2kd")):
        for name in sorted(files):
            path = os.path.relpath(os.path.join(root, name), REPO)
            if name.endswith(".py") and path not in (OWNER, DEFINES):
                with open(os.path.join(REPO, path), encoding="utf-8") as f:
                    found += [f"{path}:{line}" for line in _resize_reads(f.read())]
    assert not found, f"read the test-time resize with d2kd.config.config_test_resize: {found}"
