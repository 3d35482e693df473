"""The package's import graph: no module reaches itself through its imports, and
the layers point one way (core and supernets below the Flower layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import flwr_pfedrlnas

ROOT = Path(flwr_pfedrlnas.__file__).parent
PACKAGE = "flwr_pfedrlnas"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its text (module level
    and inside functions alike: a lazy import hides a cycle, it does not remove it).
    Imports under ``if TYPE_CHECKING:`` are left out: they never run."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                # The longest package module the name stands for (a name imported
                # from a module is that module; a submodule imported is itself).
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None.

    A package's own ``__init__`` importing its submodules is not a cycle through
    the package: the edge from a submodule to its parent package is left out."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_finds_a_planted_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    # A submodule importing its own package's __init__ is not a cycle.
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None


def test_import_graph_resolves_relative_and_from_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text(
        f"from typing import TYPE_CHECKING\nfrom {PACKAGE}.sub import a\n"
        f"if TYPE_CHECKING:\n    from {PACKAGE} import c\n"
    )
    (pkg / "c.py").write_text(f"import {PACKAGE}.b\n")
    graph = import_graph(pkg)
    assert graph[f"{PACKAGE}.sub.a"] == {f"{PACKAGE}.b"}
    assert graph[f"{PACKAGE}.b"] == {f"{PACKAGE}.sub", f"{PACKAGE}.sub.a"}
    assert find_cycle(graph) == [f"{PACKAGE}.{m}" for m in ("b", "sub", "sub.a", "b")]


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_core_and_supernets_import_nothing_above_them():
    above = (f"{PACKAGE}.flower", f"{PACKAGE}.baselines", f"{PACKAGE}.experiments")
    for module, edges in import_graph().items():
        if module.startswith((f"{PACKAGE}.core", f"{PACKAGE}.supernets")):
            wrong = sorted(e for e in edges if e.startswith(above))
            assert not wrong, f"{module} imports {wrong}"
