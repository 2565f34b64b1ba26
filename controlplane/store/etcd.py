"""The state store in etcd v3, shared by every control-plane replica, through ``aetcd``.

Each operation is one etcd request, so each is atomic at one revision:

=================  ==========================================================================
registrations      ``LeaseGrant``; ``Put`` with the lease; ``LeaseKeepAlive`` (a reply with
                   TTL 0 means the lease is gone); ``LeaseRevoke`` deletes the lease's keys
redeem a token     ``DeleteRange`` with ``prev_kv``: deletes the key if it exists and returns
                   what was there, so of two replicas redeeming one token exactly one gets it
policy write       ``Txn``: if the key's version is the one the write was based on, put;
                   else read it, to name the version that won
watch              ``Range`` over the prefix (its header revision R), then ``Watch`` from R + 1
=================  ==========================================================================

Endpoints are tried in turn: a request goes to the endpoint that last answered, and one that
cannot be reached (refused, or no answer within ``timeout``) passes it to the next; when none
answers, :class:`~controlplane.store.StoreUnavailable` names them all. So a request waits at
most ``timeout`` × the number of endpoints. A request whose connection broke after etcd applied
it is sent again: for a put or delete that changes nothing; for a token or a policy write it
fails closed (the token looks used, the write conflicts with itself), never twice. A watch
whose stream breaks resumes at another endpoint from the revision after the last it reported.

etcd counts lease TTLs in whole seconds (rounded up here) and grants no less than its minimum,
1.5 × its election timeout (2 s with etcd's defaults, 1 s with ``--election-timeout 250``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
import grpc

from controlplane import store

log = logging.getLogger("controlplane.store.etcd")

T = TypeVar("T")

DEFAULT_TIMEOUT = 2.0  # seconds per request to one endpoint: a few Raft rounds on a slow disk
# What says "this endpoint did not answer", so the next one is tried. grpc reports a call on a
# channel whose member died mid-send as INTERNAL ("Failed execute_batch"), not UNAVAILABLE.
_UNREACHABLE = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError,
                aetcd.exceptions.WatchTimeoutError, aetcd.exceptions.InternalError, TimeoutError)


def _watch_from(key: bytes, start: int, client: aetcd.Client) -> Awaitable[Any]:
    return client.watch_prefix(key, start_revision=start)  # type: ignore[no-any-return]


class EtcdStore:
    """The :class:`~controlplane.store.Store` in etcd at ``endpoints`` (``host:port`` each)."""

    def __init__(self, endpoints: Sequence[str], *, trust_domain: str,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        """Args:
            endpoints: the etcd members' client addresses, ``host:port`` each.
            timeout: seconds a request waits for one endpoint before the next is tried.

        Raises:
            ValueError: no endpoints, or one without a numeric port.
        """
        if not endpoints:
            raise ValueError("an etcd store needs at least one endpoint (host:port)")
        self.endpoints = list(endpoints)
        self._prefix = store.prefix(trust_domain)
        self._clients = [self._client(endpoint, timeout) for endpoint in self.endpoints]
        self._timeout = timeout
        self._current = 0  # the endpoint that last answered

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def durable(self) -> bool:
        return True

    @property
    def where(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    # -- registrations ---------------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        seconds = max(1, math.ceil(ttl))
        lease = await self._call(lambda client: client.lease(seconds))
        return int(lease.id)

    async def keep_alive(self, lease: int) -> None:
        reply = await self._call(lambda client: client.refresh_lease(lease))
        if reply is None or reply.TTL <= 0:
            raise store.LeaseExpired(lease)

    async def revoke_lease(self, lease: int) -> None:
        with contextlib.suppress(store.LeaseExpired):
            await self._on_lease(lease, lambda client: client.revoke_lease(lease))

    async def put_instance(self, instance: str, record: bytes, *, lease: int) -> int:
        key = self._key(store.INSTANCES + instance)
        put = await self._on_lease(lease, lambda client: client.put(key, record, lease=lease))
        return int(put.header.revision)

    async def delete_instance(self, instance: str) -> int:
        key = self._key(store.INSTANCES + instance)
        deleted = await self._call(lambda client: client.delete(key))
        return 0 if deleted is None else int(deleted.header.revision)

    async def expire(self) -> None:
        pass  # etcd lapses leases itself, for every replica at once

    # -- replicas --------------------------------------------------------------------------

    async def put_replica(self, name: str, record: bytes, *, lease: int) -> None:
        key = self._key(store.REPLICAS + name)
        await self._on_lease(lease, lambda client: client.put(key, record, lease=lease))

    # -- join tokens -----------------------------------------------------------------------

    async def put_token(self, digest: str, record: bytes, *, ttl: float) -> None:
        lease = await self.grant_lease(ttl)
        key = self._key(store.TOKENS + digest)
        await self._on_lease(lease, lambda client: client.put(key, record, lease=lease))

    async def redeem_token(self, digest: str) -> bytes | None:
        key = self._key(store.TOKENS + digest)
        deleted = await self._call(lambda client: client.delete(key, prev_kv=True))
        return None if deleted is None else bytes(deleted.prev_kv.value)

    # -- policy ----------------------------------------------------------------------------

    async def read_policy(self) -> tuple[bytes, int]:
        key = self._key(store.POLICY)
        got = await self._call(lambda client: client.get(key))
        return (b"", 0) if got is None else (bytes(got.value), int(got.version))

    async def write_policy(self, document: bytes, *, based_on: int) -> int:
        key = self._key(store.POLICY)

        def swap(client: aetcd.Client) -> Awaitable[tuple[bool, list[Any]]]:
            ops = client.transactions
            return client.transaction(  # type: ignore[no-any-return]
                compare=[ops.version(key) == based_on], success=[ops.put(key, document)],
                failure=[ops.get(key)])

        succeeded, responses = await self._call(swap)
        if not succeeded:
            found = responses[0]  # [(value, Get)] of the key, or [] if it was deleted
            raise store.Conflict(based_on, int(found[0][1].version) if found else 0)
        return based_on + 1

    # -- watch and lifetime ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[store.Watch]:
        key = self._prefix.encode()
        found = await self._call(lambda client: client.get_prefix(key))
        entries = {kv.key.decode()[len(self._prefix):]:
                   store.Entry(value=bytes(kv.value), version=kv.version,
                               revision=kv.mod_revision, lease=int(kv.lease))
                   for kv in found.kvs}
        listing = store.Listing(revision=found.header.revision, entries=entries)
        watch = store.Watch(listing, self._follow(listing.revision + 1))
        try:
            yield watch
        finally:
            await watch.aclose()

    async def _follow(self, start: int) -> AsyncGenerator[store.Change, None]:
        """Changes from revision ``start`` on, resuming at another endpoint if a stream breaks."""
        key = self._prefix.encode()
        while True:
            events = await self._call(functools.partial(_watch_from, key, start))
            try:
                async for event in events:
                    change = self._change(event)
                    # Resume after the last revision reported. A revision changes one key,
                    # but for a lease that lapses with its keys; ours hold one key each (an
                    # instance, a token, a replica), so no revision is split between streams.
                    start = change.revision + 1
                    yield change
                return  # the client was closed
            except _UNREACHABLE as error:
                log.warning("etcd watch broke (%s); resuming at revision %d", error, start)
            except aetcd.exceptions.RevisionCompactedError as error:
                raise store.StoreError(
                    f"etcd compacted revisions up to {error.compacted_revision} before this "
                    f"watch resumed at {start}: list again") from error
            finally:
                with contextlib.suppress(aetcd.exceptions.ClientError, *_UNREACHABLE):
                    await events.cancel()

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(aetcd.exceptions.ClientError, *_UNREACHABLE):
                await client.close()

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _client(endpoint: str, timeout: float) -> aetcd.Client:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint {endpoint!r}: expected host:port")
        return aetcd.Client(host, int(port), timeout=timeout, connect_wait_timeout=timeout)

    def _key(self, name: str) -> bytes:
        return (self._prefix + name).encode()

    def _change(self, event: Any) -> store.Change:
        kind = store.ChangeKind.PUT if event.kind == "PUT" else store.ChangeKind.DELETE
        kv = event.kv
        return store.Change(kind=kind, key=kv.key.decode()[len(self._prefix):],
                            value=bytes(kv.value), version=int(kv.version),
                            revision=int(kv.mod_revision),
                            lease=int(kv.lease) if kind == store.ChangeKind.PUT else 0)

    async def _call(self, request: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """``request`` at the endpoint that last answered, else at each of the others."""
        failures = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            try:
                async with asyncio.timeout(self._timeout):  # aetcd's own covers only the RPC
                    result = await request(self._clients[index])
            except _UNREACHABLE as error:
                failures.append(f"{self.endpoints[index]}: {str(error) or 'timed out'}")
                continue
            if index != self._current:
                log.warning("etcd: %s; now using %s", "; ".join(failures),
                            self.endpoints[index])
                self._current = index
            return result
        raise store.StoreUnavailable(self.endpoints, "; ".join(failures))

    async def _on_lease(self, lease: int, request: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """``request``, which names ``lease``; etcd's NOT_FOUND for it is LeaseExpired."""
        try:
            return await self._call(request)
        except aetcd.exceptions.ClientError as error:
            cause = error.__cause__
            if (isinstance(cause, grpc.aio.AioRpcError)
                    and cause.code() == grpc.StatusCode.NOT_FOUND):
                raise store.LeaseExpired(lease) from error
            raise
