"""balancers: peak EWMA and least request avoid the slow replica; round robin does not."""

from __future__ import annotations

from pathlib import Path

from tests.integration.experiments.helpers import run_quick


def test_ewma_avoids_the_slow_replica(tmp_path: Path) -> None:
    data = run_quick("balancers", tmp_path)
    slow = data["slow"]
    by = {b["balancer"]: b for b in data["balancers"]}
    assert 0.2 < by["round_robin"]["share"][slow] < 0.45  # a third, whatever its speed
    assert by["peak_ewma"]["share"][slow] < 0.5 * by["round_robin"]["share"][slow]
    assert by["least_request"]["share"][slow] < by["round_robin"]["share"][slow]
    assert by["peak_ewma"]["p99"] < by["round_robin"]["p99"]
    for result in by.values():
        assert result["errors"] == 0, result
