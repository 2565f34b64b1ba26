"""The memory store on a FakeClock: leases lapse when the clock says, revisions count as etcd's."""

from __future__ import annotations

import pytest

from controlplane.store import ChangeKind, LeaseExpired, prefix
from controlplane.store.memory import MemoryStore
from mesh.clock import FakeClock

ECHO = "default/echo@10.0.0.1:8080"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock, trust_domain="cluster.local")


def test_the_prefix_names_the_trust_domain() -> None:
    assert prefix("cluster.local") == "/asyncmesh/cluster.local/"
    for bad in ("", "a/b"):
        with pytest.raises(ValueError, match="trust domain"):
            prefix(bad)


async def test_revisions_start_as_etcds_and_a_lapse_is_one_revision(
        store: MemoryStore, clock: FakeClock) -> None:
    assert store.revision == 1
    lease = await store.grant_lease(3)
    assert store.revision == 1  # a lease alone changes no key
    assert await store.put_instance(ECHO, b"e", lease=lease) == 2
    await store.put_instance("default/echo@10.0.0.2:8080", b"f", lease=lease)
    async with store.watch() as watch:
        clock.advance(2.9)
        assert store.sweep() == 0
        clock.advance(0.1)
        assert store.sweep() == 1
        gone = [await anext(aiter(watch)) for _ in range(2)]
    assert {(c.kind, c.revision) for c in gone} == {(ChangeKind.DELETE, 4)}
    assert store.revision == 4


async def test_keep_alive_renews_for_the_full_ttl(store: MemoryStore, clock: FakeClock) -> None:
    lease = await store.grant_lease(3)
    await store.put_instance(ECHO, b"e", lease=lease)
    for _ in range(5):
        clock.advance(2)
        await store.keep_alive(lease)
    clock.advance(3)
    with pytest.raises(LeaseExpired, match=f"lease {lease:x} lapsed"):
        await store.keep_alive(lease)  # operations drop lapsed leases first, sweep or not
    async with store.watch() as watch:
        assert watch.listing.entries == {}


async def test_a_token_past_its_ttl_is_not_redeemed_even_before_a_sweep(
        store: MemoryStore, clock: FakeClock) -> None:
    await store.put_token("ab" * 32, b"id", ttl=600)
    clock.advance(600)
    assert await store.redeem_token("ab" * 32) is None
