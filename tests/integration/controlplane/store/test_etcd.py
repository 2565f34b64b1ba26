"""The etcd store as replicas use it: two clients racing, a member killed, etcd gone.

Two ``EtcdStore`` objects on one cluster stand for two control-plane replicas.

    single member   127.0.36.2:2379
    three members   127.0.36.11-13:2379 (peers :2380)
    nothing         127.0.36.9:2379 (refused), and a listener on 127.0.36.8 that never answers
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controlplane.store import ChangeKind, Conflict, StoreUnavailable
from controlplane.store.etcd import EtcdStore
from tests.integration.controlplane.store.etcd_cluster import Cluster, start_cluster

SINGLE = "127.0.36.2"
THREE = ["127.0.36.11", "127.0.36.12", "127.0.36.13"]
REFUSED = "127.0.36.9:2379"
SILENT = "127.0.36.8"
TIMEOUT = 1.0  # seconds per endpoint
_domains = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("etcd"), [SINGLE])
    yield cluster
    cluster.stop()


@pytest.fixture
async def replicas(etcd: Cluster) -> AsyncIterator[tuple[EtcdStore, EtcdStore]]:
    domain = f"race{next(_domains)}.test"
    one = EtcdStore(etcd.endpoints, trust_domain=domain, timeout=TIMEOUT)
    two = EtcdStore(etcd.endpoints, trust_domain=domain, timeout=TIMEOUT)
    yield one, two
    await one.close()
    await two.close()


async def test_a_token_redeemed_at_two_replicas_at_once_is_won_by_exactly_one(
        replicas: tuple[EtcdStore, EtcdStore]) -> None:
    one, two = replicas
    digests = [f"{n:064x}" for n in range(50)]
    for digest in digests:
        await one.put_token(digest, digest.encode(), ttl=60)
    for digest in digests:
        won = await asyncio.gather(one.redeem_token(digest), two.redeem_token(digest))
        assert sorted(won, key=lambda r: r is None) == [digest.encode(), None], digest


async def test_two_policies_based_on_one_version_one_wins_the_other_conflicts(
        replicas: tuple[EtcdStore, EtcdStore]) -> None:
    one, two = replicas
    await one.write_policy(b"base", based_on=0)
    results = await asyncio.gather(one.write_policy(b"from one", based_on=1),
                                   two.write_policy(b"from two", based_on=1),
                                   return_exceptions=True)
    [won] = [r for r in results if r == 2]
    [lost] = [r for r in results if isinstance(r, Conflict)]
    assert (won, lost.based_on, lost.current) == (2, 1, 2)
    assert "based on version 1, the policy is now at version 2" in str(lost)
    document, version = await two.read_policy()
    assert version == 2 and document == (b"from one", b"from two")[results.index(won)]


async def test_a_registration_at_one_replica_reaches_the_other_replicas_watch(
        replicas: tuple[EtcdStore, EtcdStore]) -> None:
    one, two = replicas
    async with two.watch() as watch:
        lease = await one.grant_lease(5)
        revision = await one.put_instance("default/echo@127.0.0.1:80", b"e", lease=lease)
        change = await asyncio.wait_for(anext(aiter(watch)), 5)
        assert (change.kind, change.revision) == (ChangeKind.PUT, revision)
        await one.revoke_lease(lease)
        change = await asyncio.wait_for(anext(aiter(watch)), 5)
        assert (change.kind, change.revision) == (ChangeKind.DELETE, revision + 1)


async def test_a_killed_member_of_three_leaves_writes_leases_and_the_watch_working(
        tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, THREE)
    store = EtcdStore(cluster.endpoints, trust_domain="three.test", timeout=TIMEOUT)
    watcher = EtcdStore(cluster.endpoints, trust_domain="three.test", timeout=TIMEOUT)
    try:
        lease = await store.grant_lease(10)
        async with watcher.watch() as watch:
            before = await store.put_instance("default/a@127.0.0.1:1", b"a", lease=lease)
            assert (await anext(aiter(watch))).revision == before
            cluster.members[0].kill()  # the member both clients use: the first endpoint
            after = await store.put_instance("default/b@127.0.0.1:2", b"b", lease=lease)
            await store.keep_alive(lease)
            assert await store.write_policy(b"p", based_on=0) == 1
            seen = [await asyncio.wait_for(anext(aiter(watch)), 5) for _ in range(2)]
        assert [(c.key, c.revision) for c in seen] == [
            ("instances/default/b@127.0.0.1:2", after), ("policy", after + 1)]
    finally:
        await store.close()
        await watcher.close()
        cluster.stop()


async def test_with_etcd_gone_every_call_fails_fast_naming_the_endpoints(
        tmp_path: Path) -> None:
    never_answers = await asyncio.start_server(lambda r, w: None, SILENT, 2379)
    store = EtcdStore([REFUSED, f"{SILENT}:2379"], trust_domain="gone.test", timeout=TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await store.write_policy(b"p", based_on=0)
        took = time.monotonic() - started
        assert took < 2 * TIMEOUT + 1.0  # one timeout per endpoint, never a hang
        assert info.value.endpoints == [REFUSED, f"{SILENT}:2379"]
        assert REFUSED in str(info.value) and f"{SILENT}:2379" in str(info.value)
        with pytest.raises(StoreUnavailable):
            async with store.watch():
                pass
    finally:
        await store.close()
        never_answers.close()
        await never_answers.wait_closed()


async def test_a_watch_whose_whole_cluster_dies_raises_unavailable(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, ["127.0.36.3"])
    store = EtcdStore(cluster.endpoints, trust_domain="dies.test", timeout=TIMEOUT)
    try:
        async with store.watch() as watch:
            cluster.members[0].kill()
            with pytest.raises(StoreUnavailable, match=r"127\.0\.36\.3:2379"):
                await asyncio.wait_for(anext(aiter(watch)), 3 * TIMEOUT)
    finally:
        await store.close()
        cluster.stop()
