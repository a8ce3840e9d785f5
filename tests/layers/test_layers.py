"""The house's rules, read from the source: layers depend downward only, and no import cycle.

Every ``import`` statement in gfl counts, also those inside functions (a lazy import
still ties two modules together); only imports under ``if TYPE_CHECKING:`` are left out,
since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gfl"

# Lower number = lower layer. A module may import its own layer or lower ones only.
LAYERS = {
    "gfl.errors": 0,
    "gfl.content": 0,
    "gfl.identity": 0,
    "gfl.fl": 1,
    "gfl.net": 2,
    "gfl.chain": 2,
    "gfl.simulate": 2,
    "gfl.scheduler": 3,
    "gfl.node": 4,
    "gfl.cli": 5,
    "gfl.__main__": 6,
    "gfl": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every gfl module this module imports at run time (also lazily)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                yield from (a.name for a in child.names if a.name.split(".")[0] == "gfl")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    target = ".".join([*base, child.module] if child.module else base)
                else:
                    target = child.module or ""
                if target.split(".")[0] != "gfl":
                    continue
                # `from gfl.x import y`: the module gfl.x.y when y is one, else gfl.x itself
                # (a submodule import runs the package's __init__ in every case, as any
                # `from gfl.x.y import z` does: that is not counted as a dependency)
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    yield sub if sub in MODULES else target
            stack.append(child)


MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set(_imports(tree, name, path.name == "__init__.py"))
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


GRAPH = _graph()


def test_every_module_belongs_to_a_layer() -> None:
    for module in GRAPH:
        _layer(module)


def test_layers_depend_downward_only() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in GRAPH.items()
        for t in targets
        if _layer(t) > _layer(m)
    ]
    assert not upward, "\n".join(sorted(upward))


@pytest.mark.parametrize("forbidden", ["gfl.node", "gfl.scheduler", "gfl.net", "gfl.chain"])
def test_the_fl_layer_imports_no_node_scheduler_net_or_chain(forbidden: str) -> None:
    bad = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.startswith("gfl.fl")
        for t in targets
        if t == forbidden or t.startswith(forbidden + ".")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components: any component of two or more modules is a
    cycle (package ``__init__`` re-exports count like any other import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_rules_see_a_planted_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks above can fail: a fake fl module importing the node layer is caught."""
    tree = ast.parse(
        "def f():\n    from gfl.node.node import Node\n    import gfl.fl.spec\n"
        "    from gfl.net import blobs\n"
    )
    found = set(_imports(tree, "gfl.fl.fake", False))
    assert {"gfl.node.node", "gfl.fl.spec", "gfl.net.blobs"} <= found
    assert _layer("gfl.node.node") > _layer("gfl.fl.fake")
