"""The package's structure, checked from the source: layers import only downwards, no module
imports another of stemma's inside a function (but the CLI's command loader), and the import
graph has no cycle.

Layers, lowest first (`registry/` folders, then the packages above it):
errors < rules < records < store < versions < pipeline < check < query < publish
< {lineage, migration} < cli. `lineage` and `migration` are siblings: neither imports the other.
`stemma.registry` itself re-exports `Registry`, `StemmaError` and the records lazily; inside
`registry/` only `__version__` and `StemmaError` may come from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "lineage", "migration", "cli", "schemas")
RANK = {
    "schemas": 0,
    "registry.errors": 0,
    "registry.rules": 1,
    "registry.records": 2,
    "registry.store": 3,
    "registry.versions": 4,
    "registry.pipeline": 5,
    "registry.check": 6,
    "registry.query": 7,
    "registry.publish": 8,
    "registry": 8,  # the package's own __init__ (lazy re-exports)
    "lineage": 9,
    "migration": 9,
    "cli": 10,
}
# The one place allowed to import stemma modules inside functions: the CLI's command loader.
LOADER = {"stemma.cli.app"}
FROM_PACKAGE = {"__version__", "StemmaError"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "stemma." + ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[0] == "registry" and len(parts) > 1:
        return f"registry.{parts[1]}"
    return parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module(path)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(imported module, names, line, inside a function) for every runtime stemma import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str], int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            inner = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "stemma":
                    names = [alias.name for alias in child.names]
                    found.append((target, names, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "stemma":
                        found.append((alias.name, [], child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _targets(target: str, names: list[str]) -> list[str]:
    """The modules an import statement loads: `from pkg import mod` names the module."""
    out = []
    for name in names or [""]:
        candidate = f"{target}.{name}" if name else target
        out.append(candidate if candidate in MODULES else target)
    return out


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, imports in IMPORTS.items():
        mine = _layer(module)
        for target, names, line, _ in imports:
            if target == "stemma.registry":
                if mine.startswith("registry.") and set(names) - FROM_PACKAGE:
                    wrong.append(f"{module}:{line} imports {names} from stemma.registry")
                continue
            for imported in _targets(target, names):
                theirs = _layer(imported)
                if theirs == mine:
                    continue
                if RANK.get(theirs, 99) >= RANK.get(mine, -1):
                    wrong.append(f"{module}:{line} ({mine}) imports {imported} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_function_level_imports_of_stemma_modules() -> None:
    wrong = [
        f"{module}:{line} imports {target}"
        for module, imports in IMPORTS.items()
        if module not in LOADER
        for target, _, line, in_function in imports
        if in_function
    ]
    assert not wrong, f"{len(wrong)} function-level imports:\n" + "\n".join(wrong)


def test_module_imports_have_no_cycle() -> None:
    graph = nx.DiGraph()
    for module, imports in IMPORTS.items():
        graph.add_node(module)
        for target, names, _, in_function in imports:
            if not in_function:
                for imported in _targets(target, names):
                    if imported != module and imported in MODULES:
                        graph.add_edge(module, imported)
    cycles = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, "\n".join(" <-> ".join(sorted(c)) for c in cycles)
