"""The layering docs/architecture.md promises, checked on the source: model_zoo and data_adapters import
nothing else from the project, flows import only steps, no import cycle (also none hidden inside
functions), and the flow never branches on the task kind."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("flows", "steps", "model_zoo", "data_adapters")


def _modules() -> dict[str, Path]:
    out = {}
    for layer in LAYERS:
        for path in (REPO / layer).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """Every project module a module imports, at module level or inside a function."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]  # fmt: skip
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_layers_import_only_what_they_may():
    graph = _import_graph()
    for name, deps in graph.items():
        layer = name.split(".")[0]
        if layer in ("model_zoo", "data_adapters"):
            assert all(d.startswith(layer) for d in deps), f"{name} imports {sorted(deps)}"
        if layer == "flows":
            assert not [d for d in deps if d.startswith(("model_zoo", "data_adapters"))], name


def test_no_import_cycles():
    assert _cycles(_import_graph()) == []


def test_the_flow_never_branches_on_the_task_kind():
    """No comparison in the flow reads a ``kind`` or names a task ("vla", "text"): the task object decides."""
    tree = ast.parse((REPO / "flows" / "sft_flow.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare | ast.Subscript | ast.Call):
            names = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            names |= {
                n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            }
            assert not names & {"kind", "text", "vla"}, ast.unparse(node)
