"""The layout's rules, checked on the import graph (grimp, the graph library behind import-linter):
imports inside functions count; `importlib` is not followed, so it is checked by reading the code.

Layers, lowest first: a module imports only from its own layer or lower ones."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="grimp (in the `test` extra) draws the import graph")

REPO = Path(__file__).resolve().parents[1]
LAYERS = [
    ("core", ["ferjax.atomic", "ferjax.registry", "ferjax.jax_setup", "ferjax.nn", "ferjax.cv2_compat",
              "ferjax.images", "ferjax.timing"]),
    ("data", ["ferjax.data"]),
    ("config, weights, metrics", ["ferjax.config", "ferjax.pretrained", "ferjax.convert", "ferjax.eval"]),
    ("inference", ["ferjax.inference", "ferjax.export"]),
    ("train, realtime, curation", ["ferjax.train", "ferjax.realtime", "ferjax.curation"]),
    ("analyzer", ["ferjax.analyzer"]),
    ("tasks", ["ferjax.tasks"]),
    ("front-ends", ["ferjax.serve_batch", "ferjax.serve", "ferjax.cli", "ferjax.bench", "ferjax.bench_torch",
                    "ferjax.serve_bench", "ferjax.serve_attack", "ferjax.probes", "ferjax.run", "ferjax.doctor",
                    "ferjax.web", "ferjax.assets", "ferjax.export_web", "ferjax.serve_local", "ferjax.backend_bench",
                    "ferjax.model_bench"]),
    ("the command", ["ferjax.command", "ferjax.__main__"]),
]
# The only modules that may name ferjax.components / ferjax.experiments: the two loaders.
LOADERS = {"ferjax/registry.py": "ferjax.components", "ferjax/config.py": "ferjax.experiments"}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("ferjax", cache_dir=None)


def _layer_of(module: str) -> tuple[int, str] | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                return i, p
    return None


def _edges(graph):
    """(importer, imported) pairs within ferjax, the root package's own lazy `__getattr__` aside."""
    for m in sorted(graph.modules):
        for t in graph.find_modules_directly_imported_by(m):
            if "ferjax" not in (m, t):
                yield m, t


def _cycles(nodes, edges) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    adj = {n: sorted({b for a, b in edges if a == n and b != n}) for n in nodes}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def test_every_module_has_a_layer(graph):
    assert [m for m in sorted(graph.modules) if m != "ferjax" and _layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer(graph):
    bad = []
    for m, t in _edges(graph):
        (a, pa), (b, pb) = _layer_of(m), _layer_of(t)
        if b > a:
            line = graph.get_import_details(importer=m, imported=t)
            where = f" (line {line[0]['line_number']})" if line else ""
            bad.append(f"{m}{where} [{LAYERS[a][0]}] imports {t} [{LAYERS[b][0]}]")
    assert bad == []


def test_no_import_cycle_between_files(graph):
    edges = list(_edges(graph))
    assert _cycles(sorted(m for m in graph.modules if m != "ferjax"), edges) == []


def test_no_import_cycle_between_folders(graph):
    """Nodes: each sub-package of ferjax and each loose module (as the layout is drawn)."""
    def folder(m: str) -> str:
        return ".".join(m.split(".")[:2])

    edges = {(folder(a), folder(b)) for a, b in _edges(graph) if folder(a) != folder(b)}
    nodes = sorted({folder(m) for m in graph.modules if m != "ferjax"})
    assert _cycles(nodes, edges) == []


def _named_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import, and of every string literal passed to a call (importlib's
    `import_module("...")`, `__import__("...")`)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call):
            out += [(node.lineno, a.value) for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def test_the_framework_never_imports_components_or_experiments():
    """Only `ferjax/registry.py` (load_components) and `ferjax/config.py` (the experiment loader)
    reach the built-in components and the experiment configs."""
    bad = []
    for path in sorted((REPO / "ferjax").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for line, name in _named_modules(ast.parse(path.read_text(), rel)):
            for pkg in ("ferjax.components", "ferjax.experiments"):
                if (name == pkg or name.startswith(pkg + ".")) and LOADERS.get(rel) != pkg:
                    bad.append(f"{rel}:{line} names {name}")
    assert bad == []


def test_components_and_experiments_know_nothing_of_tasks_or_front_ends():
    """registry/ registers components (tasks.py is the one table of tasks); experiments/ holds
    configs. Neither imports a front-end; only registry/tasks.py imports ferjax.tasks."""
    front = [p for p in LAYERS[-1][1]]
    bad = []
    for folder in ("registry", "experiments"):
        for path in sorted((REPO / folder).glob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for line, name in _named_modules(ast.parse(path.read_text(), rel)):
                if not name.startswith("ferjax."):
                    continue
                if any(name == f or name.startswith(f + ".") for f in front):
                    bad.append(f"{rel}:{line} imports front-end {name}")
                if name.startswith("ferjax.tasks") and rel != "registry/tasks.py":
                    bad.append(f"{rel}:{line} imports task module {name}")
    assert bad == []


def test_a_violation_is_caught():
    """The checks can fail: an edge into a higher layer and a two-file cycle are reported."""
    g = grimp.build_graph("ferjax", cache_dir=None)
    g.add_import(importer="ferjax.data.records", imported="ferjax.tasks.evaluate")
    with pytest.raises(AssertionError, match="ferjax.data.records"):
        test_no_module_imports_a_higher_layer(g)
    g = grimp.build_graph("ferjax", cache_dir=None)
    g.add_import(importer="ferjax.tasks.evaluate", imported="ferjax.tasks.curate")
    g.add_import(importer="ferjax.tasks.curate", imported="ferjax.tasks.evaluate")
    with pytest.raises(AssertionError, match="ferjax.tasks.curate"):
        test_no_import_cycle_between_files(g)
