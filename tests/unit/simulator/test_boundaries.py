"""The simulator imports pure code only: no event loop, no sockets, no HTTP/2, no pools."""

from __future__ import annotations

import ast
from pathlib import Path

import simulator

FORBIDDEN = ("asyncio", "socket", "mesh.http2", "sidecar.pool", "sidecar.outbound")
MODULES = sorted(Path(simulator.__file__).parent.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module ``path``'s own import statements name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_simulator_module_imports_io() -> None:
    assert len(MODULES) >= 9
    offending = {f"{path.name}: {name}" for path in MODULES for name in imported(path)
                 if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN)}
    assert not offending
