"""The simulator agrees with the real mesh, within the tolerances ``experiments/agreement.py``
states, on the two setups the experiments also run on real sidecars.

The retry storm's quick run takes about a minute and a half on real processes, so its side is
the figures measured by it (``agreement.MEASURED``); ``python -m experiments.agreement --quick``
runs both experiments live beside the simulator. The balancers' quick run takes about 30 s
and runs live here. Each tolerance is checked to tell the arms apart, so a simulator that got
a policy wrong would fail, not pass within a tolerance wide enough for anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import agreement, balancers, retry_storm
from experiments.agreement import MEASURED, TOLERANCES, compare
from tests.integration.experiments.helpers import run_quick


def test_retry_storm_amplification_agrees_with_the_mesh() -> None:
    simulated = agreement.simulated_amplification(retry_storm.QUICK)
    rows = compare(MEASURED, {"amplification": simulated, "slow_share": {}})
    assert [row.arm for row in rows] == list(retry_storm.POLICIES)
    assert all(row.agrees for row in rows), [row.cells() for row in rows]


def test_a_slow_replicas_share_agrees_with_the_mesh() -> None:
    simulated = agreement.simulated_slow_share(balancers.QUICK)
    rows = compare(MEASURED, {"amplification": {}, "slow_share": simulated})
    assert [row.arm for row in rows] == list(agreement.SHARED_BALANCERS)
    assert all(row.agrees for row in rows), [row.cells() for row in rows]


@pytest.mark.parametrize("figure", list(TOLERANCES))
def test_each_tolerance_tells_the_arms_apart(figure: str) -> None:
    """Another arm's measured figure is outside the tolerance around each arm's (the two
    budgets aside, which are alike by design), and so is a storm in which every try fails."""
    measured = {arm: spread[0] for arm, spread in MEASURED[figure].items()}
    alike = {frozenset({"budget", "backoff"})}
    for arm, value in measured.items():
        for other, other_value in measured.items():
            if other != arm and frozenset({arm, other}) not in alike:
                assert not TOLERANCES[figure].allows(value, other_value), (arm, other)
    if figure == "amplification":
        assert not TOLERANCES[figure].allows(measured["retries"], 1 + 3)  # 1 + N


@pytest.mark.interop  # starts real sidecars and a backend on loopback
@pytest.mark.timeout(150)
def test_a_slow_replicas_share_agrees_with_a_live_run(tmp_path: Path) -> None:
    data = run_quick("balancers", tmp_path, seconds=140)
    rows = compare({"amplification": {}, "slow_share": agreement.measured_slow_share(data)},
                   {"amplification": {}, "slow_share": agreement.simulated_slow_share(
                       balancers.QUICK)})
    assert len(rows) == len(agreement.SHARED_BALANCERS)
    assert all(row.agrees for row in rows), [row.cells() for row in rows]
