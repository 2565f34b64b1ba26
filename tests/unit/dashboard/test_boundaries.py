"""The dashboard reads what the mesh publishes and imports none of its code: no sidecar, no
control plane, no simulator — a person with ``curl`` could do what it does."""

from __future__ import annotations

from pathlib import Path

import dashboard
from tests.unit.simulator.test_boundaries import imported

FORBIDDEN = ("sidecar", "controlplane", "simulator", "demo_services")
MODULES = sorted(Path(dashboard.__file__).parent.rglob("*.py"))


def test_no_dashboard_module_imports_mesh_code() -> None:
    assert len(MODULES) >= 5
    offending = {f"{path.name}: {name}" for path in MODULES for name in imported(path)
                 if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN)}
    assert not offending
