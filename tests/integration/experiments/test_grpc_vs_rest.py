"""grpc_vs_rest: the same service in fewer bytes and on one connection with gRPC."""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import every_repeat, run_quick


def test_grpc_uses_fewer_bytes_and_one_connection(tmp_path: Path) -> None:
    data = run_quick("grpc_vs_rest", tmp_path)
    claims, shown = data["headlines"], every_repeat(data)
    rates = data["plan"]["rates"]
    for cells in data["repeats"]:
        assert len(cells) == len(rates) * 4
        for cell in cells.values():
            assert cell["errors"] <= 0.03 * cell["requests"], cell  # the message shows their kinds
            assert cell["server_cpu"] >= 0 and cell["client_bytes_per_request"] > 0
            if cell["protocol"] == "grpc":
                assert cell["client_connections"] == 1  # every call multiplexed on one
            if cell["path"] == "mesh":
                assert cell["mesh_bytes_per_request"] > 0
    for rate in rates:
        for path in ("direct", "mesh"):
            assert claims[f"bytes_grpc_vs_rest_{path}_{rate:g}"]["median"] < 0.8, shown
