"""``import d2kd`` beside a folder named ``d2kd`` (issue 27, item 8): a script run in the folder
that contains the clone imported the clone as a namespace package, ``d2kd/__init__.py`` never ran,
and serving a model failed later with ``KeyError: "No object named 'D2KDLazyModel' found in
'META_ARCH' registry!"``. Every entry a script uses now says what happened and the fix."""
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import D2_MISSING, REPO

pytest.importorskip("detectron2", reason=D2_MISSING)

#: What ``pip install -e .`` (the README's install) adds to ``sys.meta_path`` (setuptools'
#: ``__editable___d2kd_*_finder``): d2kd's modules served from the checkout, without the checkout
#: on ``sys.path``; ``sys.path`` is searched first for ``d2kd`` itself, so a folder named d2kd
#: there shadows the package (a namespace package) while the submodules still import. Put first
#: here, so that the test does not depend on how (or whether) this checkout was installed.
EDITABLE_FINDER = textwrap.dedent(f"""
    import importlib.machinery, importlib.util, os, sys

    PKG = {os.path.join(REPO, "d2kd")!r}

    class EditableFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "d2kd":
                spec = importlib.machinery.PathFinder.find_spec(name)
                if spec is not None:
                    return spec
            elif not name.startswith("d2kd."):
                return None
            base = os.path.join(PKG, *name.split(".")[1:])
            if os.path.isfile(os.path.join(base, "__init__.py")):
                return importlib.util.spec_from_file_location(
                    name, os.path.join(base, "__init__.py"), submodule_search_locations=[base])
            if os.path.isfile(base + ".py"):
                return importlib.util.spec_from_file_location(name, base + ".py")
            return None

    sys.meta_path.insert(0, EditableFinder)
""")

#: Each way in a script takes, tried in turn in one process (a failed import is not cached).
ENTRIES = {
    "predictor": "from d2kd.export import load_predictor_config",
    "trainer": "from d2kd.engine import Trainer",
    "teacher": "from d2kd.teacher import build_teacher",
    "yacs": "from d2kd.config import add_d2kd_config",
    "datasets": "import d2kd.data",
    "config": f"from detectron2.config import LazyConfig; LazyConfig.load({os.path.join(REPO, 'configs/shapes/faster_rcnn_fgfi.py')!r})",
}

SCRIPT = EDITABLE_FINDER + textwrap.dedent("""
    import d2kd

    print("namespace" if getattr(d2kd, "__file__", None) is None else "package", flush=True)
    for name, code in ENTRIES.items():
        try:
            exec(code)
            print(f"{name}: ok", flush=True)
        except Exception as e:
            print(f"{name}: {type(e).__name__}: {e}", flush=True)
""")


def _run(cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout not on sys.path
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    code = f"ENTRIES = {ENTRIES!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    return lines[0], dict(line.split(": ", 1) for line in lines[1:])


@pytest.mark.parametrize("folder", ["clone", "empty"])
def test_a_folder_named_d2kd_is_reported_with_the_fix(tmp_path, folder):
    """cwd holds the clone (a symlink to this checkout) or an empty folder named d2kd."""
    d = tmp_path / "d2kd"
    if folder == "clone":
        d.symlink_to(REPO, target_is_directory=True)
    else:
        d.mkdir()
    kind, results = _run(str(tmp_path))
    assert kind == "namespace"
    expected = (
        f"ImportError: 'import d2kd' found the folder {d} (no __init__.py, so Python made it a "
        f"namespace package) instead of the d2kd package in {os.path.join(REPO, 'd2kd')}, so "
        f"none of d2kd's datasets, models or distillers is registered. This happens when a "
        f"script runs in the folder that contains a folder named d2kd (e.g. the clone): run it "
        f"from another folder, or rename that folder"
    )
    assert results == {name: expected for name in ENTRIES}, results


def test_the_same_script_elsewhere_imports_the_package(tmp_path):
    kind, results = _run(str(tmp_path))
    assert kind == "package" and results == {name: "ok" for name in ENTRIES}, results
