"""The package's modules import each other without cycles, counting the
imports only a type checker follows."""

from __future__ import annotations

import ast
from pathlib import Path

import ferroloop

PACKAGE = Path(ferroloop.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, at any depth of the
    file (inside ``if TYPE_CHECKING:`` and functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ferroloop."):
            found.add(node.module.split(".")[1])
    return found


def test_no_import_cycles_between_modules() -> None:
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    graph = {name: _imports(path) & modules.keys() for name, path in modules.items()}
    assert graph["_monitor"], "the scan found no imports: it is not reading the files"

    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name))]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
