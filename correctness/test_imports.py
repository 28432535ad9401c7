"""The import graph: generators/ imports neither correctness/ nor perf/ (the base arm of the gate is another commit's
generators/ alone), and its modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

GENERATORS = Path(__file__).resolve().parents[1] / "generators"


def imports_of(path: Path) -> set[str]:
    """generators modules that `path` imports at module level or inside functions (relative imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return {n for n in names if (GENERATORS / f"{n}.py").exists()}


def test_generators_import_nothing_above_them() -> None:
    offenders = []
    for path in GENERATORS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("correctness", "perf")]
    assert not offenders


def test_generators_modules_form_no_cycle() -> None:
    graph = {p.stem: imports_of(p) - {p.stem} for p in GENERATORS.glob("*.py") if p.stem != "__main__"}
    graph["__init__"] = graph.get("__init__", set())
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for child in sorted(graph.get(node, ())):
            if child != "__init__":  # `from . import x` names the package; its __init__ runs first anyway
                visit(child, (*path, node))
        done.add(node)

    for module in sorted(graph):
        visit(module, ())
