"""discovery: an xDS push reaches every sidecar long before DNS-like caches expire."""

from __future__ import annotations

import statistics
from pathlib import Path

from tests.integration.experiments.helpers import run_quick


def test_push_beats_ttl(tmp_path: Path) -> None:
    data = run_quick("discovery", tmp_path)
    push = data["push"]
    assert len(push) == 3
    shortest = min(data["ttl"], key=float)
    assert max(push) < float(shortest)  # every sidecar, before a cache of the shortest TTL
    for times in data["ttl"].values():
        assert max(push) < statistics.median(times)
    assert data["errors"] <= 2  # the move cost (almost) nothing: retries on connect failure
