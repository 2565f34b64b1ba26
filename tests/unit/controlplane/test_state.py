"""A replica's copy of the store: it reaches the revision of a write, and it is ready only while
it follows the store — a failed request or a copy that cannot take a change says why."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from controlplane.state import StoreState
from controlplane.store import Change, Entry, StoreUnavailable
from controlplane.store.memory import MemoryStore
from mesh.clock import FakeClock
from tests.unit.controlplane.conftest import Follow


class Keys:
    """A copy of the keys under ``tokens/``; ``broken`` makes it fail on the next change."""

    keys = "tokens/"

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.broken = False

    def load(self, entries: Mapping[str, Entry]) -> None:
        self.names = set(entries)

    def apply(self, change: Change) -> None:
        if self.broken:
            raise KeyError(change.key)
        self.names.add(change.key)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(FakeClock(), trust_domain="cluster.local")


async def test_a_copy_is_not_ready_until_listed(store: MemoryStore, follow: Follow) -> None:
    state = StoreState(store)
    assert not state.ready and state.problem == ("state store unavailable: tried memory: not "
                                                 "listed yet")
    with pytest.raises(StoreUnavailable):
        await state.write(store.read_policy)
    await follow(state, [Keys()])
    assert state.ready and state.problem is None


async def test_a_write_is_seen_by_the_copy_once_reached(store: MemoryStore,
                                                        follow: Follow) -> None:
    state, keys = StoreState(store), Keys()
    await follow(state, [keys])
    await store.put_token("abc", b"{}", ttl=60)
    revision = store.revision
    await state.reached(revision)
    assert keys.names == {"tokens/abc"} and state.revision == revision


async def test_a_failed_request_makes_it_unready_until_one_succeeds(store: MemoryStore,
                                                                    follow: Follow) -> None:
    state = StoreState(store)
    await follow(state, [Keys()])

    async def refused() -> None:
        raise StoreUnavailable(["10.0.0.9:2379"], "connection refused")

    with pytest.raises(StoreUnavailable):
        await state.request(refused)
    assert state.problem == "state store unavailable: tried 10.0.0.9:2379: connection refused"
    with pytest.raises(StoreUnavailable) as refused_write:
        await state.write(store.read_policy)  # refused at once, naming the same reason
    assert str(refused_write.value) == state.problem
    await state.request(store.read_policy)  # a probe that works
    assert state.ready


async def test_a_copy_that_fails_on_a_change_is_never_left_ready(
        store: MemoryStore, follow: Follow, caplog: pytest.LogCaptureFixture) -> None:
    state, keys = StoreState(store), Keys()
    await follow(state, [keys])
    keys.broken = True
    await store.put_token("abc", b"{}", ttl=60)
    async with asyncio.timeout(5):
        while state.ready:
            await asyncio.sleep(0.001)
    assert state.problem == "following the store failed: KeyError('tokens/abc')"
    assert "following the state store failed" in caplog.text
    keys.broken = False  # it lists again and is current
    async with asyncio.timeout(5):
        while not state.ready:
            await asyncio.sleep(0.01)
    assert keys.names == {"tokens/abc"}


class Silent(MemoryStore):
    """A store whose watches stop hearing changes once ``silent`` is set: an etcd member cut
    off from its cluster keeps a watch open and says nothing, while writes go elsewhere."""

    silent = False

    def _tell(self, change: Change) -> None:
        if not self.silent:
            super()._tell(change)


async def test_a_write_the_watch_never_brings_back_makes_the_replica_unready(
        follow: Follow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controlplane.state.REACH_TIMEOUT", 0.05)
    store = Silent(FakeClock(), trust_domain="cluster.local")
    state, keys = StoreState(store), Keys()
    await follow(state, [keys])
    store.silent = True
    await store.put_token("abc", b"{}", ttl=60)
    written = store.revision
    await state.reached(written)  # returns: the write is in the store all the same
    assert state.problem == (f"state store unavailable: tried memory: this replica's watch has "
                             f"not brought back revision {written} 0s after it was written (it "
                             f"is at {written - 1})")
    with pytest.raises(StoreUnavailable):
        await state.write(store.read_policy)
    store.silent = False
    await store.put_token("def", b"{}", ttl=60)  # the watch moves past it: current again
    async with asyncio.timeout(5):
        while not state.ready:
            await asyncio.sleep(0.001)
