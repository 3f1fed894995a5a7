"""One owner of the KD loss-key format ``loss_kd_<name>_<term>`` (d2kd/distill/base.py): the
meta-architecture builds its keys with it, the non-finite guard reads them back with it, and no
other module of the package spells the format."""
import ast
import os

import pytest
from conftest import D2_MISSING, REPO, TINY, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402

from d2kd.distill.base import KD_LOSS_PREFIX, is_kd_loss_key, kd_loss_key, parse_kd_loss_key  # noqa: E402
from d2kd.engine.nonfinite import find_distiller  # noqa: E402

OWNER = os.path.join("d2kd", "distill", "base.py")


def test_a_key_reads_back_as_its_name_and_term():
    assert kd_loss_key("fitnet", "p3") == "loss_kd_fitnet_p3"
    assert parse_kd_loss_key("loss_kd_fitnet_p3", ["fitnet"]) == ("fitnet", "p3")
    # names and terms with underscores: the longest name that fits
    assert parse_kd_loss_key(kd_loss_key("fgfi_x", "p3_a"), ["fgfi", "fgfi_x"]) == ("fgfi_x", "p3_a")
    assert parse_kd_loss_key(kd_loss_key("fgfi", "x_p3"), ["fgfi"]) == ("fgfi", "x_p3")
    assert parse_kd_loss_key("loss_kd_other_p3", ["fitnet"]) is None  # no such distiller
    assert parse_kd_loss_key("loss_cls", ["fitnet"]) is None  # a detector loss
    assert is_kd_loss_key("loss_kd_fitnet_p3") and not is_kd_loss_key("loss_cls")


def _format_spellings(path: str, source: str):
    """Lines of ``source`` whose code (not a docstring or comment) spells the key prefix."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        f"{path}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and KD_LOSS_PREFIX in node.value
        and id(node) not in docstrings
    ]


def test_only_the_owner_spells_the_key_format():
    found = []
    for root, _, files in os.walk(os.path.join(REPO, "d2kd")):
        for name in sorted(files):
            path = os.path.relpath(os.path.join(root, name), REPO)
            if name.endswith(".py") and path != OWNER:
                with open(os.path.join(REPO, path), encoding="utf-8") as f:
                    found += _format_spellings(path, f.read())
    assert not found, f"build or parse KD loss keys with d2kd.distill.base.kd_loss_key/parse_kd_loss_key: {found}"


def test_the_models_keys_read_back_to_their_distillers(tmp_path):
    """The keys a distillation model returns, each found back (distiller and term) by the
    non-finite guard."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    teacher = str(tmp_path / "teacher.pth")
    save_random_weights("configs/shapes/retinanet_teacher.py", teacher)
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load("configs/shapes/retinanet_fitnet.py"), [*TINY, f"model.teacher.weights={teacher}"]
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    with EventStorage(10_000):
        losses = model(batch)
    kd = sorted(k for k in losses if is_kd_loss_key(k))
    (d,) = model.distillers
    assert kd == sorted(kd_loss_key(d.name, level) for level in d.in_features)
    for key in kd:
        assert find_distiller(model, key) == (0, d, key[len(kd_loss_key(d.name, "")):])
    assert find_distiller(model, "loss_cls") is None
