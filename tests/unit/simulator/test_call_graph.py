"""Scenarios with a call graph, zones and fleets: read, checked, and run."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator import scenario
from simulator.scenario import ScenarioError

CHAIN = """
duration: 4
drain: 2
services:
  front: {replicas: 3, service_time: {fixed: 0.01}, calls: [middle], zones: [a, b, c]}
  middle: {replicas: 3, service_time: {fixed: 0.01}, calls: [db], zones: [a, b, c]}
  db: {replicas: 3, service_time: {fixed: 0.01}, zones: [a, b, c]}
clients:
  - {service: front, rate: 50, timeout: 2}
faults:
  - {at: 1, until: 3, zone: b, set: {latency_factor: 30}}
windows: {slow: [1, 3]}
policies:
  round robin: "clusters: []"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(text)
    return path


def test_a_chain_with_a_slow_zone(tmp_path: Path) -> None:
    chain = scenario.load(str(write(tmp_path, CHAIN)))
    assert chain.services[0].calls == ("middle",) and chain.services[2].zone(4) == "b"
    (outcome,) = scenario.run(chain)
    assert outcome.record.success() == 1.0
    assert outcome.sidecar_calls == 3 * len(outcome.record)  # client, front, middle
    # Round robin sends a third of each hop to zone b: the tail is 0.3 s per slow hop.
    assert outcome.record.latency(0.99) > 0.6
    zone_b = [s for s in outcome.servers if s.zone == "b"]
    assert all(s.behaviour.latency_factor == 1.0 for s in zone_b)  # the fault ended


@pytest.mark.parametrize(("db_calls", "message"), [
    ("[front]", "services.front.calls: a cycle: front → middle → db → front"),
    ("[db]", "a cycle: db → db"),
    ("[nowhere]", "services.db.calls: unknown service 'nowhere'"),
])
def test_a_graph_that_cannot_run_is_refused(tmp_path: Path, db_calls: str,
                                            message: str) -> None:
    text = CHAIN.replace("db: {replicas: 3,", f"db: {{calls: {db_calls}, replicas: 3,")
    with pytest.raises(ScenarioError, match=message):
        scenario.load(str(write(tmp_path, text)))


def test_a_zone_no_replica_is_in_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown zone 'z'"):
        scenario.load(str(write(tmp_path, CHAIN.replace("zone: b", "zone: z"))))


def test_a_fleet_is_drawn_and_its_template_cluster_applies(tmp_path: Path) -> None:
    text = """
duration: 2
fleet: {services: 12, replicas: 3, zones: 3, layers: 3, calls: 2, edge_rate: 40,
        service_time: {fixed: 0.01}}
faults: [{at: 0.5, until: 1.5, zone: c, set: {error_rate: 1.0}}]
policies:
  retries: "clusters: [{name: fleet, lb_policy: ROUND_ROBIN,
    retry_policy: {retry_on: [5xx], num_retries: 2}}]"
"""
    fleet = scenario.load(str(write(tmp_path, text)))
    assert len(fleet.services) == 12 and len(fleet.clients) == 4
    (outcome,) = scenario.run(fleet)
    # Every hop retries a failing zone-c replica elsewhere, so the clients see no error.
    assert len(outcome.record) > 50 and outcome.record.success() == 1.0
    assert sum(s.stats.errors for s in outcome.servers if s.zone == "c") > 0
