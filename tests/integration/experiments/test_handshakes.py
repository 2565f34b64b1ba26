"""handshakes: pooling makes one handshake for all calls; cold calls make one each."""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import run_quick


def test_pooling_cuts_handshakes(tmp_path: Path) -> None:
    data = run_quick("handshakes", tmp_path, via_meshctl=True)
    by = {m["mode"]: m for m in data["modes"]}
    for cold in ("cold_h2c", "cold_mtls"):
        assert by[cold]["handshakes"] == by[cold]["calls"]
    assert by["pooled_mtls"]["handshakes"] == 1
    assert 1 <= by["mesh"]["handshakes"] <= 2  # the sidecar's pool, counted by its metrics
    assert by["cold_mtls"]["connect_p50"] > by["cold_h2c"]["connect_p50"]  # TLS costs
    assert by["cold_mtls"]["server_cpu_ms_per_call"] > by["pooled_mtls"]["server_cpu_ms_per_call"]
    for mode in by.values():
        assert mode["errors"] == 0, mode
