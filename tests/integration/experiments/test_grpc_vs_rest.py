"""grpc_vs_rest: the same service in fewer bytes and on one connection with gRPC."""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import run_quick


def test_grpc_uses_fewer_bytes_and_one_connection(tmp_path: Path) -> None:
    data = run_quick("grpc_vs_rest", tmp_path)
    cells = data["cells"]
    assert len(cells) == len(data["plan"]["rates"]) * 4
    for cell in cells:
        assert cell["errors"] <= 0.03 * cell["requests"], cell  # the message shows their kinds
        assert cell["server_cpu"] >= 0 and cell["client_bytes_per_request"] > 0
    for rate in data["plan"]["rates"]:
        for path in ("direct", "mesh"):
            grpc, rest = (next(c for c in cells if c["rate"] == rate and c["path"] == path
                               and c["protocol"] == protocol) for protocol in ("grpc", "rest"))
            assert grpc["client_bytes_per_request"] < 0.8 * rest["client_bytes_per_request"]
            assert grpc["client_connections"] == 1  # every call multiplexed on one
            if path == "mesh":
                assert grpc["mesh_bytes_per_request"] > 0 and rest["mesh_bytes_per_request"] > 0
