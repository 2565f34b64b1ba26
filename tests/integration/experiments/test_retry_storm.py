"""retry_storm: retries without a budget multiply a brownout's load; a budget caps it."""

from __future__ import annotations

import math
from pathlib import Path

from tests.integration.experiments.helpers import run_quick


def test_the_budget_caps_the_load_and_lets_the_backend_recover(tmp_path: Path) -> None:
    data = run_quick("retry_storm", tmp_path)
    by = {p["policy"]: p for p in data["policies"]}
    none, storm, budget, backoff = by["none"], by["retries"], by["budget"], by["backoff"]
    assert none["amplification"] < 1.2  # no retries: the backend sees what the client sends
    assert storm["amplification"] > 1.6  # retries: 3, no budget: the storm (4x at most)
    for capped in (budget, backoff):
        assert capped["amplification"] < storm["amplification"] - 0.3
        assert capped["backend_requests"] < 0.8 * storm["backend_requests"]
        assert math.isfinite(capped["recovery_s"])  # the backend recovered
        assert capped["success_after"] > storm["success_after"] + 0.2
