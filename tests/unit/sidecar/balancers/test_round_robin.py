"""RoundRobinBalancer: weights honoured exactly, interleaved smoothly, new endpoints ramped up."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import RoundRobinBalancer, RoundRobinConfig, SlowStart
from tests.unit.sidecar.balancers.helpers import count_picks, pick_addresses, specs


def test_equal_weights_take_turns() -> None:
    balancer = RoundRobinBalancer(clock=FakeClock(), rng=random.Random(3))
    balancer.set_endpoints(specs("a", "b", "c"))
    for _ in range(100):
        assert sorted(pick_addresses(balancer, 3)) == ["a", "b", "c"]


def test_weights_are_honoured_exactly() -> None:
    balancer = RoundRobinBalancer(clock=FakeClock(), rng=random.Random(3))
    balancer.set_endpoints(specs("a", "b", "c", a=5, b=2))
    assert count_picks(balancer, 8000) == {"a": 5000, "b": 2000, "c": 1000}


def test_weights_interleave_like_envoys_edf() -> None:
    balancer = RoundRobinBalancer(clock=FakeClock(), rng=random.Random(3))
    balancer.set_endpoints(specs("a", "b", "c", a=5))
    sequence = "".join(pick_addresses(balancer, 7000))
    assert "aaaaaa" not in sequence  # never more than its weight in a row
    assert max(len(run) for run in sequence.split("a")) <= 2  # b and c come up every cycle


def test_a_retry_does_not_disturb_the_others_turns() -> None:
    balancer = RoundRobinBalancer(clock=FakeClock(), rng=random.Random(3))
    balancer.set_endpoints(specs("a", "b", "c"))
    first = balancer.pick()
    assert first is not None
    retried = balancer.pick(avoid=frozenset({first.address}))
    assert retried is not None and retried is not first
    counts = count_picks(balancer, 3000)
    assert counts[first.address] == counts[retried.address] == 1000


def test_sidecars_seeded_differently_start_on_different_endpoints() -> None:
    firsts = set()
    for seed in range(30):
        balancer = RoundRobinBalancer(clock=FakeClock(), rng=random.Random(seed))
        balancer.set_endpoints(specs("a", "b", "c"))
        firsts.update(pick_addresses(balancer, 1))
    assert firsts == {"a", "b", "c"}


def test_slow_start_ramps_a_new_endpoint_up_over_its_window() -> None:
    clock = FakeClock()
    balancer = RoundRobinBalancer(RoundRobinConfig(slow_start_config=SlowStart(
        slow_start_window=60.0)), clock=clock, rng=random.Random(3))
    balancer.set_endpoints(specs("a", "b"))
    clock.advance(120.0)  # a and b are past their window
    balancer.set_endpoints(specs("a", "b", "new"))
    share = count_picks(balancer, 2100)["new"] / 2100
    assert share == pytest.approx(0.1 / 2.1, abs=0.01)  # the 10 % floor: weight 0.1 vs 1 + 1
    clock.advance(30.0)  # half way: weight 0.5
    share = count_picks(balancer, 2500)["new"] / 2500
    assert share == pytest.approx(0.5 / 2.5, abs=0.01)
    clock.advance(30.0)  # out of the window: full weight
    assert count_picks(balancer, 3000)["new"] == pytest.approx(1000, abs=5)
