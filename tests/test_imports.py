"""The package's import graph (read from the source with ast, nothing imported): no cycles,
and torch imported at module level only inside hpspec/engine/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hpspec"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module, names) for each import that runs (not under ``if TYPE_CHECKING``); with
    ``module_level_only``, not those inside functions either."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(child: ast.AST) -> None:
        if isinstance(child, ast.Import):
            found.extend((alias.name, []) for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            found.append((child.module, [alias.name for alias in child.names]))
        elif module_level_only and isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        else:
            visit(child)

    visit(tree)
    return found


def _graph(module_level_only: bool) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """hpspec module -> the hpspec modules it imports, and -> the outside top-level packages."""
    sources = {_module_name(p): ast.parse(p.read_text(), str(p)) for p in ROOT.rglob("*.py")}
    inner: dict[str, set[str]] = {}
    outer: dict[str, set[str]] = {}
    for name, tree in sources.items():
        inner[name], outer[name] = set(), set()
        for module, names in _imports(tree, module_level_only):
            if module.split(".")[0] != "hpspec":
                outer[name].add(module.split(".")[0])
                continue
            # ``from hpspec.x import y``: y is a module when hpspec/x/y.py exists
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in sources]
            if len(targets) < len(names) or not names:
                targets.append(module)
            inner[name].update(t for t in targets if t != name and t in sources)
    return inner, outer


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


@pytest.mark.parametrize("module_level_only", [True, False], ids=["import-time", "any"])
def test_no_import_cycle(module_level_only):
    # Lazy imports inside functions count too: a cycle there is still a tangle of modules
    # (the runner and the stacked engine used to import each other that way). A package's
    # own __init__ is left out: importing hpspec.x runs it anyway, and it only re-exports.
    inner, _ = _graph(module_level_only)
    graph = {k: {v for v in vs if v != "hpspec"} for k, vs in inner.items() if k != "hpspec"}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_torch_is_imported_at_module_level_only_inside_the_engine():
    _, outer = _graph(module_level_only=True)
    offenders = sorted(m for m, pkgs in outer.items()
                       if "torch" in pkgs and not m.startswith("hpspec.engine."))
    assert offenders == []
    assert "torch" not in outer["hpspec.engine"]  # the subpackage itself stays cheap


def test_the_checks_see_what_they_claim_to():
    # The walker must find the imports it is meant to police, or the tests above pass vacuously.
    inner, outer = _graph(module_level_only=True)
    assert "torch" in outer["hpspec.engine.runner"]
    assert "hpspec.engine.common" in inner["hpspec.engine.stacked"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    tree = ast.parse("import torch\nif TYPE_CHECKING:\n    import numpy\n"
                     "def f():\n    import pandas\n")
    assert [m for m, _ in _imports(tree, True)] == ["torch"]
    assert [m for m, _ in _imports(tree, False)] == ["torch", "pandas"]
