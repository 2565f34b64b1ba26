"""The contract of controlplane.store, held by both stores: memory, and a real etcd member.

The same transcript runs against each; where time must pass for a lease to lapse, the memory
store's clock is moved and etcd is waited for (its leases are whole seconds, 1 s here).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.store import (
    Change,
    ChangeKind,
    Conflict,
    LeaseExpired,
    Store,
    Watch,
)
from controlplane.store.etcd import EtcdStore
from controlplane.store.memory import MemoryStore
from mesh.clock import FakeClock
from tests.integration.controlplane.store.etcd_cluster import Cluster, start_cluster

HOST = "127.0.36.1"  # this module's etcd member
WAIT = 5.0  # seconds any one change may take to be seen
ECHO = "default/echo@127.0.0.1:8080"
_domains = itertools.count()


@dataclass
class Backend:
    store: Store
    lapse: Callable[[float], Awaitable[None]]  # let this many seconds pass for leases


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("etcd"), [HOST])
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "etcd"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    domain = f"contract{next(_domains)}.test"  # every test its own prefix in the shared etcd
    if request.param == "memory":
        clock = FakeClock()
        memory = MemoryStore(clock, trust_domain=domain)

        async def advance(seconds: float) -> None:
            clock.advance(seconds)
            memory.sweep()

        yield Backend(memory, advance)
        await memory.close()
    else:
        cluster: Cluster = request.getfixturevalue("etcd")
        store = EtcdStore(cluster.endpoints, trust_domain=domain, timeout=2.0)
        yield Backend(store, asyncio.sleep)
        await store.close()


async def next_change(watch: Watch) -> Change:
    return await asyncio.wait_for(anext(aiter(watch)), WAIT)


async def test_a_registration_is_listed_then_watched_until_deleted(backend: Backend) -> None:
    store = backend.store
    lease = await store.grant_lease(10)
    first = await store.put_instance(ECHO, b"v1", lease=lease)
    async with store.watch() as watch:
        listing = watch.listing
        assert listing.revision >= first
        entry = listing.entries[f"instances/{ECHO}"]
        assert (entry.value, entry.version, entry.revision) == (b"v1", 1, first)
        assert entry.lease == lease  # what another replica renews it with

        second = await store.put_instance(ECHO, b"v2", lease=lease)
        assert second > listing.revision
        assert await next_change(watch) == Change(
            kind=ChangeKind.PUT, key=f"instances/{ECHO}", value=b"v2", version=2,
            revision=second, lease=lease)

        assert await store.delete_instance(ECHO)
        deleted = await next_change(watch)
        assert (deleted.kind, deleted.key, deleted.value, deleted.version) == (
            ChangeKind.DELETE, f"instances/{ECHO}", b"", 0)
        assert deleted.revision == second + 1
    assert not await store.delete_instance(ECHO)
    await store.revoke_lease(lease)


async def test_a_lease_not_kept_alive_lapses_and_its_key_is_deleted_for_watchers(
        backend: Backend) -> None:
    store = backend.store
    kept, dropped = await store.grant_lease(1), await store.grant_lease(1)
    await store.put_instance("default/a@127.0.0.1:1", b"a", lease=kept)
    await store.put_instance("default/b@127.0.0.1:2", b"b", lease=dropped)
    async with store.watch() as watch:
        for _ in range(4):  # 1.6 s: past the TTL, which only ``kept`` is renewed within
            await backend.lapse(0.4)
            await store.keep_alive(kept)
        gone = await next_change(watch)
        assert (gone.kind, gone.key) == (ChangeKind.DELETE, "instances/default/b@127.0.0.1:2")
    with pytest.raises(LeaseExpired, match="register again"):
        await store.keep_alive(dropped)
    with pytest.raises(LeaseExpired):
        await store.put_instance("default/b@127.0.0.1:2", b"b", lease=dropped)
    async with store.watch() as watch:
        assert list(watch.listing.entries) == ["instances/default/a@127.0.0.1:1"]
    await store.revoke_lease(kept)


async def test_revoking_a_lease_deletes_only_the_keys_still_on_it(backend: Backend) -> None:
    store = backend.store
    old, new = await store.grant_lease(10), await store.grant_lease(10)
    await store.put_instance(ECHO, b"first", lease=old)
    await store.put_instance("default/other@127.0.0.1:9", b"x", lease=old)
    await store.put_instance(ECHO, b"again", lease=new)  # a sidecar registering again
    await store.revoke_lease(old)
    await store.revoke_lease(old)  # already gone: not an error
    async with store.watch() as watch:
        assert {k: e.value for k, e in watch.listing.entries.items()} == {
            f"instances/{ECHO}": b"again"}
    await store.revoke_lease(new)
    async with store.watch() as watch:
        assert watch.listing.entries == {}


async def test_a_token_is_redeemed_once_and_not_after_its_ttl(backend: Backend) -> None:
    store = backend.store
    await store.put_token("aa" * 32, b"spiffe://x/ns/default/sa/echo", ttl=60)
    await store.put_token("bb" * 32, b"short", ttl=1)
    assert await store.redeem_token("cc" * 32) is None
    assert await store.redeem_token("aa" * 32) == b"spiffe://x/ns/default/sa/echo"
    assert await store.redeem_token("aa" * 32) is None
    await backend.lapse(2.0)
    assert await store.redeem_token("bb" * 32) is None


async def test_the_policy_is_swapped_only_from_the_version_it_was_based_on(
        backend: Backend) -> None:
    store = backend.store
    assert await store.read_policy() == (b"", 0)
    assert await store.write_policy(b"one", based_on=0) == 1
    assert await store.write_policy(b"two", based_on=1) == 2
    with pytest.raises(Conflict, match="based on version 1, the policy is now at version 2"
                       ) as info:
        await store.write_policy(b"late", based_on=1)
    assert (info.value.based_on, info.value.current) == (1, 2)
    assert await store.read_policy() == (b"two", 2)
    async with store.watch() as watch:
        assert watch.listing.entries["policy"].version == 2
        await store.write_policy(b"three", based_on=2)
        change = await next_change(watch)
        assert (change.key, change.value, change.version) == ("policy", b"three", 3)


async def test_revisions_order_every_change_under_the_prefix(backend: Backend) -> None:
    store = backend.store
    async with store.watch() as watch:
        lease = await store.grant_lease(10)
        await store.put_instance(ECHO, b"r", lease=lease)
        await store.put_token("dd" * 32, b"t", ttl=60)
        await store.write_policy(b"p", based_on=0)
        await store.redeem_token("dd" * 32)
        await store.revoke_lease(lease)
        changes = [await next_change(watch) for _ in range(5)]
    assert [(c.kind.value, c.key) for c in changes] == [
        ("put", f"instances/{ECHO}"), ("put", "tokens/" + "dd" * 32), ("put", "policy"),
        ("delete", "tokens/" + "dd" * 32), ("delete", f"instances/{ECHO}")]
    revisions = [c.revision for c in changes]
    assert revisions == sorted(set(revisions))
    assert revisions[0] > watch.listing.revision
