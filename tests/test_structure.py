"""The package's shape: wings that follow the data flow, no import circle, and a root of
shared vocabulary that imports nothing above it (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import auditor

PACKAGE = Path(auditor.__file__).resolve().parent

#: What the root of the package may hold: the shared vocabulary and the entry points.
ROOT_MODULES = {"__init__", "__main__", "config", "data", "errors", "resources"}
WINGS = {
    "cli",
    "sources",
    "models",
    "influence",
    "ranking",
    "pipeline",
    "store",
    "report",
    "evaluation",
    "cleaning",
}
#: Root modules may import only each other (and nothing but errors/data at that).
VOCABULARY = {"auditor.config", "auditor.data", "auditor.errors", "auditor.resources"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path) -> set[str]:
    """The ``auditor`` modules ``path`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("auditor"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                target = PACKAGE.parent / Path(*candidate.split("."))
                is_module = target.with_suffix(".py").exists() or (target / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("auditor")}
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): module_imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_root_holds_only_the_shared_vocabulary_and_the_wings():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert modules == ROOT_MODULES, modules ^ ROOT_MODULES
    assert packages == WINGS, packages ^ WINGS


def test_the_vocabulary_imports_nothing_above_it():
    graph = import_graph()
    for name in VOCABULARY:
        above = {m for m in graph[name] if m not in VOCABULARY and m != "auditor"}
        assert not above, f"{name} imports {sorted(above)}"


def test_there_is_no_import_circle():
    graph = import_graph()
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                circle = stack[stack.index(t) :] + [t]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
