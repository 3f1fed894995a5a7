"""The installed package depends on no script, and the scripts on no sys.path edit (issue #22,
item 6): the benchmark harness lives in tools/benchmarking/, next to the scripts that use it;
the tools import d2kd as the installed package and their siblings from tools/, which Python puts
first on sys.path when it runs a tool as a script."""
import ast
import os
import re
import subprocess
import sys

import pytest
from conftest import D2_MISSING, REPO, TOOLS, tool_env

PACKAGE = os.path.join(REPO, "d2kd")

#: Calls that load or run a file by its path instead of importing a module.
LOADS_BY_PATH = {"spec_from_file_location", "SourceFileLoader", "SourcelessFileLoader", "load_source",
                 "run_path", "run_module", "exec", "exec_module", "execfile"}


def _sources(folder):
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as f:
                    yield os.path.relpath(path, REPO), ast.parse(f.read(), path)


def _name(node) -> str:
    """``a.b.c`` of a Name/Attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def test_no_tool_edits_sys_path():
    """Not ``sys.path.insert``, ``append`` or an assignment, nor ``site.addsitedir``: the tools
    import the installed d2kd, and tools/ (their siblings, the harness) is sys.path[0] already."""
    found = {}
    for path, tree in _sources(TOOLS):
        for node in ast.walk(tree):  # outer nodes first: `sys.path.insert` before its `sys.path`
            name = _name(node) if isinstance(node, ast.Attribute) else ""
            if name == "sys.path" or name.startswith("sys.path.") or name == "site.addsitedir":
                found.setdefault(f"{path}:{node.lineno}", name)
    assert not found, "\n".join(f"{where}: {name}" for where, name in found.items())


def test_the_package_imports_no_script_and_loads_no_file_by_path():
    assert not os.path.exists(os.path.join(PACKAGE, "benchmark")), "the harness is tools/benchmarking/"
    found = []
    for path, tree in _sources(PACKAGE):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            else:
                mods = []
            for mod in mods:
                if mod.split(".")[0] in ("runpy", "benchmarking", "tools") or re.search(r"(^|\.)benchmark(\.|$)", mod):
                    found.append(f"{path}:{node.lineno}: imports {mod}")
            if isinstance(node, ast.Call):
                fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if fn in LOADS_BY_PATH:
                    found.append(f"{path}:{node.lineno}: calls {fn}")
    assert not found, "\n".join(found)


def test_benchmark_plan_is_the_same_from_any_folder(tmp_path, capsys, monkeypatch):
    """``tools/benchmark.py --quick --list`` prints the same plan from the repository root and from
    another folder: its jobs run in the clone's root (their configs relative to it), the
    measurements as the harness module ``python -m benchmarking.measure``. From the other folder
    the command line runs as a script (tools/ first on its sys.path); from the root, its main(argv)
    runs in this process (the same plan, without a second interpreter and detectron2 start)."""
    pytest.importorskip("detectron2", reason=D2_MISSING)
    import importlib.util

    args = ["--quick", "--list", "--output", str(tmp_path / "bench"), "--teacher-root", str(tmp_path / "teachers")]
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "benchmark.py"), *args], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300, env=tool_env(PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, r.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(TOOLS, "benchmark.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.chdir(REPO)
    capsys.readouterr()
    assert tool.main(args) == {}
    outs = [capsys.readouterr().out, r.stdout]
    assert outs[0] == outs[1]
    jobs = re.findall(r"^  (\S+)  deps=", outs[0], flags=re.M)
    assert "teacher:retinanet_teacher_12000" in jobs and "kd:retinanet:fgfi:s1" in jobs, outs[0]
    assert "--config-file configs/shapes/retinanet_teacher.py" in outs[0]
    measure = [ln.split(" -m benchmarking.measure ")[1].split()[0] for ln in outs[0].splitlines()
               if " -m benchmarking.measure " in ln]
    assert set(measure) == {"overhead", "memory", "cost"}, outs[0]


def test_a_tool_imports_its_sibling_from_any_folder(tmp_path):
    """tools/visualize_predictions.py imports tools/visualize_fgfi_mask.py as a module, run from
    a folder that is not the clone."""
    pytest.importorskip("detectron2", reason=D2_MISSING)
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "visualize_predictions.py"), "--help"], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300, env=tool_env(PYTHONWARNINGS="ignore"))
    assert r.returncode == 0 and "--from-benchmark" in r.stdout, r.stderr[-3000:]
