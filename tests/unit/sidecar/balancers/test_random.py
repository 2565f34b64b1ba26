"""RandomBalancer: a weighted random choice, reproducible with a seed."""

from __future__ import annotations

import random

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import RandomBalancer
from tests.unit.sidecar.balancers.helpers import count_picks, pick_addresses, specs


def test_weights_are_honoured_within_tolerance() -> None:
    balancer = RandomBalancer(clock=FakeClock(), rng=random.Random(11))
    balancer.set_endpoints(specs("a", "b", "c", a=2))
    counts = count_picks(balancer, 20_000)
    assert counts["a"] / 20_000 == pytest.approx(0.5, abs=0.02)
    assert counts["b"] / 20_000 == pytest.approx(0.25, abs=0.02)
    assert counts["c"] / 20_000 == pytest.approx(0.25, abs=0.02)


def test_the_same_seed_gives_the_same_picks() -> None:
    sequences = []
    for _ in range(2):
        balancer = RandomBalancer(clock=FakeClock(), rng=random.Random(5))
        balancer.set_endpoints(specs("a", "b", "c"))
        sequences.append(pick_addresses(balancer, 50))
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) == 3
