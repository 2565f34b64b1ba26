"""A replica's copy of the shared state: it follows the store, and knows how current it is.

Every replica builds what it serves — the registry's instances, the policy in force, the list of
replicas — from one source only: the store's watch (a listing, then every change in revision
order; :mod:`controlplane.store`). A replica that registers an instance does not add it to its
registry itself: it writes it to the store and waits until its own watch brings the change
back (:meth:`StoreState.reached`). So what it answers next includes the change, and what it
serves at a revision is exactly what every other replica serves at that revision.

When the store cannot be reached — the watch broke, or a request failed — a replica keeps what
it has — discovery streams go on being served from the last state (static stability) — but it
is *not ready*: writes are refused at once with UNAVAILABLE and the reason
(:meth:`StoreState.writable`; a sidecar told UNAVAILABLE moves to another replica), and
``GET /readyz`` answers 503 with it. A broken watch lists again every ``RELIST_INTERVAL``; the
new listing replaces the whole state, so nothing that changed while it was away (a lease that
lapsed, a policy applied elsewhere) is missed. A failed request is cleared by the next that
succeeds: the replica renews its own lease in the store periodically, which probes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from controlplane.store import (
    REPLICAS,
    Change,
    ChangeKind,
    Entry,
    Store,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("controlplane.state")

T = TypeVar("T")

RELIST_INTERVAL = 1.0  # seconds between tries to list a store that failed (a few replicas:
# no storm to spread, so no backoff)
REACH_TIMEOUT = 5.0  # seconds a write waits for the watch to bring it back before answering


class Copy(Protocol):
    """What keeps a copy of some of the store's keys: the registry, the policy, the replicas."""

    @property
    def keys(self) -> str:
        """The prefix of the keys it keeps (relative to the store's), or one key's name."""
        ...

    def load(self, entries: Mapping[str, Entry]) -> None:
        """Replace the copy with ``entries``, every key of its prefix at one revision."""
        ...

    def apply(self, change: Change) -> None:
        """Apply one change to a key of its prefix."""
        ...


class StoreState:
    """The revision this replica's copy reached, and whether it can reach the store now."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0  # of the last change applied (or of the listing)
        self._watch_problem: StoreError | None = StoreUnavailable([store.where],
                                                                  "not listed yet")
        self._request_problem: StoreError | None = None
        self._lag: tuple[int, StoreError] | None = None  # a write the watch has not brought
        self._advanced = asyncio.Condition()
        self.listed = asyncio.Event()  # set once the first listing is in the copy

    @property
    def problem(self) -> str | None:
        """Why the copy may not be current; None when it follows the store."""
        error = self._error()
        return None if error is None else str(error)

    @property
    def ready(self) -> bool:
        """Whether the copy follows the store (and writes are accepted)."""
        return self.problem is None

    def writable(self) -> None:
        """Refuse a write at once while the store is known to be unreachable.

        Raises:
            StoreUnavailable: the copy does not follow the store now; says why.
        """
        error = self._error()
        if isinstance(error, StoreUnavailable):
            raise StoreUnavailable(error.endpoints, error.reason)
        if error is not None:
            raise StoreUnavailable([self.store.where], str(error))

    async def write(self, request: Callable[[], Awaitable[T]]) -> T:
        """Send ``request`` (a write) to the store, unless it is known to be unreachable.

        Raises:
            StoreUnavailable: it is, or it turned out to be (the replica is not ready then).
        """
        self.writable()
        return await self.request(request)

    async def request(self, request: Callable[[], Awaitable[T]]) -> T:
        """Send ``request`` to the store, keeping track of whether it answers.

        Raises:
            StoreUnavailable: it did not answer.
        """
        try:
            result = await request()
        except StoreUnavailable as error:
            self.failed(error)
            raise
        self.succeeded()
        return result

    def failed(self, error: StoreError) -> None:
        """A request to the store failed: not ready until one succeeds."""
        self._lost(error)
        self._request_problem = error

    def succeeded(self) -> None:
        """A request to the store succeeded."""
        if self._request_problem is not None:
            self._request_problem = None
            self._found()

    def _error(self) -> StoreError | None:
        return self._watch_problem or self._request_problem or (self._lag and self._lag[1])

    def _lost(self, error: StoreError) -> None:
        if self.problem is None:
            log.warning("state store lost, serving the last state (revision %d): %s",
                        self.revision, error)

    def _found(self) -> None:
        if self.problem is None:
            log.info("state store %s followed again from revision %d", self.store.where,
                     self.revision)

    async def reached(self, revision: int) -> None:
        """Wait until the copy includes ``revision`` (a write of this replica's), or
        ``REACH_TIMEOUT`` passed; the write is in the store either way.

        A watch that has not brought a write back in that time is stuck (an etcd member cut off
        from its cluster keeps a watch open and silent): the replica is not ready until the
        watch reaches that revision.
        """
        async with self._advanced:
            try:
                async with asyncio.timeout(REACH_TIMEOUT):
                    await self._advanced.wait_for(lambda: self.revision >= revision)
            except TimeoutError:
                error = StoreUnavailable([self.store.where], (
                    f"this replica's watch has not brought back revision {revision} "
                    f"{REACH_TIMEOUT:.0f}s after it was written (it is at {self.revision})"))
                self._lost(error)
                self._lag = (revision, error)

    async def follow(self, copies: Sequence[Copy]) -> None:
        """Keep ``copies`` current until cancelled: each gets the entries of its keys from
        every listing (the whole state), then the changes to them after it."""
        while True:
            try:
                async with self.store.watch() as watch:
                    for copy in copies:
                        copy.load({key: entry for key, entry in watch.listing.entries.items()
                                   if key.startswith(copy.keys)})
                    await self._advance(watch.listing.revision)
                    self._watch_problem = None
                    self.listed.set()
                    self._found()
                    async for change in watch:
                        for copy in copies:
                            if change.key.startswith(copy.keys):
                                copy.apply(change)
                        await self._advance(change.revision)
                    raise StoreUnavailable([self.store.where], "the watch ended")
            except StoreError as error:
                self._lost(error)
                self._watch_problem = error
            except Exception as error:  # a copy that stops following must never stay "ready"
                log.exception("following the state store failed")
                self._watch_problem = StoreError(f"following the store failed: {error!r}")
            await asyncio.sleep(RELIST_INTERVAL)

    async def _advance(self, revision: int) -> None:
        async with self._advanced:
            self.revision = revision
            if self._lag is not None and revision >= self._lag[0]:
                self._lag = None
                self._found()
            self._advanced.notify_all()


class Replicas:
    """The control-plane replicas the store says run, by name (``host:port`` of their gRPC
    listener): each announces itself with a key on a lease it renews."""

    keys = REPLICAS

    def __init__(self) -> None:
        self.running: dict[str, dict[str, Any]] = {}  # name → its record

    def load(self, entries: Mapping[str, Entry]) -> None:
        self.running = {key.removeprefix(REPLICAS): _record(entry.value)
                        for key, entry in entries.items()}

    def apply(self, change: Change) -> None:
        name = change.key.removeprefix(REPLICAS)
        if change.kind is ChangeKind.DELETE:
            self.running.pop(name, None)
        else:
            self.running[name] = _record(change.value)


def _record(value: bytes) -> dict[str, Any]:
    """A replica's record (JSON: its ``grpc`` and ``api`` addresses, when it ``started``)."""
    try:
        found = json.loads(value)
    except ValueError:
        return {"problem": "unreadable record"}
    return found if isinstance(found, dict) else {"problem": "unreadable record"}
