"""The fleet scenario in short form: a 100-service fleet of the shipped file's shape for a
fifth of its time, and the shipped 1,000 × 10 fleet drawn (not run: that is ``meshctl simulate
fleet``, under a minute).

What it must show: without retries every edge call is 15 calls in the fleet and no more; a
latency-aware balancer loses fewer calls to the slow zone than round robin; 3 retries at every
hop amplify the load, and a retry budget caps it; the same seed gives the same figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator import scenario
from simulator.report import summary
from simulator.scenario import SCENARIOS

SHORT = 0.2  # of the scenario's time, as meshctl simulate --quick


def small_fleet(tmp_path: Path) -> scenario.Scenario:
    data = yaml.safe_load((SCENARIOS / "fleet.yaml").read_text())
    data["fleet"]["services"] = 100
    data["fleet"]["edge_rate"] = 200
    path = tmp_path / "small-fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return scenario.load(str(path)).scaled(SHORT)


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    chosen = small_fleet(tmp_path_factory.mktemp("fleet"))
    return {o.policy: summary(o, chosen) for o in scenario.run(chosen)}


def test_the_shipped_fleet_is_a_thousand_services_of_ten_replicas() -> None:
    fleet = scenario.load("fleet")
    assert len(fleet.services) == 1000 and {s.replicas for s in fleet.services} == {10}
    assert len(fleet.clients) == 250  # one per edge service
    assert sum(len(s.calls) for s in fleet.services) == 750 * 2
    assert {s.zone(r) for s in fleet.services for r in range(10)} == {"a", "b", "c"}


def test_without_retries_an_edge_call_is_fifteen_calls(figures: dict[str, Any]) -> None:
    for policy in ("round robin, no retries", "least request, no retries",
                   "peak EWMA, no retries"):
        assert figures[policy]["load_per_call"] == 15.0, policy


def test_peak_ewma_loses_fewer_calls_to_the_slow_zone(figures: dict[str, Any]) -> None:
    slow = {p: f["windows"]["zone b slow"] for p, f in figures.items()}
    assert slow["peak EWMA, no retries"] > slow["round robin, no retries"], slow
    assert slow["peak EWMA, 3 retries"] > slow["round robin, 3 retries"], slow


def test_retries_at_every_hop_amplify_and_a_budget_caps_them(figures: dict[str, Any]) -> None:
    for balancer in ("round robin", "least request", "peak EWMA"):
        storm = figures[f"{balancer}, 3 retries"]["load_per_call"]
        budgeted = figures[f"{balancer}, 3 retries + budget"]["load_per_call"]
        assert storm > 1.5 * 15 and 15 < budgeted < storm, (balancer, storm, budgeted)
        assert figures[f"{balancer}, 3 retries"]["windows"]["after"] == 1.0  # it recovers


def test_the_same_seed_gives_the_same_figures(tmp_path: Path) -> None:
    chosen = small_fleet(tmp_path)
    label = "peak EWMA, 3 retries"
    twice = [summary(scenario.run_one(chosen, label, chosen.policies[label], None), chosen)
             for _ in range(2)]
    assert twice[0] == twice[1]
