"""handshakes: pooling makes one handshake for all calls; cold calls make one each.

Counts hold in every repeat; the costs compared are medians over the seeded repeats of a ratio
made within a repeat. Measured here, idle to both cores kept busy: connect with mTLS 2.7–4.5x
connect without (single repeats down to 2.0), the server sidecar's CPU per call 3.0–6.0x with
a handshake per call; the bound of 1.5 leaves that spread room.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import every_repeat, run_quick


def test_pooling_cuts_handshakes(tmp_path: Path) -> None:
    data = run_quick("handshakes", tmp_path, via_meshctl=True)
    claims, shown = data["headlines"], every_repeat(data)
    for by in data["repeats"]:
        for cold in ("cold_h2c", "cold_mtls"):
            assert by[cold]["handshakes"] == by[cold]["calls"]
        assert by["pooled_mtls"]["handshakes"] == 1
        assert 1 <= by["mesh"]["handshakes"] <= 2  # the sidecar's pool, counted by its metrics
        for mode in by.values():
            assert mode["errors"] == 0, mode
    assert claims["mtls_connect_vs_h2c"]["median"] > 1.5, shown  # TLS costs
    assert claims["cold_vs_pooled_server_cpu"]["median"] > 1.5, shown
