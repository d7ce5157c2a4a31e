"""The node's modules import each other without a cycle (issue 12 item 3).

Imports under ``TYPE_CHECKING`` count too: ``_app`` <-> ``_serving`` through ``NodeState``
was one. Imports inside functions (the engines, loaded lazily) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tallystick.node

NODE = Path(tallystick.node.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(NODE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for statement in ast.parse(path.read_text()).body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found |= {target} & modules
                found |= {f"{target}.{alias.name}" for alias in node.names} & modules
    return found


def test_no_module_of_the_node_imports_itself_back() -> None:
    paths = sorted(NODE.rglob("*.py"))
    modules = {_module(p) for p in paths}
    graph = {_module(p): _imports(p, modules) for p in paths}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, " -> ".join([*path[path.index(module) :], module])
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert "node._routes" in graph["node._app"]  # the walk sees the request path's imports
