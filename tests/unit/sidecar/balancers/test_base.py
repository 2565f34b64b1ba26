"""What every balancer shares: only available endpoints, ``avoid`` with fallback, joins and leaves.

Each test runs against every balancer, so none can quietly differ on the contract.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import (
    Balancer,
    EndpointSpec,
    LeastRequestBalancer,
    PeakEwmaBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
)
from tests.unit.sidecar.balancers.helpers import count_picks, specs

Factory = Callable[[FakeClock, random.Random], Balancer]

FACTORIES: dict[str, Factory] = {
    "round_robin": lambda clock, rng: RoundRobinBalancer(clock=clock, rng=rng),
    "random": lambda clock, rng: RandomBalancer(clock=clock, rng=rng),
    "least_request": lambda clock, rng: LeastRequestBalancer(clock=clock, rng=rng),
    "peak_ewma": lambda clock, rng: PeakEwmaBalancer(clock=clock, rng=rng),
    "ring_hash": lambda clock, rng: RingHashBalancer(clock=clock, rng=rng),
}


@pytest.fixture(params=sorted(FACTORIES))
def balancer(request: pytest.FixtureRequest) -> Balancer:
    factory: Factory = FACTORIES[request.param]
    made = factory(FakeClock(), random.Random(7))
    made.set_endpoints(specs("a", "b", "c"))
    return made


def test_no_endpoints_means_no_pick() -> None:
    for factory in FACTORIES.values():
        assert factory(FakeClock(), random.Random(1)).pick() is None


def test_every_endpoint_gets_calls(balancer: Balancer) -> None:
    assert set(count_picks(balancer, 300)) == {"a", "b", "c"}


def test_unhealthy_and_ejected_endpoints_are_skipped(balancer: Balancer) -> None:
    balancer.endpoints["a"].healthy = False
    balancer.endpoints["b"].ejected = True
    assert set(count_picks(balancer, 100)) == {"c"}
    balancer.endpoints["c"].ejected = True
    assert balancer.pick() is None
    balancer.endpoints["b"].ejected = False
    assert set(count_picks(balancer, 100)) == {"b"}


def test_a_retry_avoids_endpoints_already_tried(balancer: Balancer) -> None:
    for key in range(200):
        picked = balancer.pick(key=key * 7919, avoid=frozenset({"a", "b"}))
        assert picked is not None and picked.address == "c"


def test_avoid_falls_back_rather_than_fail(balancer: Balancer) -> None:
    balancer.endpoints["c"].ejected = True
    picked = balancer.pick(avoid=frozenset({"a", "b"}))
    assert picked is not None and picked.address in {"a", "b"}


def test_endpoints_that_stay_keep_their_state(balancer: Balancer) -> None:
    added_at = balancer.endpoints["a"].added_at
    a = balancer.endpoints["a"]
    a.start()
    a.ejected = True
    balancer.set_endpoints([EndpointSpec(address="a", weight=3, healthy=True),
                            EndpointSpec(address="d", healthy=False)])
    assert list(balancer.endpoints) == ["a", "d"]
    assert balancer.endpoints["a"] is a
    assert (a.active, a.ejected, a.weight, a.added_at) == (1, True, 3, added_at)
    assert not balancer.endpoints["d"].healthy
    assert balancer.pick() is None  # a is ejected, d unhealthy
    a.ejected = False
    assert set(count_picks(balancer, 50)) == {"a"}


def test_endpoints_that_leave_are_never_picked_again(balancer: Balancer) -> None:
    count_picks(balancer, 10)
    balancer.set_endpoints(specs("b", "e"))
    assert set(count_picks(balancer, 200)) == {"b", "e"}


def test_an_address_listed_twice_is_refused(balancer: Balancer) -> None:
    with pytest.raises(ValueError, match="listed twice"):
        balancer.set_endpoints(specs("a", "a"))


def test_the_endpoint_view_is_read_only(balancer: Balancer) -> None:
    with pytest.raises(TypeError):
        balancer.endpoints["z"] = balancer.endpoints["a"]  # type: ignore[index]
