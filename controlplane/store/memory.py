"""The state store in one process's memory: etcd's semantics, with leases on an injected clock.

The default for the demo and for tests that need no etcd. It keeps what etcd keeps — keys with
a version and the revision that last wrote them, leases with their keys, one revision counter
for the whole store — so code written against it behaves the same against etcd. Nothing awaits
inside an operation, so each is atomic among the tasks of one event loop.

Leases lapse by the clock: every operation first drops the leases whose time is up (with their
keys, one revision per lease, as etcd does), and :meth:`MemoryStore.sweep` does the same for a
periodic task, so that watchers hear of the deletes even when nothing else happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from controlplane.store import (
    INSTANCES,
    POLICY,
    REPLICAS,
    TOKENS,
    Change,
    ChangeKind,
    Conflict,
    Entry,
    LeaseExpired,
    Listing,
    Watch,
    prefix,
)
from mesh.clock import Clock


@dataclass(slots=True)
class _Key:
    value: bytes
    version: int
    revision: int
    lease: int  # 0: none


@dataclass(slots=True)
class _Lease:
    ttl: float
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    """The :class:`~controlplane.store.Store` in memory; leases expire by ``clock``."""

    def __init__(self, clock: Clock, *, trust_domain: str) -> None:
        self._clock = clock
        self._prefix = prefix(trust_domain)
        self.revision = 1  # etcd's revision of an empty store; its first change makes it 2
        self._keys: dict[str, _Key] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(1)
        self._watches: set[asyncio.Queue[Change]] = set()

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def durable(self) -> bool:
        return False

    @property
    def where(self) -> str:
        return "memory"

    def sweep(self) -> int:
        """Drop every lease whose time is up, with its keys; returns how many lapsed."""
        now = self._clock.now()
        lapsed = [lease for lease, state in self._leases.items() if state.expires_at <= now]
        for lease in lapsed:
            self._end(lease)
        return len(lapsed)

    # -- registrations ---------------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        self.sweep()
        lease = next(self._lease_ids)
        self._leases[lease] = _Lease(ttl, self._clock.now() + ttl)
        return lease

    async def keep_alive(self, lease: int) -> None:
        state = self._live(lease)
        state.expires_at = self._clock.now() + state.ttl

    async def revoke_lease(self, lease: int) -> None:
        self.sweep()
        if lease in self._leases:
            self._end(lease)

    async def put_instance(self, instance: str, record: bytes, *, lease: int) -> int:
        self._live(lease)
        return self._put(INSTANCES + instance, record, lease)

    async def delete_instance(self, instance: str) -> int:
        self.sweep()
        if INSTANCES + instance not in self._keys:
            return 0
        revision = self._next_revision()
        self._delete(INSTANCES + instance)
        return revision

    async def expire(self) -> None:
        self.sweep()

    # -- replicas --------------------------------------------------------------------------

    async def put_replica(self, name: str, record: bytes, *, lease: int) -> None:
        self._live(lease)
        self._put(REPLICAS + name, record, lease)

    # -- join tokens -----------------------------------------------------------------------

    async def put_token(self, digest: str, record: bytes, *, ttl: float) -> None:
        self._put(TOKENS + digest, record, await self.grant_lease(ttl))

    async def redeem_token(self, digest: str) -> bytes | None:
        self.sweep()
        key = self._keys.get(TOKENS + digest)
        if key is None:
            return None
        self._next_revision()
        self._delete(TOKENS + digest)
        return key.value

    # -- policy ----------------------------------------------------------------------------

    async def read_policy(self) -> tuple[bytes, int]:
        key = self._keys.get(POLICY)
        return (b"", 0) if key is None else (key.value, key.version)

    async def write_policy(self, document: bytes, *, based_on: int) -> int:
        _, version = await self.read_policy()
        if version != based_on:
            raise Conflict(based_on, version)
        self._put(POLICY, document, 0)
        return version + 1

    # -- watch and lifetime ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Watch]:
        self.sweep()
        entries = {name: Entry(value=key.value, version=key.version, revision=key.revision,
                               lease=key.lease)
                   for name, key in sorted(self._keys.items())}
        changes: asyncio.Queue[Change] = asyncio.Queue()
        self._watches.add(changes)
        watch = Watch(Listing(revision=self.revision, entries=entries), _follow(changes))
        try:
            yield watch
        finally:
            self._watches.discard(changes)
            await watch.aclose()

    async def close(self) -> None:
        self._watches.clear()

    # -- internals -------------------------------------------------------------------------

    def _live(self, lease: int) -> _Lease:
        self.sweep()
        state = self._leases.get(lease)
        if state is None:
            raise LeaseExpired(lease)
        return state

    def _next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def _put(self, name: str, value: bytes, lease: int) -> int:
        revision = self._next_revision()
        previous = self._keys.get(name)
        if previous is not None and previous.lease in self._leases:
            self._leases[previous.lease].keys.discard(name)
        version = 1 if previous is None else previous.version + 1
        self._keys[name] = _Key(value, version, revision, lease)
        if lease:
            self._leases[lease].keys.add(name)
        self._tell(Change(kind=ChangeKind.PUT, key=name, value=value, version=version,
                          revision=revision, lease=lease))
        return revision

    def _end(self, lease: int) -> None:
        """Drop ``lease`` and its keys, in one revision if it had any (as etcd's revoke)."""
        keys = self._leases.pop(lease).keys
        if keys:
            self._next_revision()
        for name in sorted(keys):
            self._delete(name)

    def _delete(self, name: str) -> None:
        """Delete ``name`` at the current revision (the caller moved it on)."""
        key = self._keys.pop(name)
        if key.lease in self._leases:
            self._leases[key.lease].keys.discard(name)
        self._tell(Change(kind=ChangeKind.DELETE, key=name, value=b"", version=0,
                          revision=self.revision))

    def _tell(self, change: Change) -> None:
        for changes in self._watches:
            changes.put_nowait(change)


async def _follow(changes: asyncio.Queue[Change]) -> AsyncGenerator[Change, None]:
    while True:
        yield await changes.get()
