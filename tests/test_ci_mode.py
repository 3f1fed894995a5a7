"""CI's mode (``D2KD_REQUIRE_DETECTRON2=1``, set by ``.ci/run``): a test skipped because
detectron2 is missing is an error, so a green CI always means the whole suite ran.

Each case runs pytest in a subprocess on two small test files, with this suite's conftest, and
a ``detectron2`` package on the path that fails to import (as a missing or broken install does).
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, REQUIRE_D2_ENV

MODULE_LEVEL = """
import pytest
from conftest import D2_MISSING
pytest.importorskip("detectron2", reason=D2_MISSING)

def test_needs_detectron2_module():
    pass
"""

FIXTURE = """
def test_needs_detectron2_fixture(d2):
    pass

def test_plain():
    pass
"""


def run_pytest(tmp_path, env_value):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), suite / "conftest.py")
    (suite / "test_module_level.py").write_text(textwrap.dedent(MODULE_LEVEL))
    (suite / "test_fixture.py").write_text(textwrap.dedent(FIXTURE))
    hidden = tmp_path / "hidden"
    (hidden / "detectron2").mkdir(parents=True)
    (hidden / "detectron2" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'detectron2' (hidden by the test)\", name='detectron2')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(hidden))
    env.pop(REQUIRE_D2_ENV, None)
    if env_value is not None:
        env[REQUIRE_D2_ENV] = env_value
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", "--continue-on-collection-errors", "--rootdir", str(suite), str(suite)],
        cwd=str(suite), capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.mark.parametrize("value", [None, "0"])
def test_missing_detectron2_is_a_skip_outside_ci(tmp_path, value):
    proc = run_pytest(tmp_path, env_value=value)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 2 skipped" in proc.stdout
    assert "detectron2 is not importable" in proc.stdout


def test_missing_detectron2_is_an_error_in_ci_mode(tmp_path):
    proc = run_pytest(tmp_path, env_value="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    summary = proc.stdout.strip().splitlines()[-1]
    assert "1 passed, 2 errors" in summary and "skipped" not in summary, out
    # Both routes are errors: the module-level importorskip (at collection) and the fixture.
    assert "ERROR test_module_level.py" in out
    assert "ERROR test_fixture.py::test_needs_detectron2_fixture" in out
    assert f"{REQUIRE_D2_ENV} is set, so a test skipped for a missing detectron2 is an error" in out

