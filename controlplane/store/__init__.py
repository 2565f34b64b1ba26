"""The control plane's state store: registrations, join tokens and the policy, shared by replicas.

One interface, :class:`Store`, with two implementations: :mod:`controlplane.store.memory`
(one process; leases expire by an injected clock) and :mod:`controlplane.store.etcd` (etcd v3,
shared by every replica). Its words:

*key*
    A path under the mesh's *prefix* ``/asyncmesh/<trust-domain>/``. Watches and listings name
    keys relative to it::

        instances/<namespace>/<service>@<address>:<port>   an instance record, on a lease
        tokens/<sha256 of the token, hex>                   a join token's record, on a lease
        policy                                              the policy document
        replicas/<host>:<port>                              a control-plane replica, on a lease

    An instance's key ends in its instance id (:func:`mesh.proto.resources.instance_name`),
    so re-registering the same endpoint replaces its record in place. The CA's key is not
    here: it stays in files, as now. A store holds what replicas must agree on; the CA key is
    a secret every replica reads at start, and etcd would hand it to anyone with read access
    to the prefix (and keep it in its snapshots and backups).
*record*
    The bytes stored under a key; the store never looks inside (the control plane puts a
    serialized ``mesh.v1`` message there).
*lease*
    A number naming a time to live that :meth:`Store.keep_alive` renews. Keys put on a lease
    are deleted, for every reader at once, when it lapses or is revoked. Instances and tokens
    live on leases; the policy does not.
*revision*
    A counter the store bumps by one with each change (a put, a delete, a lease lapsing with
    its keys). Every change a watch reports carries it, so replicas that watch one store agree
    on which state a revision names and can hand it out as their version.
*version* (of a key)
    How many times the key was written since it was created; 0 for a key that does not exist.
    The policy's version is its key's version: 0 before any policy, then 1, 2, ...
*redeem*
    Take a token: return its record and delete it in one step, so that of two replicas
    redeeming one token at once, exactly one gets the record.
*compare-and-swap*
    Write the policy only if its version is still the one the new document was based on.

Errors::

    StoreError             the store refused or failed an operation
    ├── StoreUnavailable   no endpoint answered within its timeout (names every endpoint tried)
    ├── Conflict           the policy changed since the version a write was based on (names
    │                      both versions)
    └── LeaseExpired       the lease lapsed or was revoked: register again
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

PREFIX_ROOT = "/asyncmesh"
INSTANCES = "instances/"
TOKENS = "tokens/"
POLICY = "policy"
REPLICAS = "replicas/"


def prefix(trust_domain: str) -> str:
    """Where the mesh of ``trust_domain`` keeps its keys.

    Raises:
        ValueError: the trust domain is empty or holds '/', which would let one mesh's
            prefix hold another's.
    """
    if not trust_domain or "/" in trust_domain:
        raise ValueError(f"trust domain {trust_domain!r}: a store prefix needs a non-empty "
                         f"trust domain without '/'")
    return f"{PREFIX_ROOT}/{trust_domain}/"


class ChangeKind(enum.Enum):
    """What happened to a key."""

    PUT = "put"  # written (created or replaced)
    DELETE = "delete"  # deleted, by a call or by its lease lapsing


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A key's record as a listing saw it."""

    value: bytes
    version: int  # writes since the key was created
    revision: int  # the revision that last wrote it
    lease: int = 0  # the lease it is attached to (0: none): any replica can renew it


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """Every key under the prefix at one revision: where a watch starts."""

    revision: int  # the store's revision when listed; the changes that follow come after it
    entries: Mapping[str, Entry] = field(default_factory=dict)  # by key, relative to the prefix


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One change under the prefix, after a watch's listing."""

    kind: ChangeKind
    key: str  # relative to the prefix
    value: bytes  # the new record; empty for a delete
    version: int  # the key's version after the change; 0 for a delete
    revision: int
    lease: int = 0  # the lease the key is attached to after a put; 0 for a delete or none


class Watch:
    """A listing, then every change after it, in revision order; iterate for the changes.

    Iterating raises :class:`StoreUnavailable` when the store cannot be reached any more; a
    watcher then lists again with a new watch.
    """

    def __init__(self, listing: Listing, changes: AsyncGenerator[Change, None]) -> None:
        self.listing = listing
        self._changes = changes

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        return await self._changes.__anext__()

    async def aclose(self) -> None:
        """Stop following the store."""
        await self._changes.aclose()


class Store(Protocol):
    """Registrations on leases, single-use tokens, the versioned policy, and a watch of it all.

    Every method may raise :class:`StoreUnavailable` (after a bounded time, never a hang).
    TTLs are seconds; etcd counts them in whole seconds and rounds up.
    """

    @property
    def prefix(self) -> str:
        """The mesh's prefix, ``/asyncmesh/<trust-domain>/``."""
        ...

    @property
    def durable(self) -> bool:
        """Whether the state outlives this process (etcd: yes; memory: no)."""
        ...

    @property
    def where(self) -> str:
        """Where the state is, for logs and status: ``memory`` or ``etcd://a:2379,...``."""
        ...

    # -- registrations ---------------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        ...

    async def keep_alive(self, lease: int) -> None:
        """Renew ``lease`` for its full TTL.

        Raises:
            LeaseExpired: it lapsed or was revoked (its keys are gone).
        """
        ...

    async def revoke_lease(self, lease: int) -> None:
        """End ``lease`` now, deleting its keys; a lease already gone is not an error."""
        ...

    async def put_instance(self, instance: str, record: bytes, *, lease: int) -> int:
        """Store an instance's record on ``lease`` (moving it off any earlier lease).

        Returns the revision of the change.

        Raises:
            LeaseExpired: ``lease`` lapsed or was revoked.
        """
        ...

    async def delete_instance(self, instance: str) -> int:
        """Delete an instance's record; returns the revision of the delete, 0 if there was
        none."""
        ...

    async def expire(self) -> None:
        """Let the leases whose time is up lapse now. Only the memory store, which has no
        timer of its own, needs it called (periodically); etcd lapses leases itself."""
        ...

    # -- replicas --------------------------------------------------------------------------

    async def put_replica(self, name: str, record: bytes, *, lease: int) -> None:
        """Say that the control-plane replica ``name`` runs, for as long as ``lease`` lives.

        Raises:
            LeaseExpired: ``lease`` lapsed or was revoked.
        """
        ...

    # -- join tokens -----------------------------------------------------------------------

    async def put_token(self, digest: str, record: bytes, *, ttl: float) -> None:
        """Store a token's record under its digest for ``ttl`` seconds."""
        ...

    async def redeem_token(self, digest: str) -> bytes | None:
        """Take the token's record, deleting it; None if it is unknown, used or expired."""
        ...

    # -- policy ----------------------------------------------------------------------------

    async def read_policy(self) -> tuple[bytes, int]:
        """The policy document and its version; ``(b"", 0)`` before any was written."""
        ...

    async def write_policy(self, document: bytes, *, based_on: int) -> int:
        """Replace the policy if its version is still ``based_on``; returns the new version.

        Raises:
            Conflict: the policy's version is no longer ``based_on``.
        """
        ...

    # -- watch and lifetime ----------------------------------------------------------------

    def watch(self) -> AbstractAsyncContextManager[Watch]:
        """``async with store.watch() as watch``: its listing, then ``async for`` changes."""
        ...

    async def close(self) -> None:
        """Release connections; leases stay until they lapse (or the process is gone)."""
        ...


class StoreError(Exception):
    """The store refused or failed an operation."""


class StoreUnavailable(StoreError):
    """No endpoint of the store answered in time."""

    def __init__(self, endpoints: Sequence[str], reason: str) -> None:
        self.endpoints = list(endpoints)
        self.reason = reason
        super().__init__(f"state store unavailable: tried {', '.join(self.endpoints)}: {reason}")


class Conflict(StoreError):
    """A policy write lost a race: the policy changed after the version it was based on."""

    def __init__(self, based_on: int, current: int) -> None:
        self.based_on = based_on
        self.current = current
        super().__init__(f"policy changed: this change was based on version {based_on}, the "
                         f"policy is now at version {current}; read it and apply again")


class LeaseExpired(StoreError):
    """A lease lapsed or was revoked, and its keys with it."""

    def __init__(self, lease: int) -> None:
        self.lease = lease
        super().__init__(f"lease {lease:x} lapsed or was revoked: register again")
