"""retry_storm: retries without a budget multiply a brownout's load; a budget caps it.

Each claim is the median over the seeded repeats. Measured here (the machine as it was, and
with one core kept busy): the storm's load 3.63–3.72x what is offered, no retries 1.00x, the
budget's load 0.41–0.42 of the storm's, success after the brownout 78–86 points above the
storm's, recovery in 0.5–1.0 s. The bounds are the claims, with that spread far inside them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.integration.experiments.helpers import every_repeat, run_quick


@pytest.mark.timeout(300)
def test_the_budget_caps_the_load_and_lets_the_backend_recover(tmp_path: Path) -> None:
    data = run_quick("retry_storm", tmp_path, seconds=280)
    claims, shown = data["headlines"], every_repeat(data)
    assert claims["none_amplification"]["median"] < 1.2, shown  # what the client sends
    assert claims["storm_amplification"]["median"] > 1.6, shown  # the storm (4x at most)
    for capped in ("budget", "backoff"):
        assert claims[f"{capped}_load_vs_storm"]["median"] < 0.8, shown
        assert claims[f"{capped}_success_after_vs_storm"]["median"] > 0.2, shown
        assert math.isfinite(claims[f"{capped}_recovery"]["median"]), shown  # it recovered
