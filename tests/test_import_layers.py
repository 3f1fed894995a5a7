"""d2kd's modules import downward only, and no two of them import each other.

The package is read, not imported: every module's ``import`` statements, at module level and
inside functions alike, are parsed with ``ast`` into a graph of d2kd modules. Only explicit
imports count (importing ``d2kd.records.ssd`` also runs the ``__init__`` of ``d2kd`` and
``d2kd.records``; that is Python's doing, not an edge of the graph).

The layers are :data:`LAYERS`, lowest first: a module may import its own layer and the ones
below it (foundation -> records -> plain models -> teacher -> distill -> distillation
meta-architectures -> engine, export; train_net.py and tools/ above them all).
"""
import ast
import os
from typing import Dict, List, Optional, Set

#: (layer, modules); ``name.*`` is a package and everything in it, a plain name one module.
#: A module belongs to its most specific entry (``d2kd.modeling.meta_arch.ssd`` before
#: ``d2kd.modeling.meta_arch.*``).
LAYERS = [
    ("foundation", [
        "d2kd.import_check", "d2kd.config", "d2kd.checkpoint", "d2kd.runtime", "d2kd.data.*", "d2kd.model_zoo",
        "d2kd.evaluation.*", "d2kd.modeling.backbone.*", "d2kd.modeling.anchor_generator",
        # builds a LazyConfig model for DefaultPredictor; imports only d2kd.checkpoint
        "d2kd.modeling.meta_arch.lazy_model",
    ]),
    ("records", ["d2kd.records.*"]),
    # The plain d2kd SSD fills its training step's d2kd.records.SSDRecord (records/ssd.py reads
    # the model by its interface and does not import it), so it sits right above the records.
    ("plain models", ["d2kd.modeling.meta_arch.ssd"]),
    ("teacher", ["d2kd.teacher"]),
    ("distill", ["d2kd.distill.*"]),
    # The distillation meta-architectures; the package __init__s of d2kd.modeling and of d2kd
    # itself only import (register) what is below them, so they sit here.
    ("distillation meta-architectures", ["d2kd.modeling.meta_arch.*", "d2kd.modeling", "d2kd"]),
    ("engine, export", ["d2kd.engine.*", "d2kd.export", "d2kd.deploy"]),
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- reading the package ------------------------------------------------------------------------
def package_modules(root: str, package: str = "d2kd") -> Dict[str, str]:
    """``{dotted module name: file}`` of every module under ``root/package`` (a package is its
    ``__init__.py``)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        rel = os.path.relpath(dirpath, root).replace(os.sep, ".")
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            name = rel if f == "__init__.py" else f"{rel}.{f[:-3]}"
            out[name] = os.path.join(dirpath, f)
    return out


def _imports(module: str, path: str, known: Set[str]):
    """``(target module, line, inside a function)`` for each import of a d2kd module."""
    tree = ast.parse(open(path).read(), path)
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "d2kd" or alias.name.startswith("d2kd."):
                        yield alias.name, child.lineno, inside
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source == "d2kd" or source.startswith("d2kd."):
                    for alias in child.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{source}.{alias.name}"
                        yield (sub if sub in known else source), child.lineno, inside
            yield from visit(child, inside)

    yield from visit(tree, False)


def import_graph(root: str = REPO):
    """``(graph {module: {imported module: first line}}, in-function imports [(module, line, target)])``."""
    modules = package_modules(root)
    graph: Dict[str, Dict[str, int]] = {m: {} for m in modules}
    in_function = []
    for module, path in modules.items():
        for target, line, inside in _imports(module, path, set(modules)):
            if target != module:
                graph[module].setdefault(target, line)
            if inside and (module, line, target) not in in_function:
                in_function.append((module, line, target))
    return graph, in_function


# ---- judging it ---------------------------------------------------------------------------------
def layer_of(module: str) -> Optional[int]:
    best = None  # (specificity, layer)
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if entry.endswith(".*"):
                pkg = entry[:-2]
                hit = module == pkg or module.startswith(pkg + ".")
                specificity = len(pkg.split("."))
            else:
                hit = module == entry
                specificity = len(entry.split(".")) + 0.5  # a named module beats its package's "*"
            if hit and (best is None or specificity > best[0]):
                best = (specificity, i)
    return None if best is None else best[1]


def find_cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """One cycle (as a path ``a -> b -> ... -> a``) per strongly connected component."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(set(scc))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for scc in sccs:  # a shortest path back to the start, inside the component
        start = min(scc)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w in scc and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def upward_imports(graph) -> List[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            lm, lt = layer_of(module), layer_of(target)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"{module} (line {line}, layer '{LAYERS[lm][0]}') imports {target} "
                           f"(layer '{LAYERS[lt][0]}')")
    return out


# ---- the tests ----------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    graph, _ = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules without a layer (add them to LAYERS in {__file__}): {unplaced}"


def test_no_import_circle():
    graph, _ = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_downward():
    graph, _ = import_graph()
    upward = upward_imports(graph)
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_d2kd_import_inside_a_function():
    """An import inside a function is for an optional heavy dependency (onnx, matplotlib), never
    for a d2kd module: that would hide an import circle or an upward import from a reader."""
    _, in_function = import_graph()
    assert not in_function, "\n".join(f"{m} line {line}: imports {t} inside a function" for m, line, t in in_function)


def test_the_checker_finds_a_circle_and_an_upward_import(tmp_path):
    """The graph reader itself: relative and absolute, module-level and in-function imports."""
    pkg = tmp_path / "d2kd"
    (pkg / "records").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime.py").write_text("def f():\n    from .engine import trainer\n")
    (pkg / "records" / "__init__.py").write_text("from ..teacher import Teacher\n")
    (pkg / "teacher.py").write_text("from d2kd.records import X\n")
    (pkg / "engine").mkdir()
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "trainer.py").write_text("from .. import runtime\n")
    graph, in_function = import_graph(str(tmp_path))
    assert graph["d2kd.runtime"] == {"d2kd.engine.trainer": 2}
    assert graph["d2kd.engine.trainer"] == {"d2kd.runtime": 1}
    assert in_function == [("d2kd.runtime", 2, "d2kd.engine.trainer")]
    cycles = sorted(find_cycles(graph))
    assert cycles == [["d2kd.engine.trainer", "d2kd.runtime", "d2kd.engine.trainer"],
                      ["d2kd.records", "d2kd.teacher", "d2kd.records"]]
    upward = upward_imports(graph)
    assert len(upward) == 2 and upward[0].startswith("d2kd.records (line 1, layer 'records') imports d2kd.teacher")
    assert upward[1].startswith("d2kd.runtime (line 2, layer 'foundation') imports d2kd.engine.trainer")
