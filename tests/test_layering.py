"""The layering of docs/internals.md, read from the source with ``ast`` (imports inside functions
count too): ``protocol`` imports neither ``client``, ``node`` nor ``devnet``; ``client`` and
``node`` never import each other; ``node`` never imports ``devnet``; ``client`` reaches
``devnet`` only from inside a function (the ``tallystick demo`` command), so importing the SDK
never loads the dev harness.

The exceptions are named here with their reason; a new one fails until it is argued for.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "client", "node", "devnet")  # folder = tallystick.<folder>

FORBIDDEN = {
    "protocol": {"client", "node", "devnet"},
    "client": {"node"},
    "node": {"client", "devnet"},
    "devnet": set(),  # the dev harness drives everything
}
# (importing file, imported package) -> why the rule does not hold there.
ALLOWED = {
    ("client/_node_entry.py", "node"): (
        "the tallystick-node script starts in the client package every install has, so a base "
        "install prints one line naming the node extras instead of a traceback"
    ),
    ("client/_audit.py", "node"): (
        "an audit reruns the listed weights: Reference.load uses the node's model loader, so "
        "both sides load a weights file or GGUF into the same tensors"
    ),
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    package: str  # the tallystick package imported: protocol, client, node or devnet
    in_function: bool


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "tallystick" and parts[1] in PACKAGES:
        return parts[1]
    return None


def _absolute(node: ast.ImportFrom, file: Path) -> str:
    if not node.level:
        return node.module or ""
    # A relative import: resolve it against the file's own package (tallystick.<folder>...).
    parts = ["tallystick", *file.relative_to(ROOT).with_suffix("").parts]
    base = parts[: len(parts) - node.level]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(file: Path, source: str | None = None) -> list[Import]:
    text = file.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(file))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, file)
            # "from tallystick import node" names the package in the alias.
            modules = [module] + [
                f"{module}.{a.name}" for a in node.names if module == "tallystick"
            ]
        for module in modules:
            package = _package_of(module)
            if package is not None:
                rel = str(file.relative_to(ROOT))
                found.append(Import(rel, getattr(node, "lineno", 0), package, in_function))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _all_imports() -> list[Import]:
    return [
        imp for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")) for imp in _imports(f)
    ]


def _owner(file: str) -> str:
    return file.split("/", 1)[0]


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return _all_imports()


def test_the_scan_sees_the_imports_it_must_judge(imports: list[Import]) -> None:
    # Guards the test itself: absolute, relative and function-level imports are all found.
    seen = {(i.file, i.package, i.in_function) for i in imports}
    assert ("client/_node_entry.py", "node", True) in seen
    assert ("client/_wallet.py", "protocol", False) in seen
    assert any(i.file.startswith("client/_gateway/") and i.package == "client" for i in imports)


def _broken(imports: list[Import]) -> list[str]:
    return [
        f"{i.file}:{i.line} imports tallystick.{i.package}"
        for i in imports
        if i.package in FORBIDDEN[_owner(i.file)] and (i.file, i.package) not in ALLOWED
    ]


def test_no_package_imports_a_layer_it_must_not(imports: list[Import]) -> None:
    assert _broken(imports) == []


def test_every_allowed_exception_is_still_needed(imports: list[Import]) -> None:
    used = {(i.file, i.package) for i in imports}
    assert set(ALLOWED) <= used, "drop the exceptions that no longer occur"


def test_the_sdk_reaches_devnet_only_from_inside_functions(imports: list[Import]) -> None:
    at_import = [
        f"{i.file}:{i.line}"
        for i in imports
        if _owner(i.file) == "client" and i.package == "devnet" and not i.in_function
    ]
    assert at_import == []


def test_the_rules_catch_forbidden_imports_of_every_form() -> None:
    # Guards the test itself on a module that is not in the tree.
    probe = ROOT / "protocol" / "_probe.py"
    source = (
        "import tallystick.node.cli\n"
        "from tallystick import devnet\n"
        "def f():\n"
        "    from ..client import Tallystick\n"
        "from . import _errors\n"
    )
    found = _imports(probe, source)
    assert [(i.package, i.in_function) for i in found] == [
        ("node", False),
        ("devnet", False),
        ("client", True),
        ("protocol", False),
    ]
    assert len(_broken(found)) == 3
