"""RingHashBalancer: the same key reaches the same endpoint; a change moves only ~1/N of keys."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.clock import FakeClock
from sidecar.balancers import RingHashBalancer, RingHashConfig, hash_key, ring_hash
from tests.unit.sidecar.balancers.helpers import specs

KEYS = [hash_key(f"user-{i}") for i in range(10_000)]
TEN = [f"10.0.0.{i}:15006" for i in range(10)]


def make(*addresses: str, seed: int = 1, **weights: int) -> RingHashBalancer:
    balancer = RingHashBalancer(clock=FakeClock(), rng=random.Random(seed))
    balancer.set_endpoints(specs(*addresses, **weights))
    return balancer


def owners(balancer: RingHashBalancer, keys: list[int] = KEYS) -> list[str]:
    picked = [balancer.pick(key) for key in keys]
    return [p.address for p in picked if p is not None]


def test_the_same_key_always_reaches_the_same_endpoint_on_every_sidecar() -> None:
    first = owners(make(*TEN, seed=1))
    assert owners(make(*TEN, seed=1)) == first
    assert owners(make(*reversed(TEN), seed=99)) == first  # order and randomness do not matter


def test_keys_spread_evenly() -> None:
    counts = Counter(owners(make(*TEN)))
    assert all(n / len(KEYS) == pytest.approx(0.1, rel=0.15) for n in counts.values())


def test_weights_scale_an_endpoints_share() -> None:
    counts = Counter(owners(make("a", "b", "c", a=2)))
    assert counts["a"] / len(KEYS) == pytest.approx(0.5, rel=0.1)


def test_an_endpoint_leaving_moves_only_its_own_keys() -> None:
    balancer = make(*TEN)
    before = owners(balancer)
    balancer.set_endpoints(specs(*TEN[1:]))
    after = owners(balancer)
    moved = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert all(before[i] == TEN[0] for i in moved)  # nobody else's key moved ...
    assert len(moved) == before.count(TEN[0])  # ... and every one of its keys did
    assert len(moved) / len(KEYS) == pytest.approx(1 / 10, rel=0.15)
    print(f"\none of 10 endpoints left: {len(moved) / len(KEYS):.1%} of keys moved")


def test_an_endpoint_joining_takes_about_one_share_from_the_others() -> None:
    balancer = make(*TEN[:9])
    before = owners(balancer)
    balancer.set_endpoints(specs(*TEN))
    after = owners(balancer)
    moved = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
    assert all(after[i] == TEN[9] for i in moved)  # keys only move to the newcomer
    assert len(moved) / len(KEYS) == pytest.approx(1 / 10, rel=0.15)


def test_an_ejected_endpoints_keys_move_and_come_back() -> None:
    balancer = make(*TEN)
    before = owners(balancer)
    balancer.endpoints[TEN[3]].ejected = True
    during = owners(balancer)
    assert TEN[3] not in during
    assert all(d == b for b, d in zip(before, during, strict=True) if b != TEN[3])
    balancer.endpoints[TEN[3]].ejected = False
    assert owners(balancer) == before


def test_a_retry_goes_where_the_key_would_go_without_the_endpoint_tried() -> None:
    balancer = make(*TEN)
    key = KEYS[0]
    first = balancer.pick(key)
    assert first is not None
    retried = balancer.pick(key, avoid=frozenset({first.address}))
    first.ejected = True
    assert retried is not None and retried is not first
    assert retried is balancer.pick(key)


def test_a_call_without_a_key_goes_to_a_random_point() -> None:
    counts = Counter(owners(make("a", "b", "c"), keys=[None] * 3000))  # type: ignore[list-item]
    assert all(n / 3000 == pytest.approx(1 / 3, abs=0.05) for n in counts.values())


def test_the_ring_has_1024_points_per_unit_of_weight() -> None:
    assert make("a").ring_size == 1024  # Envoy's minimum ring size
    assert make("a", "b", "c", a=3).ring_size == 5 * 1024
    config = RingHashConfig(points_per_weight=16)
    balancer = RingHashBalancer(config, clock=FakeClock(), rng=random.Random(1))
    balancer.set_endpoints(specs("a", "b"))
    assert balancer.ring_size == 32


def test_huge_weights_shrink_the_points_to_fit_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring_hash, "MAX_RING_SIZE", 4096)  # the real cap takes a second to fill
    balancer = make("a", "b", a=7)
    assert balancer.ring_size == 8 * (4096 // 8)
    assert Counter(owners(balancer))["a"] / len(KEYS) == pytest.approx(7 / 8, rel=0.05)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="points_per_weight"):
        RingHashConfig(points_per_weight=0)


def test_hash_key_is_stable_and_64_bit() -> None:
    assert hash_key("user-1") == hash_key(b"user-1")
    assert 0 <= hash_key("user-1") < 2**64
    assert hash_key("user-1") != hash_key("user-2")
