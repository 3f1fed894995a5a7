"""The installed package has no test-only switches: the faults the reliability tests need are
patched in from tests/fault_injection.py, and d2kd reads no environment variable of its own."""
import ast
import os

from conftest import REPO
from fault_injection import ENV_NAMES

PACKAGE = os.path.join(REPO, "d2kd")


def _sources():
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, REPO), f.read()


def _is_environ(node) -> bool:
    """``os.environ`` or a bare ``environ``."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def environment_reads(source: str):
    """The names of the environment variables ``source`` reads (``os.environ.get(X)``,
    ``os.environ[X]``, ``X in os.environ``, ``os.getenv(X)``), a module-level string constant
    resolved to its value; ``None`` for a name this cannot tell."""
    tree = ast.parse(source)
    constants = {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for t in node.targets
        if isinstance(t, ast.Name)
    }

    def name(arg):
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, ast.Name):
            return constants.get(arg.id)
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if isinstance(f, ast.Attribute) and (
                (f.attr in ("get", "pop", "setdefault") and _is_environ(f.value)) or f.attr == "getenv"
            ):
                yield name(node.args[0])
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            yield name(node.slice)
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            yield name(node.left)


def test_the_reader_finds_a_switch():
    found = list(environment_reads('import os\nX = "D2KD_DEBUG_X"\nif os.environ.get(X, ""): pass\n'))
    assert found == ["D2KD_DEBUG_X"]


def test_the_package_reads_no_switch_of_its_own():
    reads = {path: list(environment_reads(text)) for path, text in _sources()}
    unknown = {path: names for path, names in reads.items() if None in names}
    assert not unknown, f"environment variables read under a name this test cannot resolve: {unknown}"
    own = {path: [n for n in names if n.startswith("D2KD_")] for path, names in reads.items()}
    own = {path: names for path, names in own.items() if names}
    assert not own, f"d2kd reads its own environment switches (patch them in from tests/ instead): {own}"


def test_no_debug_or_fault_injection_name_in_the_package():
    for path, text in _sources():
        for name in ("D2KD_DEBUG", *ENV_NAMES, "InjectedFault", "FaultInjection"):
            assert name not in text, f"{path} mentions {name}: test-only faults belong in tests/fault_injection.py"
