"""The fleet generator: layers, zones, calls to the next layer, all from a seed."""

from __future__ import annotations

from collections import Counter

import pytest

from simulator.fleet import FleetSpec, generate
from simulator.server import ServiceTime


def spec(**changes: object) -> FleetSpec:
    values: dict[str, object] = {
        "services": 40, "replicas": 5, "zones": 3, "layers": 4, "calls": 2, "edge_rate": 100.0,
        "timeout": 1.0, "concurrency": 10, "queue": 10,
        "service_time": ServiceTime("fixed", 0.01), "seed": 1}
    return FleetSpec(**{**values, **changes})  # type: ignore[arg-type]


def test_the_same_seed_draws_the_same_topology_and_another_seed_another() -> None:
    assert generate(spec()) == generate(spec())
    assert generate(spec()) != generate(spec(seed=2))


def test_layers_zones_and_calls() -> None:
    fleet = generate(spec(services=42))
    layers = Counter(s.layer for s in fleet.services)
    assert layers == {0: 11, 1: 11, 2: 10, 3: 10}
    assert len(fleet.edge) == 11 and fleet.edge[0].name == "l0-0000"
    layer_of = {s.name: s.layer for s in fleet.services}
    for service in fleet.services:
        assert service.zones == ("a", "b", "c")
        if service.layer == 3:
            assert service.calls == ()
        else:
            assert len(set(service.calls)) == 2
            assert {layer_of[c] for c in service.calls} == {service.layer + 1}
    called = {c for s in fleet.services for c in s.calls}
    assert called == {s.name for s in fleet.services if s.layer > 0}  # nobody left out


def test_impossible_fleets_are_refused() -> None:
    with pytest.raises(ValueError, match="calls 11"):
        spec(calls=11)
    with pytest.raises(ValueError, match="layers"):
        spec(services=3)
